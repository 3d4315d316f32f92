"""LTG GPT behaves like a model inside transformers: outputs, backends, checkpointing, errors."""

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

from hf_ltg import (
    LtgGptConfig,
    LtgGptForCausalLM,
    LtgGptForSequenceClassification,
    LtgGptForTokenClassification,
    LtgGptModel,
)
from hf_ltg.checkpoint import load_state_dict
from hf_ltg.cli import main


def tiny_config(**overrides):
    values = dict(vocab_size=101, max_position_embeddings=32, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, embedding_dropout=0.0, attention_dropout=0.0, hidden_dropout=0.0,
                  eos_token_id=100, bos_token_id=100)
    values.update(overrides)
    return LtgGptConfig(**values)


def test_config_rejects_invalid_values_naming_the_field():
    with pytest.raises(ValueError, match="hidden_size .*30.* num_attention_heads .*4"):
        LtgGptConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="num_hidden_layers must be a positive integer, got 0"):
        LtgGptConfig(num_hidden_layers=0)
    with pytest.raises(ValueError, match="activation 'swishy' is unknown"):
        LtgGptConfig(activation="swishy")
    with pytest.raises(ValueError, match="vocab_size must be a positive integer, got -5"):
        LtgGptConfig(vocab_size=-5)
    with pytest.raises(ValueError, match="eos_token_id = 200 is outside the vocabulary"):
        LtgGptConfig(vocab_size=100, eos_token_id=200)


def test_presets_have_the_published_gpt2_sizes():
    sizes = {name: LtgGptConfig.from_preset(name) for name in ("gpt2", "gpt2-medium", "large", "xl")}
    assert (sizes["gpt2"].hidden_size, sizes["gpt2"].num_hidden_layers, sizes["gpt2"].num_attention_heads) == (768, 12, 12)
    assert (sizes["gpt2-medium"].hidden_size, sizes["gpt2-medium"].num_hidden_layers) == (1024, 24)
    assert (sizes["large"].hidden_size, sizes["large"].num_attention_heads) == (1280, 20)
    assert (sizes["xl"].hidden_size, sizes["xl"].num_hidden_layers, sizes["xl"].num_attention_heads) == (1600, 48, 25)
    assert sizes["gpt2"].eos_token_id == 50256
    with torch.device("meta"):
        model = LtgGptForCausalLM(sizes["gpt2"])
    assert sum(p.numel() for p in model.parameters()) == 124_439_808  # GPT-2 small, tied
    with pytest.raises(ValueError, match="Unknown preset 'gpt5'"):
        LtgGptConfig.from_preset("gpt5")


def test_import_registers_every_head_with_the_auto_classes():
    config = tiny_config()
    assert type(AutoConfig.for_model("ltg_gpt")) is LtgGptConfig
    assert type(AutoModel.from_config(config)) is LtgGptModel
    assert type(AutoModelForCausalLM.from_config(config)) is LtgGptForCausalLM
    assert type(AutoModelForSequenceClassification.from_config(config)) is LtgGptForSequenceClassification


@pytest.mark.parametrize("head", [LtgGptModel, LtgGptForCausalLM, LtgGptForSequenceClassification,
                                  LtgGptForTokenClassification])
def test_every_saved_head_writes_the_full_auto_map_and_the_code(tmp_path, head):
    head(tiny_config()).save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path, trust_remote_code=True)
    assert set(config.auto_map) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM",
                                    "AutoModelForSequenceClassification", "AutoModelForTokenClassification"}
    assert (tmp_path / "modeling_ltg_gpt.py").is_file() and (tmp_path / "configuration_ltg_gpt.py").is_file()
    assert (tmp_path / "model.safetensors").is_file()


