"""`hf-ltg export ADAPTER OUT --merge` of classification adapters: the merged folder names the classes."""

import json

import pytest
import torch
from hub_utils import sample_ids, save_tiny_gpt
from peft import get_peft_model
from transformers import pipeline

from hf_ltg import LtgGptForSequenceClassification
from hf_ltg.adapters import lora_config, save_adapter_or_merged
from hf_ltg.cli import main

LABELS = {0: "loop", 1: "error", 2: "module"}


def classification_adapter(lm_dir, tokenizer, labels=LABELS, **config):
    """A LoRA classifier on a causal-LM checkpoint (which knows no labels), as finetune-cls --adapter lora makes it."""
    model = LtgGptForSequenceClassification.from_pretrained(
        lm_dir, num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()}, **config)
    peft_model = get_peft_model(model, lora_config(model))
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in peft_model.parameters():
            if parameter.requires_grad:
                parameter.normal_(0, 0.2)
    return peft_model.eval()


def test_merged_classification_adapter_carries_its_labels(tmp_path, tiny_tokenizer):
    save_tiny_gpt(tmp_path / "lm", tiny_tokenizer)
    peft_model = classification_adapter(tmp_path / "lm", tiny_tokenizer, problem_type="multi_label_classification")
    save_adapter_or_merged(peft_model, tmp_path / "adapter", tokenizer=tiny_tokenizer)
    with torch.no_grad():
        expected = peft_model(sample_ids(tiny_tokenizer)).logits

    assert main(["export", str(tmp_path / "adapter"), str(tmp_path / "out"), "--merge"]) == 0

    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "loop", "1": "error", "2": "module"}
    assert config["label2id"] == {"loop": 0, "error": 1, "module": 2}
    assert config["problem_type"] == "multi_label_classification"
    merged = LtgGptForSequenceClassification.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(sample_ids(tiny_tokenizer)).logits, expected, rtol=1e-5, atol=1e-5)
    classify = pipeline("text-classification", model=str(tmp_path / "out"))
    assert classify("The quick brown fox.")[0]["label"] in LABELS.values()


def test_id2label_names_the_classes_of_an_adapter_saved_without_them(tmp_path, tiny_tokenizer, capsys):
    save_tiny_gpt(tmp_path / "lm", tiny_tokenizer)
    classification_adapter(tmp_path / "lm", tiny_tokenizer).save_pretrained(tmp_path / "adapter")  # peft alone

    assert main(["export", str(tmp_path / "adapter"), str(tmp_path / "out"), "--merge", "--id2label", "a,b"]) == 2
    assert "2 labels ['a', 'b'] for a head with 3 outputs" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "adapter"), str(tmp_path / "out"), "--merge",
                 "--id2label", "neg, neutral, pos"]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["id2label"] == {"0": "neg", "1": "neutral", "2": "pos"}


def test_an_adapter_without_labels_still_merges_with_a_head_of_its_size(tmp_path, tiny_tokenizer, capsys):
    save_tiny_gpt(tmp_path / "lm", tiny_tokenizer)
    classification_adapter(tmp_path / "lm", tiny_tokenizer).save_pretrained(tmp_path / "adapter")

    assert main(["export", str(tmp_path / "adapter"), str(tmp_path / "out"), "--merge"]) == 0
    assert "--id2label" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "out" / "config.json").read_text())["id2label"]) == 3


@pytest.mark.parametrize("labels", [{0: "ham", 1: "spam"}])
def test_two_label_adapter_exports_its_names_not_label_0(tmp_path, tiny_tokenizer, labels):
    save_tiny_gpt(tmp_path / "lm", tiny_tokenizer)
    save_adapter_or_merged(classification_adapter(tmp_path / "lm", tiny_tokenizer, labels), tmp_path / "adapter",
                           tokenizer=tiny_tokenizer)
    assert main(["export", str(tmp_path / "adapter"), str(tmp_path / "out"), "--merge"]) == 0
    classify = pipeline("text-classification", model=str(tmp_path / "out"))
    assert classify("The quick brown fox.")[0]["label"] in ("ham", "spam")
