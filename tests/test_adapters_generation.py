"""Greedy generation with each adapter method on both causal LMs: the KV cache changes no token, and
each prompt of a left-padded batch gets the tokens it gets alone (better than GPT-2, whose prompt
tuning counts the padding in its positions).

On transformers >= 5.24 peft 0.21's prompt learning looks for the cache under the old name
`past_key_values`; the models hand it over there. The tests also run in the 5.24 environment that
scripts/version_matrix.py builds, where it exists with peft installed.
"""

import os
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
from adapter_utils import EOS, perturb_adapter_, tiny_config
from helpers import REPO
from peft import get_peft_model

from hf_ltg import LtgBertConfig, LtgBertForCausalLM, LtgGptForCausalLM
from hf_ltg.adapters import adapter_config, prompt_tuning_config

METHODS = ["lora", "prefix", "prompt", "ptuning"]
VIRTUAL = 4
# Row 0 is left-padded by three positions; row 1 fills the batch.
INPUT_IDS = torch.tensor([[EOS, EOS, EOS, 5, 17, 42, 8], [1, 2, 3, 4, 5, 6, 7]])
ATTENTION_MASK = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
MATRIX_PYTHON = Path(os.environ.get("HF_LTG_MATRIX_CACHE", Path.home() / ".cache" / "hf_ltg-matrix")) / (
    "transformers-5.24.0/bin/python"
)


def gpt():
    torch.manual_seed(0)
    return LtgGptForCausalLM(tiny_config(initializer_range=0.2)).eval()


def ltg_bert():
    torch.manual_seed(0)
    config = LtgBertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=48, max_position_embeddings=64, position_bucket_size=16,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                           bos_token_id=EOS, eos_token_id=EOS, pad_token_id=EOS)
    return LtgBertForCausalLM(config).eval()


BUILDERS = {"gpt": gpt, "ltg_bert": ltg_bert}


def adapted(family, method):
    base = BUILDERS[family]()
    options = {} if method == "lora" else {"num_virtual_tokens": VIRTUAL}
    return perturb_adapter_(get_peft_model(base, adapter_config(base, method, **options)), std=0.5).eval()


def greedy(model, input_ids, attention_mask, **settings):
    with warnings.catch_warnings():  # peft warns that it drops position_ids (prompt tuning, p-tuning)
        warnings.simplefilter("ignore")
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=8,
                              do_sample=False, pad_token_id=EOS, **settings)[:, input_ids.shape[1]:]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", BUILDERS)
def test_generate_with_cache_matches_without_cache(family, method):
    model = adapted(family, method)

    cached = greedy(model, INPUT_IDS, ATTENTION_MASK, use_cache=True)
    uncached = greedy(model, INPUT_IDS, ATTENTION_MASK, use_cache=False)

    assert cached.shape == (2, 8)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", BUILDERS)
def test_left_padded_batch_generates_the_tokens_of_each_prompt_alone(family, method):
    model = adapted(family, method)

    batched = greedy(model, INPUT_IDS, ATTENTION_MASK)

    for row in range(2):
        keep = ATTENTION_MASK[row].bool()
        alone = greedy(model, INPUT_IDS[row, keep][None], ATTENTION_MASK[row, keep][None])
        assert torch.equal(batched[row], alone[0]), row
    with model.disable_adapter():
        assert not torch.equal(batched, greedy(model, INPUT_IDS, ATTENTION_MASK)), "the adapter changes tokens"


@pytest.mark.parametrize("method", ["prompt", "ptuning"])
@pytest.mark.parametrize("family", BUILDERS)
def test_left_padded_row_has_the_logits_of_the_row_alone(family, method):
    # peft drops position_ids for these methods and puts its virtual tokens before the padding
    model = adapted(family, method)
    keep = ATTENTION_MASK[0].bool()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        padded = model(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK).logits[0, -int(keep.sum()):]
        alone = model(input_ids=INPUT_IDS[:1, keep], attention_mask=ATTENTION_MASK[:1, keep]).logits[0, VIRTUAL:]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_gpt_forward_without_position_ids_skips_the_padding():
    model = gpt()
    keep = ATTENTION_MASK[0].bool()
    explicit = (ATTENTION_MASK.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        padded = model(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK).logits
        alone = model(input_ids=INPUT_IDS[:1, keep]).logits[0]
        given = model(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK, position_ids=explicit).logits
        counted = model(input_ids=INPUT_IDS, attention_mask=ATTENTION_MASK,
                        position_ids=torch.arange(7)[None].expand(2, 7)).logits
    torch.testing.assert_close(padded[0, keep], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded[:, -4:], given[:, -4:], atol=0, rtol=0)
    assert (counted[0, keep] - alone).abs().max() > 1e-2, "explicit position_ids are used as given"


def test_generation_hands_peft_the_cache_under_past_key_values():
    from transformers import DynamicCache

    for build in BUILDERS.values():
        cache = DynamicCache()
        model = build()
        inputs = model.prepare_inputs_for_generation(INPUT_IDS[:1], attention_mask=ATTENTION_MASK[:1],
                                                     **{_generate_cache_name(): cache})
        assert inputs["past_key_values"] is cache and "cache" not in inputs


def _generate_cache_name():
    import inspect

    from transformers import GenerationMixin

    parameters = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def test_prompt_learning_on_a_causal_lm_that_hides_the_cache_from_peft_is_refused_on_new_transformers():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=99, n_positions=64, n_embd=32, n_layer=2, n_head=4))
    if _generate_cache_name() == "past_key_values":  # before transformers 5.24: peft finds the cache
        assert prompt_tuning_config(model, "CAUSAL_LM", num_virtual_tokens=VIRTUAL).num_virtual_tokens == VIRTUAL
        return
    for method in ("prompt", "ptuning", "prefix"):
        with pytest.raises(ValueError, match=r"wrong tokens with the KV cache.*transformers >= 5\.24.*5\.23"):
            adapter_config(model, method, "CAUSAL_LM", num_virtual_tokens=VIRTUAL)
    assert adapter_config(model, "lora", "CAUSAL_LM").r == 8


def _matrix_environment_has_peft() -> bool:
    if not MATRIX_PYTHON.exists():
        return False
    probe = subprocess.run([str(MATRIX_PYTHON), "-c", "import peft, pytest"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HF_LTG_IN_MATRIX") == "1", reason="already in the 5.24 environment")
def test_the_same_checks_pass_on_transformers_5_24():
    if not _matrix_environment_has_peft():
        pytest.skip(f"no transformers 5.24 environment with peft and pytest at {MATRIX_PYTHON} "
                    "(scripts/version_matrix.py builds it; then pip install peft==0.21.2 pytest there)")
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_LTG_IN_MATRIX="1")
    run = subprocess.run(
        [str(MATRIX_PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    print(run.stdout[-2000:])
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    version = subprocess.run([str(MATRIX_PYTHON), "-c", "import transformers; print(transformers.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    assert version == "5.24.0"
    assert " passed" in run.stdout and "failed" not in run.stdout