def test_eager_and_sdpa_agree_with_padding():
    torch.manual_seed(0)
    model = LtgGptForCausalLM(tiny_config()).eval()
    ids = torch.randint(0, 100, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    outputs = {}
    for attn in ("eager", "sdpa"):
        model.set_attn_implementation(attn)
        with torch.no_grad():
            outputs[attn] = model(ids, attention_mask=mask).logits
    assert (outputs["eager"][mask.bool()] - outputs["sdpa"][mask.bool()]).abs().max() < 1e-5


def test_hidden_states_attentions_and_tuple_outputs():
    model = LtgGptForCausalLM(tiny_config()).eval()
    ids = torch.randint(0, 100, (2, 7))
    out = model(ids, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (2, 7, 32)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 7, 7)
    assert torch.allclose(out.attentions[0].sum(-1), torch.ones(2, 4, 7), atol=1e-5)
    assert torch.all(out.attentions[0].triu(1) == 0)  # causal
    plain = model(ids)
    assert plain.hidden_states is None and plain.attentions is None
    as_tuple = model(ids, labels=ids, return_dict=False)
    assert torch.equal(as_tuple[1], plain.logits) and as_tuple[0].ndim == 0


def test_inputs_embeds_give_the_same_logits_as_input_ids():
    model = LtgGptForCausalLM(tiny_config()).eval()
    ids = torch.randint(0, 100, (2, 9))
    embeds = model.get_input_embeddings()(ids)
    assert torch.allclose(model(inputs_embeds=embeds).logits, model(ids).logits, atol=1e-6)


def test_logits_to_keep_returns_only_the_last_positions():
    model = LtgGptForCausalLM(tiny_config()).eval()
    ids = torch.randint(0, 100, (2, 9))
    assert torch.allclose(model(ids, logits_to_keep=1).logits, model(ids).logits[:, -1:], atol=1e-6)


def test_cache_is_used_even_when_use_cache_is_false():
    from transformers import DynamicCache

    model = LtgGptForCausalLM(tiny_config()).eval()
    ids = torch.randint(0, 100, (1, 8))
    cache = DynamicCache(config=model.config)
    model(ids[:, :5], past_key_values=cache, use_cache=True)
    step = model(ids[:, 5:], past_key_values=cache, use_cache=False).logits
    assert torch.allclose(step, model(ids).logits[:, 5:], atol=1e-5)


def test_cache_is_taken_under_its_transformers_5_24_name_too():
    # transformers >= 5.24 generate() passes the KV cache as `cache`, earlier versions and peft as past_key_values
    from transformers import DynamicCache

    model = LtgGptForCausalLM(tiny_config()).eval()
    ids = torch.randint(0, 100, (1, 8))
    cache = DynamicCache(config=model.config)
    model(ids[:, :5], cache=cache, use_cache=True)
    assert cache.get_seq_length() == 5
    step = model(ids[:, 5:], cache=cache, use_cache=True).logits
    assert torch.allclose(step, model(ids).logits[:, 5:], atol=1e-5)
    with pytest.raises(ValueError, match="two different KV caches"):
        model(ids[:, 5:], cache=cache, past_key_values=DynamicCache(config=model.config))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = LtgGptForCausalLM(tiny_config()).train()
    ids = torch.randint(0, 100, (2, 12))

    def grads():
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.gradient_checkpointing_enable()
    checkpointed = grads()
    assert model.transformer.h[0].gradient_checkpointing
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name


def test_sequence_classification_pools_the_last_real_token_with_left_or_right_padding():
    torch.manual_seed(0)
    model = LtgGptForSequenceClassification(tiny_config(num_labels=3, pad_token_id=100)).eval()
    seq = torch.randint(0, 100, (5,))
    alone = model(seq[None]).logits
    right = torch.cat([seq, torch.full((3,), 100)])[None]
    left = torch.cat([torch.full((3,), 100), seq])[None]
    mask_r = torch.tensor([[1] * 5 + [0] * 3])
    mask_l = torch.tensor([[0] * 3 + [1] * 5])
    pos_l = (mask_l.cumsum(-1) - 1).clamp(min=0)
    assert torch.allclose(model(right, attention_mask=mask_r).logits, alone, atol=1e-5)
    assert torch.allclose(model(left, attention_mask=mask_l, position_ids=pos_l).logits, alone, atol=1e-5)
    assert torch.allclose(model(right).logits, alone, atol=1e-5)  # from pad_token_id alone


@pytest.mark.parametrize("labels,problem", [
    (torch.tensor([0, 2]), "single_label_classification"),
    (torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), "multi_label_classification"),
])
def test_sequence_classification_problem_types(labels, problem):
    model = LtgGptForSequenceClassification(tiny_config(num_labels=3))
    out = model(torch.randint(0, 100, (2, 6)), attention_mask=torch.ones(2, 6, dtype=torch.long), labels=labels)
    assert model.config.problem_type == problem and out.loss.ndim == 0 and out.logits.shape == (2, 3)
    out.loss.backward()


def test_sequence_regression_with_one_label():
    model = LtgGptForSequenceClassification(tiny_config(num_labels=1))
    out = model(torch.randint(0, 100, (2, 6)), attention_mask=torch.ones(2, 6, dtype=torch.long),
                labels=torch.tensor([0.5, -1.0]))
    assert model.config.problem_type == "regression" and out.logits.shape == (2, 1)
    expected = torch.nn.functional.mse_loss(out.logits.squeeze(-1), torch.tensor([0.5, -1.0]))
    assert torch.allclose(out.loss, expected)


def test_token_classification_loss_ignores_minus_100():
    model = LtgGptForTokenClassification(tiny_config(num_labels=4)).eval()
    ids = torch.randint(0, 100, (2, 6))
    labels = torch.randint(0, 4, (2, 6))
    labels[:, :2] = -100
    out = model(ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[:, 2:].reshape(-1, 4), labels[:, 2:].reshape(-1))
    assert out.logits.shape == (2, 6, 4) and torch.allclose(out.loss, expected, atol=1e-6)


