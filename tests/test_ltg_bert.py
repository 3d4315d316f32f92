"""LTG-BERT in-process behaviour: heads, attention backends, initialisation, caching, errors, peft."""

import math

import pytest
import torch

import hf_ltg  # noqa: F401  (registers the Auto classes and peft targets)
from hf_ltg.ltg_bert import (
    AUTO_MODEL_CLASSES,
    LtgBertConfig,
    LtgBertForCausalLM,
    LtgBertForMaskedLM,
    LtgBertForMultipleChoice,
    LtgBertForQuestionAnswering,
    LtgBertForSequenceClassification,
    LtgBertForTokenClassification,
    LtgBertModel,
)
from hf_ltg.ltg_bert.configuration_ltg_bert import AUTO_MAP
from hf_ltg.ltg_bert.modeling_ltg_bert import relative_position_buckets

VOCAB = 150


def tiny_config(**overrides) -> LtgBertConfig:
    settings = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                    max_position_embeddings=64, position_bucket_size=16, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
    return LtgBertConfig(**{**settings, **overrides})


def batch(lengths=(9, 5), seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (len(lengths), max(lengths)), generator=generator)
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, 3), mask


def model_of(cls, seed=0, **overrides):
    torch.manual_seed(seed)
    return cls(tiny_config(**overrides)).eval()


# ---------------------------------------------------------------- config and registration

def test_config_defaults_are_the_babylm_base_model_and_carry_the_full_auto_map():
    config = LtgBertConfig()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size,
            config.vocab_size, config.max_position_embeddings, config.position_bucket_size) == \
        (768, 12, 12, 2048, 16384, 512, 32)
    assert config.layer_norm_eps == 1e-7 and config.position_layout == "babylm"
    assert config.auto_map == AUTO_MAP and len(AUTO_MAP) == 8
    assert LtgBertConfig.from_preset("xs").hidden_size == 192


@pytest.mark.parametrize("field, value, message", [
    ("num_attention_heads", 5, "divisible by num_attention_heads"),
    ("position_layout", "deberta", "position_layout"),
    ("mask_token_id", 999, "mask_token_id = 999 is outside the vocabulary"),
    ("hidden_dropout_prob", 1.5, "hidden_dropout_prob"),
])
def test_config_rejects_invalid_values_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**{field: value})


def test_every_auto_class_builds_its_head_from_the_config():
    from hf_ltg.registration import AUTO_CLASSES

    config = tiny_config()
    for auto_name, cls in AUTO_MODEL_CLASSES.items():
        assert type(AUTO_CLASSES[auto_name].from_config(config)) is cls
    assert set(AUTO_MODEL_CLASSES) | {"AutoConfig"} == set(AUTO_MAP)


def test_save_pretrained_of_any_head_writes_the_complete_auto_map_and_the_code(tmp_path):
    model_of(LtgBertForTokenClassification).save_pretrained(tmp_path)
    import json

    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"] == AUTO_MAP and saved["model_type"] == "ltg_bert"
    assert (tmp_path / "modeling_ltg_bert.py").is_file() and (tmp_path / "configuration_ltg_bert.py").is_file()


# ---------------------------------------------------------------- outputs

def test_hidden_states_are_cumulative_and_only_returned_when_asked():
    model = model_of(LtgBertModel)
    ids, mask = batch()
    plain = model(ids, attention_mask=mask)
    assert plain.hidden_states is None and plain.attentions is None
    full = model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    assert len(full.hidden_states) == 3 and len(full.attentions) == 2
    torch.testing.assert_close(full.hidden_states[-1], full.last_hidden_state)
    word = model.embedding.word_embedding(ids)
    torch.testing.assert_close(full.hidden_states[0], torch.nn.functional.layer_norm(word, (32,), eps=1e-7))
    # attention over padding is exactly zero, and each row sums to one
    assert full.attentions[0].shape == (2, 2, 9, 9)
    assert torch.all(full.attentions[0][1, :, :, 5:] == 0)
    torch.testing.assert_close(full.attentions[0].sum(-1), torch.ones(2, 2, 9))


