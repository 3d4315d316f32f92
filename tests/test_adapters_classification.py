"""Adapters on the classification heads: the head trains and is saved with the adapter."""

import pytest
import torch
from adapter_utils import NUM_VIRTUAL_TOKENS, perturb_adapter_, prompts, saved_base
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from safetensors.torch import load_file

from hf_ltg import LtgGptForSequenceClassification, LtgGptForTokenClassification
from hf_ltg.adapters import adapter_config, head_module_names, lora_config, trainable_parameters

HIDDEN, LAYERS, LABELS = 32, 2, 3


def left_padded_batch():
    input_ids, attention_mask = prompts(batch=3, length=7)
    input_ids[0, :3] = 98
    attention_mask[0, :3] = 0
    return input_ids, attention_mask


def test_head_names_are_derived_from_the_model(tmp_path):
    seq = saved_base(LtgGptForSequenceClassification, tmp_path / "seq", num_labels=LABELS)
    tok = saved_base(LtgGptForTokenClassification, tmp_path / "tok", num_labels=LABELS)
    assert head_module_names(seq) == ["score"]
    assert head_module_names(tok) == ["classifier"]


@pytest.mark.parametrize("targets", [None, "all-linear"])
def test_lora_sequence_classification_trains_only_the_adapter_and_the_score_head(targets, tmp_path):
    base = saved_base(LtgGptForSequenceClassification, tmp_path / "base", num_labels=LABELS)
    model = get_peft_model(base, lora_config(base, targets=targets))
    input_ids, attention_mask = left_padded_batch()

    model(input_ids=input_ids, attention_mask=attention_mask, labels=torch.tensor([0, 1, 2])).loss.backward()

    trainable_names = [name for name, param in model.named_parameters() if param.requires_grad]
    trainable, total = trainable_parameters(model)
    print(f"LoRA seq-cls targets={targets}: trainable {trainable} of {total}: {trainable_names}")
    for name in trainable_names:
        assert ".lora_A." in name or ".lora_B." in name or name.startswith("base_model.model.score.modules_to_save.")
    per_layer = 8 * (HIDDEN + 3 * HIDDEN) if targets is None else 8 * (
        (HIDDEN + 3 * HIDDEN) + (HIDDEN + HIDDEN) + (HIDDEN + 4 * HIDDEN) + (4 * HIDDEN + HIDDEN))
    assert trainable == LAYERS * per_layer + HIDDEN * LABELS  # LoRA A/B + the bias-free score head
    assert all(model.get_parameter(name).grad is not None for name in trainable_names)


@pytest.mark.parametrize("method", ["lora", "prompt", "ptuning", "prefix"])
def test_sequence_classification_adapter_file_holds_the_head_and_reloads_identically(method, tmp_path):
    base = saved_base(LtgGptForSequenceClassification, tmp_path / "base", num_labels=LABELS)
    options = {} if method == "lora" else {"num_virtual_tokens": NUM_VIRTUAL_TOKENS}
    model = perturb_adapter_(get_peft_model(base, adapter_config(base, method, **options))).eval()
    input_ids, attention_mask = left_padded_batch()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
    model.save_pretrained(tmp_path / "adapter")

    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    fresh = LtgGptForSequenceClassification.from_pretrained(tmp_path / "base")
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()

    assert "base_model.model.score.weight" in saved or "base_model.score.weight" in saved, sorted(saved)
    plain_model = LtgGptForSequenceClassification.from_pretrained(tmp_path / "base").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=input_ids, attention_mask=attention_mask).logits, expected)
        plain = plain_model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert (plain - expected).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["lora", "prefix"])
def test_token_classification_adapter_trains_and_saves_the_classifier(method, tmp_path):
    base = saved_base(LtgGptForTokenClassification, tmp_path / "base", num_labels=LABELS)
    options = {"targets": "all-linear"} if method == "lora" else {"num_virtual_tokens": NUM_VIRTUAL_TOKENS}
    model = perturb_adapter_(get_peft_model(base, adapter_config(base, method, **options)))
    input_ids, attention_mask = left_padded_batch()
    labels = torch.randint(0, LABELS, input_ids.shape).masked_fill(attention_mask == 0, -100)

    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    output.loss.backward()
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
    model.save_pretrained(tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    reloaded = PeftModel.from_pretrained(LtgGptForTokenClassification.from_pretrained(tmp_path / "base"),
                                         tmp_path / "adapter").eval()

    assert output.logits.shape == (3, 7, LABELS)
    assert not any("classifier.lora" in name for name in saved)
    assert any(name.endswith("classifier.weight") for name in saved), sorted(saved)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=input_ids, attention_mask=attention_mask).logits, expected)


def test_stock_lora_all_linear_skips_the_score_head(tmp_path):
    base = saved_base(LtgGptForSequenceClassification, tmp_path / "base", num_labels=LABELS)
    model = get_peft_model(base, LoraConfig(task_type=TaskType.SEQ_CLS, target_modules="all-linear"))
    names = [name for name, _ in model.named_parameters()]
    assert not any("score.lora" in name for name in names)
    assert any("score.modules_to_save" in name for name in names)


@pytest.mark.parametrize("method", ["prompt", "ptuning"])
def test_prompt_methods_for_token_classification_are_rejected(method, tmp_path):
    base = saved_base(LtgGptForTokenClassification, tmp_path / "base", num_labels=LABELS)
    with pytest.raises(ValueError, match="not support for token classification|does not support"):
        adapter_config(base, method, num_virtual_tokens=NUM_VIRTUAL_TOKENS)


def test_lora_target_inside_the_head_is_rejected(tmp_path):
    base = saved_base(LtgGptForSequenceClassification, tmp_path / "base", num_labels=LABELS)
    with pytest.raises(ValueError, match="inside the task head"):
        lora_config(base, targets=["score"])


def test_lora_on_the_input_embedding_of_a_classifier_trains_saves_and_merges(tmp_path):
    base = saved_base(LtgGptForSequenceClassification, tmp_path / "base", num_labels=LABELS)
    model = get_peft_model(base, lora_config(base, targets=["qkv_proj", "wte"]))
    input_ids, attention_mask = left_padded_batch()
    model(input_ids=input_ids, attention_mask=attention_mask, labels=torch.tensor([0, 1, 2])).loss.backward()
    embedding_lora = [name for name, param in model.named_parameters() if "wte.lora_embedding" in name]
    assert len(embedding_lora) == 2 and all(model.get_parameter(name).grad is not None for name in embedding_lora)

    model = perturb_adapter_(model).eval()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
    model.save_pretrained(tmp_path / "adapter")
    assert any("wte.lora_embedding" in name for name in load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    with torch.no_grad():
        merged = model.merge_and_unload()(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=0)


def test_lora_on_an_embedding_tied_to_the_lm_head_is_refused(tmp_path):
    from hf_ltg import LtgGptForCausalLM

    base = saved_base(LtgGptForCausalLM, tmp_path / "base")
    with pytest.raises(ValueError, match="'wte' is the input embedding transformer.wte.*LM head too"):
        lora_config(base, targets=["qkv_proj", "wte"])