# ---- bad input gets a clear error -------------------------------------------------------------

def test_input_longer_than_max_positions_names_the_limit():
    model = LtgGptForCausalLM(tiny_config())
    with pytest.raises(ValueError, match="needs 40 positions .* max_position_embeddings=32"):
        model(torch.randint(0, 100, (1, 40)))


def test_generation_past_max_positions_names_the_limit():
    model = LtgGptForCausalLM(tiny_config()).eval()
    with pytest.raises(ValueError, match="max_position_embeddings=32"):
        model.generate(torch.randint(0, 100, (1, 30)), max_new_tokens=10, min_new_tokens=10, do_sample=False)


@pytest.mark.parametrize("bad_id", [101, 5000, -1])
def test_token_ids_outside_the_vocabulary_are_rejected(bad_id):
    model = LtgGptForCausalLM(tiny_config())
    ids = torch.randint(0, 100, (1, 5))
    ids[0, 2] = bad_id
    with pytest.raises(ValueError, match=rf"token id {bad_id}, outside the vocabulary \[0, 101\)"):
        model(ids)


def test_input_ids_and_inputs_embeds_together_are_rejected():
    model = LtgGptForCausalLM(tiny_config())
    ids = torch.randint(0, 100, (1, 5))
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds .*both"):
        model(ids, inputs_embeds=model.get_input_embeddings()(ids))
    with pytest.raises(ValueError, match="neither"):
        model()


def test_attention_mask_of_the_wrong_shape_is_rejected_with_both_shapes():
    model = LtgGptForCausalLM(tiny_config())
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 4\) but the input needs \(1, 5\)"):
        model(torch.randint(0, 100, (1, 5)), attention_mask=torch.ones(1, 4, dtype=torch.long))


def test_sequence_classification_of_a_batch_without_pad_token_id_is_rejected():
    model = LtgGptForSequenceClassification(tiny_config(num_labels=2, pad_token_id=None))
    with pytest.raises(ValueError, match="batch of 2 .* config.pad_token_id"):
        model(torch.randint(0, 100, (2, 5)))


def test_converter_rejects_a_file_of_the_wrong_format(tmp_path, capsys):
    (tmp_path / "junk.safetensors").write_bytes(b"this is not a safetensors file")
    assert main(["convert", "--from", "hf-gpt2", str(tmp_path / "junk.safetensors"), str(tmp_path / "out")]) == 2
    assert "is not a readable safetensors file" in capsys.readouterr().err
    torch.save({"tok_emb.weight": torch.zeros(4, 4)}, tmp_path / "scratch.pth")
    assert main(["convert", "--from", "hf-gpt2", str(tmp_path / "scratch.pth"), str(tmp_path / "out")]) == 2
    assert "not a Hugging Face gpt2 checkpoint: it has no 'wte.weight'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_converter_names_the_tensor_and_both_shapes_when_the_config_does_not_match(tmp_path, capsys):
    from gpt_utils import reference_gpt2

    _, folder = reference_gpt2(tmp_path)
    (tmp_path / "wrong.json").write_text('{"n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 99, "n_positions": 64}')
    code = main(["convert", "--from", "hf-gpt2", "--config", str(tmp_path / "wrong.json"), folder, str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "'wpe.weight' has shape (128, 32) but the config expects (64, 32)" in err
    assert not (tmp_path / "out").exists()


def test_checkpoint_folder_missing_its_weights_is_reported(tmp_path, capsys):
    LtgGptForCausalLM(tiny_config()).save_pretrained(tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="has no weights: expected model.safetensors"):
        load_state_dict(tmp_path / "ckpt")
    assert main(["convert", "--to", "hf-gpt2", str(tmp_path / "ckpt"), str(tmp_path / "out")]) == 2
    assert "has no weights" in capsys.readouterr().err
    with pytest.raises(OSError, match="model.safetensors"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", trust_remote_code=True)


def test_pickles_are_loaded_without_executing_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    (tmp_path / "evil.bin").write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(ValueError, match="weights_only=True"):
        load_state_dict(tmp_path / "evil.bin")


def test_trainer_scales_sequence_classification_loss_for_gradient_accumulation(tmp_path):
    # The classification loss is a per-example mean: the Trainer must not hand it
    # num_items_in_batch, and must divide it by the accumulation steps itself.
    from transformers import Trainer, TrainingArguments

    model = LtgGptForSequenceClassification(tiny_config(num_labels=2))
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], gradient_accumulation_steps=4)
    assert Trainer(model=model, args=args).model_accepts_loss_kwargs is False
