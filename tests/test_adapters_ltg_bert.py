"""hf_ltg.adapters on LTG-BERT: its heads are found, kept out of LoRA and saved with the adapter.

(tests/test_ltg_bert.py covers stock peft LoRA / prompt / prefix forward and backward.)
"""

import pytest
import torch
from adapter_utils import perturb_adapter_
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file

from hf_ltg.adapters import adapter_config, head_module_names, lora_config
from hf_ltg.ltg_bert import (
    LtgBertConfig,
    LtgBertForMaskedLM,
    LtgBertForQuestionAnswering,
    LtgBertForSequenceClassification,
    LtgBertForTokenClassification,
)

VOCAB = 150


def saved_bert(model_class, folder, **overrides):
    torch.manual_seed(0)
    config = LtgBertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=48, max_position_embeddings=64, position_bucket_size=16,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **overrides)
    model_class(config).save_pretrained(folder)
    return model_class.from_pretrained(folder).eval()


def batch():
    input_ids = torch.randint(5, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    return input_ids, attention_mask


@pytest.mark.parametrize("model_class, heads", [
    (LtgBertForSequenceClassification, ["classifier"]),
    (LtgBertForTokenClassification, ["classifier"]),
    (LtgBertForQuestionAnswering, ["qa_outputs"]),
    (LtgBertForMaskedLM, []),
])
def test_ltg_bert_head_names_are_derived_from_the_model(model_class, heads, tmp_path):
    model = saved_bert(model_class, tmp_path / "base", num_labels=2)
    task_type = None if model_class is not LtgBertForMaskedLM else "CAUSAL_LM"
    assert head_module_names(model, task_type) == heads


@pytest.mark.parametrize("targets", [None, "all-linear", ["out_proj"]])
def test_ltg_bert_lora_keeps_the_classifier_whole_and_saves_it(targets, tmp_path):
    # The classification head has its own dense/out_proj layers: LoRA must not wrap them.
    base = saved_bert(LtgBertForSequenceClassification, tmp_path / "base", num_labels=2)
    model = perturb_adapter_(get_peft_model(base, lora_config(base, targets=targets))).eval()
    input_ids, attention_mask = batch()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
    model.save_pretrained(tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    reloaded = PeftModel.from_pretrained(LtgBertForSequenceClassification.from_pretrained(tmp_path / "base"),
                                         tmp_path / "adapter").eval()

    lora_layers = {name.split(".lora_")[0] for name in saved if ".lora_" in name}
    assert lora_layers and not any(".classifier." in name for name in lora_layers)
    assert {"base_model.model.classifier.dense.weight", "base_model.model.classifier.out_proj.weight"} <= set(saved)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=input_ids, attention_mask=attention_mask).logits, expected)


def test_ltg_bert_unknown_lora_target_lists_its_linear_layers(tmp_path):
    model = saved_bert(LtgBertForSequenceClassification, tmp_path / "base", num_labels=2)
    with pytest.raises(ValueError, match="'qkv_proj' is neither a linear nor an embedding layer") as error:
        lora_config(model, targets=["qkv_proj"])
    for name in ("in_proj_qk", "in_proj_v", "up_proj", "down_proj"):
        assert name in str(error.value)


def test_ltg_bert_prompt_tuning_sequence_classifier_saves_the_head(tmp_path):
    base = saved_bert(LtgBertForSequenceClassification, tmp_path / "base", num_labels=2)
    model = perturb_adapter_(get_peft_model(base, adapter_config(base, "prompt", num_virtual_tokens=4))).eval()
    input_ids, attention_mask = batch()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(LtgBertForSequenceClassification.from_pretrained(tmp_path / "base"),
                                         tmp_path / "adapter").eval()
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any(name.endswith("classifier.out_proj.weight") for name in saved), sorted(saved)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=input_ids, attention_mask=attention_mask).logits, expected)