def test_return_dict_false_gives_tuples():
    model = model_of(LtgBertForMaskedLM)
    ids, mask = batch()
    labels = ids.masked_fill(mask == 0, -100)
    as_tuple = model(ids, attention_mask=mask, labels=labels, return_dict=False)
    as_dict = model(ids, attention_mask=mask, labels=labels)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 2
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)


def test_padding_does_not_change_the_outputs_of_real_tokens():
    model = model_of(LtgBertForMaskedLM)
    ids, mask = batch((9, 5))
    padded = model(ids, attention_mask=mask).logits[1, :5]
    alone = model(ids[1:, :5]).logits[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


def test_masked_lm_decoder_is_tied_to_the_word_embedding_and_has_its_own_bias():
    model = model_of(LtgBertForMaskedLM)
    assert model.lm_head.decoder.weight is model.ltg_bert.embedding.word_embedding.weight
    assert model.lm_head.decoder.bias.shape == (VOCAB,)
    # no vocabulary-specific masking of logits
    assert torch.isfinite(model(batch()[0]).logits).all()


@pytest.mark.parametrize("cls, shape", [
    (LtgBertForSequenceClassification, (2, 3)),
    (LtgBertForTokenClassification, (2, 9, 3)),
])
def test_classification_heads_give_logits_and_a_loss(cls, shape):
    model = model_of(cls, num_labels=3)
    ids, mask = batch()
    labels = torch.tensor([0, 2]) if len(shape) == 2 else torch.randint(0, 3, (2, 9))
    out = model(ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == shape and out.loss.ndim == 0 and torch.isfinite(out.loss)


def test_sequence_classification_pools_the_first_token():
    model = model_of(LtgBertForSequenceClassification, num_labels=2)
    ids, mask = batch()
    hidden = model.ltg_bert(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(model(ids, attention_mask=mask).logits, model.classifier(hidden[:, 0]))


def test_question_answering_gives_start_and_end_logits_per_token():
    model = model_of(LtgBertForQuestionAnswering)
    ids, mask = batch()
    out = model(ids, attention_mask=mask, start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([3, 4]))
    assert out.start_logits.shape == out.end_logits.shape == (2, 9)
    assert torch.isfinite(out.loss)


def test_multiple_choice_scores_each_choice_from_its_first_token():
    model = model_of(LtgBertForMultipleChoice)
    ids = torch.randint(5, VOCAB, (2, 3, 7))
    mask = torch.ones(2, 3, 7, dtype=torch.long)
    mask[:, 1, 5:] = 0
    out = model(ids, attention_mask=mask, labels=torch.tensor([0, 2]))
    assert out.logits.shape == (2, 3) and torch.isfinite(out.loss)
    # choice c of example b is scored exactly as that sequence alone
    alone = model.classifier(model.ltg_bert(ids[1, 1:2, :5]).last_hidden_state[:, 0])
    torch.testing.assert_close(out.logits[1, 1], alone[0, 0], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- attention backends and training

@pytest.mark.parametrize("layout", ["babylm", "bnc"])
def test_eager_and_sdpa_attention_agree(layout):
    model = model_of(LtgBertForMaskedLM, position_layout=layout)
    ids, mask = batch((40, 23))
    model.set_attn_implementation("eager")
    eager = model(ids, attention_mask=mask).logits
    model.set_attn_implementation("sdpa")
    assert model.config._attn_implementation == "sdpa"
    sdpa = model(ids, attention_mask=mask).logits
    difference = (eager - sdpa).abs().max().item()
    print(f"{layout}: eager vs sdpa max |difference| = {difference:.2e}")
    assert difference < 1e-5


def test_gradient_checkpointing_gives_the_same_gradients():
    ids, mask = batch()
    labels = ids.masked_fill(mask == 0, -100)

    def gradients(checkpointing):
        model = model_of(LtgBertForMaskedLM).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.ltg_bert.layers)
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and "ltg_bert.embedding.relative_embedding" in plain
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_initialisation_is_ltg_truncated_normal_with_depth_scaled_feed_forward():
    hidden = 64
    model = model_of(LtgBertForMaskedLM, hidden_size=hidden, num_attention_heads=4, intermediate_size=256,
                     num_hidden_layers=3)
    std = math.sqrt(2 / (5 * hidden))

    def check(weight, expected_std):
        assert weight.abs().max() <= 2 * expected_std + 1e-6
        # a normal cut at 2 std has std 0.880 of the uncut one
        assert abs(weight.std().item() / (0.880 * expected_std) - 1) < 0.1

    layers = model.ltg_bert.layers
    check(model.ltg_bert.embedding.word_embedding.weight, std)
    check(model.ltg_bert.embedding.relative_embedding, std)
    check(layers[2].attention.in_proj_qk.weight, std)
    for i, layer in enumerate(layers):
        check(layer.mlp.up_proj.weight, std * math.sqrt(1 / (2 * (i + 1))))
        check(layer.mlp.down_proj.weight, std * math.sqrt(1 / (2 * (i + 1))))
    assert torch.all(layers[0].attention.in_proj_qk.bias == 0) and torch.all(model.lm_head.decoder.bias == 0)
    assert torch.all(layers[0].attention.post_layer_norm.weight == 1)


def test_a_new_head_loaded_over_a_base_checkpoint_is_initialised_and_the_base_is_kept(tmp_path):
    base = model_of(LtgBertForMaskedLM)
    base.save_pretrained(tmp_path)
    classifier = LtgBertForSequenceClassification.from_pretrained(tmp_path, num_labels=3)
    torch.testing.assert_close(classifier.ltg_bert.embedding.relative_embedding,
                               base.ltg_bert.embedding.relative_embedding)
    weight = classifier.classifier.dense.weight
    std = math.sqrt(2 / (5 * 32))
    assert weight.abs().max() <= 2 * std + 1e-6 and weight.std() > 0.5 * std


# ---------------------------------------------------------------- positions

def test_relative_buckets_are_exact_near_and_logarithmic_far():
    positions = torch.arange(600)
    buckets = relative_position_buckets(positions, positions, 32, 512) - 31
    assert buckets[20, 5].item() == 15 and buckets[5, 20].item() == -15 and buckets[7, 7].item() == 0
    by_distance = buckets[599].flip(0)  # distance 0 .. 599 to the last query
    assert by_distance[:17].tolist() == list(range(17))  # exact below b // 2 (and at it)
    assert by_distance[17].item() == 17 and by_distance[39].item() == 20 and by_distance[399].item() == 30
    assert torch.all(by_distance[440:] == 31)  # the outermost bucket b - 1, whatever the distance beyond
    assert torch.all(by_distance[1:] >= by_distance[:-1])  # monotone in the distance


def test_inputs_longer_than_max_position_embeddings_are_accepted():
    model = model_of(LtgBertForMaskedLM, max_position_embeddings=16, position_bucket_size=8)
    ids = torch.randint(5, VOCAB, (1, 40))
    assert model(ids).logits.shape == (1, 40, VOCAB)


# ---------------------------------------------------------------- bad input

def test_both_input_ids_and_inputs_embeds_are_rejected():
    model = model_of(LtgBertModel)
    ids = batch()[0]
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds.*both"):
        model(ids, inputs_embeds=model.embedding.word_embedding(ids))
    with pytest.raises(ValueError, match="neither"):
        model()


@pytest.mark.parametrize("bad", [VOCAB, -1])
def test_token_ids_outside_the_vocabulary_are_rejected(bad):
    ids = batch()[0]
    ids[0, 3] = bad
    with pytest.raises(ValueError, match=f"token id {bad}, outside the vocabulary \\[0, {VOCAB}\\)"):
        model_of(LtgBertForMaskedLM)(ids)


def test_an_attention_mask_of_the_wrong_shape_is_rejected_naming_both_shapes():
    ids, mask = batch()
    with pytest.raises(ValueError, match=r"shape \(2, 8\) but the input needs \(2, 9\)"):
        model_of(LtgBertForMaskedLM)(ids, attention_mask=mask[:, :8])


def test_empty_input_is_rejected():
    with pytest.raises(ValueError, match="length >= 1"):
        model_of(LtgBertModel)(torch.zeros(1, 0, dtype=torch.long))


# ---------------------------------------------------------------- causal-LM head

def test_causal_lm_never_attends_to_future_tokens():
    model = model_of(LtgBertForCausalLM)
    ids = batch((12,))[0]
    changed = ids.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % VOCAB
    before, after = model(ids).logits, model(changed).logits
    torch.testing.assert_close(before[:, :8], after[:, :8], atol=1e-6, rtol=0)
    assert (before[:, 8:] - after[:, 8:]).abs().max() > 1e-4


def test_causal_lm_with_cache_gives_the_logits_of_the_full_forward():
    model = model_of(LtgBertForCausalLM, max_position_embeddings=16, position_bucket_size=8)
    ids = batch((30,))[0]
    full = model(ids).logits
    out = model(ids[:, :17], use_cache=True)
    steps = [out.logits]
    for t in range(17, 30):
        out = model(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)


def test_causal_lm_takes_the_cache_under_its_transformers_5_24_name_too():
    model = model_of(LtgBertForCausalLM, max_position_embeddings=16, position_bucket_size=8)
    ids = batch((12,))[0]
    full = model(ids).logits
    cache = model(ids[:, :7], use_cache=True).past_key_values
    step = model(ids[:, 7:], cache=cache, use_cache=True).logits
    torch.testing.assert_close(step, full[:, 7:], atol=1e-5, rtol=0)


def test_causal_lm_generates_identically_with_and_without_cache_also_left_padded():
    model = model_of(LtgBertForCausalLM)
    ids, mask = batch((6, 4))
    # left padding
    ids = torch.stack([ids[0], torch.cat([torch.full((2,), 3), ids[1, :4]])])
    mask = torch.stack([mask[0], torch.cat([torch.zeros(2, dtype=torch.long), mask[1, :4]])])
    kwargs = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=3)
    with_cache = model.generate(ids, use_cache=True, **kwargs)
    without = model.generate(ids, use_cache=False, **kwargs)
    assert with_cache.shape == (2, 14)
    assert torch.equal(with_cache, without)
    # the left-padded row continues as it would unpadded
    alone = model.generate(ids[1:, 2:], max_new_tokens=8, do_sample=False, pad_token_id=3)
    assert torch.equal(with_cache[1, 6:], alone[0, 4:])


def test_causal_lm_logits_to_keep_and_loss():
    model = model_of(LtgBertForCausalLM)
    ids = batch((10,))[0]
    assert model(ids, logits_to_keep=1).logits.shape == (1, 1, VOCAB)
    assert torch.isfinite(model(ids, labels=ids).loss)


# ---------------------------------------------------------------- peft

def test_lora_with_default_targets_trains_a_sequence_classifier():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model_of(LtgBertForSequenceClassification, num_labels=2),
                           LoraConfig(task_type="SEQ_CLS", r=4))
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    assert any("in_proj_qk.lora_A" in n for n in names) and any("in_proj_v.lora_B" in n for n in names)
    assert any("classifier" in n and "modules_to_save" in n for n in names)
    ids, mask = batch()
    out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1]))
    out.loss.backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None for g in lora_grads)


@pytest.mark.parametrize("task_type, cls", [("SEQ_CLS", LtgBertForSequenceClassification),
                                            ("CAUSAL_LM", LtgBertForCausalLM)])
def test_prompt_tuning_runs_forward_and_backward(task_type, cls):
    from peft import PromptTuningConfig, get_peft_model

    model = get_peft_model(model_of(cls, num_labels=2), PromptTuningConfig(task_type=task_type, num_virtual_tokens=4))
    ids, mask = batch()
    labels = torch.tensor([0, 1]) if task_type == "SEQ_CLS" else ids.masked_fill(mask == 0, -100)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    prompt = model.prompt_encoder["default"].embedding.weight
    assert prompt.grad is not None and prompt.grad.abs().sum() > 0
    if task_type == "CAUSAL_LM":
        generated = model.generate(input_ids=ids[:1, :5], max_new_tokens=3, do_sample=False)
        assert generated.shape[-1] == 8


def test_prefix_tuning_uses_the_injected_cache():
    from peft import PrefixTuningConfig, get_peft_model

    model = get_peft_model(model_of(LtgBertForCausalLM), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    ids, mask = batch()
    out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    out.loss.backward()
    assert out.logits.shape == (2, 9, VOCAB)
