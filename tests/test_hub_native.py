"""`hf-ltg export --native`: stock GPT-2 folders that need neither remote code nor hf_ltg."""

import json

import pytest
import torch
import yaml
from helpers import run_without_hf_ltg
from hub_utils import sample_ids, save_tiny_gpt
from transformers import GPT2ForSequenceClassification, GPT2ForTokenClassification

from hf_ltg.cli import main
from hf_ltg.hub import diagnose, export_native

ISOLATED_LOGITS = """
import json, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel
try:
    import hf_ltg
    raise SystemExit("hf_ltg was importable")
except ImportError:
    pass
model = GPT2LMHeadModel.from_pretrained(CKPT).eval()
auto = AutoModelForCausalLM.from_pretrained(CKPT)  # no trust_remote_code: stock classes only
tokenizer = AutoTokenizer.from_pretrained(CKPT)
ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")["input_ids"]
with torch.no_grad():
    logits = model(ids).logits
print(json.dumps({"auto": type(auto).__name__, "ids": ids.tolist(), "logits": logits.tolist()}))
"""


@pytest.mark.slow
def test_native_export_loads_as_gpt2_without_hf_ltg_and_gives_the_same_logits(tmp_path, tiny_tokenizer):
    model = save_tiny_gpt(tmp_path / "ckpt", tiny_tokenizer, qkv_bias=False, tie_word_embeddings=False)

    assert main(["export", "--native", str(tmp_path / "ckpt"), str(tmp_path / "native"),
                 "--license", "apache-2.0"]) == 0

    native = tmp_path / "native"
    config = json.loads((native / "config.json").read_text())
    assert config["model_type"] == "gpt2" and "auto_map" not in config
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert not list(native.glob("*.py"))
    report = json.loads(run_without_hf_ltg(ISOLATED_LOGITS, native, tmp_path).strip().splitlines()[-1])
    assert report["auto"] == "GPT2LMHeadModel"
    ids = torch.tensor(report["ids"])
    assert torch.equal(ids, sample_ids(tiny_tokenizer))
    with torch.no_grad():
        expected = model(ids).logits
    torch.testing.assert_close(torch.tensor(report["logits"]), expected, rtol=0, atol=1e-5)

    text = (native / "README.md").read_text()
    metadata = yaml.safe_load(text.split("---", 2)[1])
    assert metadata["pipeline_tag"] == "text-generation" and "custom_code" not in metadata["tags"]
    assert "trust_remote_code" not in text and "AutoModelForCausalLM.from_pretrained(repo)" in text


@pytest.mark.parametrize("head, gpt2_class", [("sequence-classification", GPT2ForSequenceClassification),
                                              ("token-classification", GPT2ForTokenClassification)])
def test_native_export_of_classifiers_gives_the_same_logits_with_stock_gpt2_classes(
        tmp_path, tiny_tokenizer, head, gpt2_class):
    model = save_tiny_gpt(tmp_path / "ckpt", tiny_tokenizer, head=head)

    export_native(tmp_path / "ckpt", tmp_path / "native")

    stock = gpt2_class.from_pretrained(tmp_path / "native").eval()
    assert stock.config.id2label == {0: "negative", 1: "positive"}
    ids = sample_ids(tiny_tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(stock(ids).logits, model(ids).logits, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_doctor_passes_a_native_export_without_remote_code(tmp_path, tiny_tokenizer):
    save_tiny_gpt(tmp_path / "ckpt", tiny_tokenizer)
    export_native(tmp_path / "ckpt", tmp_path / "native")

    report = diagnose(tmp_path / "native")

    assert report.ok, report.format()
    passed = {c.name for c in report.checks if c.status == "PASS"}
    assert {"AutoModel loads and runs", "AutoModelForCausalLM loads and runs", "pipeline text-generation"} <= passed
    assert "built into transformers" in next(c.detail for c in report.checks if c.name == "auto_map")


def test_native_export_refuses_what_stock_gpt2_cannot_express(tmp_path, tiny_tokenizer, capsys):
    save_tiny_gpt(tmp_path / "biased", tiny_tokenizer, head="sequence-classification", score_bias=True)
    with pytest.raises(ValueError, match="`score` layer has a bias; GPT-2's `score` has none"):
        export_native(tmp_path / "biased", tmp_path / "out")

    save_tiny_gpt(tmp_path / "quantized", tiny_tokenizer)
    config = json.loads((tmp_path / "quantized" / "config.json").read_text())
    config["quantization"] = {"method": "int8"}
    (tmp_path / "quantized" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="quantized; stock GPT-2 cannot express int8"):
        export_native(tmp_path / "quantized", tmp_path / "out")

    config.pop("quantization")
    config["model_type"] = "ltg_bert"
    (tmp_path / "quantized" / "config.json").write_text(json.dumps(config))
    assert main(["export", "--native", str(tmp_path / "quantized"), str(tmp_path / "out")]) == 2
    assert "only 'ltg_gpt' checkpoints can be written as stock GPT-2" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
