"""`hf-ltg export` refuses what would be silent nonsense and stays quiet about what is right:
a head the checkpoint has no weights for, merging a prompt-learning adapter, and (no scary load
report) merging a LoRA classifier whose head comes from the adapter."""

import json

import pytest
import torch
from helpers import REPO
from hub_utils import sample_ids, save_tiny_gpt
from peft import get_peft_model
from test_export_classifier_adapter import classification_adapter

from hf_ltg import LtgGptForCausalLM, LtgGptForSequenceClassification
from hf_ltg.adapters import adapter_config, save_adapter_or_merged
from hf_ltg.cli import main

SHIPPED = REPO / "checkpoints"


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("checkpoint, task, missing, hint", [
    ("ltg-bert-mlm", "sequence-classification", "classifier.out_proj.weight", "hf-ltg finetune-cls"),
    ("ltg-gpt-lm", "sequence-classification", "score.weight", "hf-ltg finetune-cls"),
    ("ltg-gpt-lm", "token-classification", "classifier.weight", "token classifier"),
])
def test_onnx_export_refuses_a_head_the_checkpoint_has_no_weights_for(tmp_path, capsys, checkpoint, task, missing,
                                                                      hint):
    out = tmp_path / "onnx"
    assert main(["export", str(SHIPPED / checkpoint), "--onnx", str(out), "--task", task]) == 2

    error = one_line_error(capsys)
    assert missing in error and "randomly initialised" in error and hint in error
    assert not out.exists()


def test_hub_export_refuses_a_checkpoint_whose_head_weights_are_missing(tmp_path, tiny_tokenizer, capsys):
    save_tiny_gpt(tmp_path / "lm", tiny_tokenizer)
    config = json.loads((tmp_path / "lm" / "config.json").read_text())
    config["architectures"] = ["LtgGptForSequenceClassification"]  # the weights are still the LM's
    (tmp_path / "lm" / "config.json").write_text(json.dumps(config))

    assert main(["export", str(tmp_path / "lm"), str(tmp_path / "out")]) == 2

    assert "score.weight" in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["prompt", "ptuning", "prefix"])
@pytest.mark.parametrize("merge", [True, False])
def test_export_says_a_prompt_learning_adapter_cannot_be_merged(tmp_path, tiny_tokenizer, capsys, method, merge):
    save_tiny_gpt(tmp_path / "lm", tiny_tokenizer)
    model = LtgGptForCausalLM.from_pretrained(tmp_path / "lm")
    adapter = get_peft_model(model, adapter_config(model, method, num_virtual_tokens=4))
    save_adapter_or_merged(adapter, tmp_path / "adapter", tokenizer=tiny_tokenizer)
    capsys.readouterr()

    args = ["export", str(tmp_path / "adapter"), str(tmp_path / "out")] + (["--merge"] if merge else [])
    assert main(args) == 2

    error = one_line_error(capsys)
    assert "cannot be merged" in error and "--adapter lora" in error and "PeftModel.from_pretrained" in error
    assert "AttributeError" not in error and not (tmp_path / "out").exists()


@pytest.fixture
def transformers_warnings():
    """What transformers logs at its default verbosity (the suite's conftest silences it)."""
    import io
    import logging as std_logging

    from transformers.utils import logging

    level, log = logging.get_verbosity(), io.StringIO()
    handler = std_logging.StreamHandler(log)
    logging.set_verbosity_warning()
    logging.add_handler(handler)
    yield log
    logging.remove_handler(handler)
    logging.set_verbosity(level)


def test_merging_a_lora_classifier_prints_no_newly_initialised_report(tmp_path, tiny_tokenizer, capfd,
                                                                       transformers_warnings):
    save_tiny_gpt(tmp_path / "lm", tiny_tokenizer)
    peft_model = classification_adapter(tmp_path / "lm", tiny_tokenizer)
    save_adapter_or_merged(peft_model, tmp_path / "adapter", tokenizer=tiny_tokenizer)
    with torch.no_grad():
        expected = peft_model(sample_ids(tiny_tokenizer)).logits
    capfd.readouterr()
    transformers_warnings.truncate(0)

    assert main(["export", str(tmp_path / "adapter"), str(tmp_path / "out"), "--merge"]) == 0

    captured = capfd.readouterr()
    shown = captured.err + captured.out + transformers_warnings.getvalue()
    assert "wrote" in captured.out
    assert "MISSING" not in shown and "newly initialized" not in shown
    merged = LtgGptForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(sample_ids(tiny_tokenizer)).logits, expected, rtol=1e-5, atol=1e-5)
