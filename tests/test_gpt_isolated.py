"""A saved GPT checkpoint works in a fresh process where hf_ltg cannot be imported."""

import json

import pytest
from helpers import run_without_hf_ltg

from hf_ltg import LtgGptConfig, LtgGptForCausalLM

ISOLATED_CHECKS = """
import json, torch
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, AutoTokenizer, pipeline)

try:
    import hf_ltg
    raise SystemExit("hf_ltg was importable")
except ImportError:
    pass

report = {}
config = AutoConfig.from_pretrained(CKPT, trust_remote_code=True)
report["config"] = type(config).__name__
for auto in (AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification):
    model = auto.from_pretrained(CKPT, trust_remote_code=True)
    assert "hf_ltg" not in type(model).__module__, type(model).__module__
    report[auto.__name__] = type(model).__name__

tok = AutoTokenizer.from_pretrained(CKPT, trust_remote_code=True)
gen = pipeline("text-generation", model=CKPT, trust_remote_code=True)
out = gen(["The quick brown", "A language"], max_new_tokens=8, do_sample=False)
report["text-generation"] = [o[0]["generated_text"] for o in out]

cls = pipeline("text-classification", model=CKPT, trust_remote_code=True)
report["text-classification"] = cls(["The cat sat on the mat.", "Attention mixes positions."])

ner = pipeline("token-classification", model=CKPT, trust_remote_code=True)
report["token-classification"] = ner("The quick brown fox")

feats = pipeline("feature-extraction", model=CKPT, trust_remote_code=True)
report["feature-extraction"] = [len(feats("The cat sat")[0]), len(feats("The cat sat")[0][0])]
print(json.dumps(report, default=str))
"""


@pytest.mark.slow
def test_checkpoint_loads_and_runs_pipelines_without_hf_ltg(tmp_path, tiny_tokenizer):
    eos = tiny_tokenizer.eos_token_id
    config = LtgGptConfig(
        vocab_size=len(tiny_tokenizer), max_position_embeddings=64, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, bos_token_id=eos, eos_token_id=eos, pad_token_id=tiny_tokenizer.pad_token_id,
        id2label={0: "ham", 1: "spam"}, label2id={"ham": 0, "spam": 1},
    )
    folder = tmp_path / "ckpt"
    LtgGptForCausalLM(config).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)

    report = json.loads(run_without_hf_ltg(ISOLATED_CHECKS, folder, tmp_path).strip().splitlines()[-1])

    assert report["config"] == "LtgGptConfig"
    assert report["AutoModel"] == "LtgGptModel"
    assert report["AutoModelForCausalLM"] == "LtgGptForCausalLM"
    assert report["AutoModelForSequenceClassification"] == "LtgGptForSequenceClassification"
    assert report["AutoModelForTokenClassification"] == "LtgGptForTokenClassification"
    assert report["text-generation"][0].startswith("The quick brown")
    assert len(report["text-generation"][0]) > len("The quick brown")
    assert {r["label"] for r in report["text-classification"]} <= {"ham", "spam"}
    assert len(report["text-classification"]) == 2
    assert isinstance(report["token-classification"], list)
    assert report["feature-extraction"][1] == 32
