"""The model files' fallbacks for older transformers releases (4.57, 5.0), exercised in this environment.

`scripts/version_matrix.py` (in CI) runs the checkpoints on the real releases; these tests keep the
fallback paths right between its runs.
"""

import json
import os
import subprocess
import sys
import textwrap

import torch

from hf_ltg.ltg_bert.modeling_ltg_bert import eager_attention_forward, sdpa_attention_forward
from tests.helpers import _BLOCK_HF_LTG, REPO

# What an older release lacks: transformers.initialization (4.x) and the registry's get_interface (<= 5.0).
OLD_RELEASE = """
import sys
import transformers
from transformers.modeling_utils import AttentionInterface  # imports transformers.initialization itself
vars(transformers).pop("initialization", None)
sys.modules["transformers.initialization"] = None
del AttentionInterface.get_interface
"""


def test_ltg_bert_own_sdpa_with_position_bias_matches_eager_attention():
    torch.manual_seed(0)
    query, key, value = (torch.randn(2, 3, 5, 8) for _ in range(3))
    bias = torch.randn(2, 3, 5, 5)
    keep = torch.ones(2, 1, 5, 5, dtype=torch.bool).tril()
    keep[1, ..., :2] = False  # left padding of the second row
    module = torch.nn.Module().eval()
    expected, _ = eager_attention_forward(module, query, key, value, keep, scaling=0.3, position_bias=bias)
    actual, _ = sdpa_attention_forward(module, query, key, value, keep, scaling=0.3, position_bias=bias)
    # rows with no visible key (padding queries) differ by design (eager: zeros); compare the others
    torch.testing.assert_close(actual[0], expected[0])
    torch.testing.assert_close(actual[1, 2:], expected[1, 2:])


def test_checkpoints_run_the_same_without_initialization_module_and_get_interface(tmp_path):
    code = OLD_RELEASE + textwrap.dedent("""
        import json, sys, torch
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
        out = {}
        for name in ("ltg-gpt-lm", "ltg-bert-mlm"):
            folder = f"{REPO}/checkpoints/{name}"
            model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
            ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]]) if name == "ltg-gpt-lm" else torch.tensor([[5, 6, 7, 8], [3, 3, 9, 10]])
            mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
            with torch.no_grad():
                logits = model(ids, attention_mask=mask).logits
                tokens = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                                        pad_token_id=int(ids[1, 0]))
            # a head the checkpoint lacks is initialised by the fallback initialisers
            torch.manual_seed(0)
            head = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True, num_labels=3)
            std = (head.score if hasattr(head, "score") else head.classifier.out_proj).weight.std().item()
            init = sys.modules[type(model).__module__].init  # which initialisers the file took
            out[name] = {"logits": logits[0].flatten()[:50].tolist(), "tokens": tokens.tolist(), "head_std": std,
                         "init": type(init).__name__}
        print(json.dumps(out))
    """)
    results = {}
    for label, prefix in (("old", ""), ("new", None)):
        script = _BLOCK_HF_LTG.format(repo=str(REPO)) + f"REPO = {str(REPO)!r}\n"
        script += code if prefix is not None else code.replace(OLD_RELEASE, "")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(HF_MODULES_CACHE=str(tmp_path / f"modules-{label}"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
        run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, run.stderr[-4000:]
        results[label] = json.loads(run.stdout.strip().splitlines()[-1])
    for name in ("ltg-gpt-lm", "ltg-bert-mlm"):
        old, new = results["old"][name], results["new"][name]
        assert old["tokens"] == new["tokens"]
        torch.testing.assert_close(torch.tensor(old["logits"]), torch.tensor(new["logits"]), rtol=0, atol=1e-5)
        assert 0.001 < old["head_std"] < 1.0  # initialised, neither empty nor left at zero
        assert (old["init"], new["init"]) == ("SimpleNamespace", "module")
