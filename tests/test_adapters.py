"""LoRA, prompt tuning, p-tuning and prefix tuning on the GPT causal LM through the stock peft API."""

import argparse
import json

import pytest
import torch
from adapter_utils import NUM_VIRTUAL_TOKENS, perturb_adapter_, prompts, saved_base
from helpers import run_without_hf_ltg
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, TaskType, get_peft_model

from hf_ltg import LtgGptForCausalLM
from hf_ltg.adapters import (
    adapter_config,
    add_adapter_arguments,
    apply_adapter,
    lora_config,
    save_adapter_or_merged,
    trainable_parameters,
)

METHODS = ["lora", "prompt", "ptuning", "prefix"]
HIDDEN, LAYERS = 32, 2


def expected_trainable(method: str) -> int:
    """Trainable parameters of each method on the tiny model, counted from the method's definition."""
    n = NUM_VIRTUAL_TOKENS
    if method == "lora":  # rank 8 A (8 x in) and B (out x 8) on each qkv_proj (32 -> 96)
        return LAYERS * 8 * (HIDDEN + 3 * HIDDEN)
    if method == "prompt":  # one embedding per virtual token
        return n * HIDDEN
    if method == "ptuning":  # embeddings + MLP encoder D -> D -> D -> D with biases
        return n * HIDDEN + 3 * (HIDDEN * HIDDEN + HIDDEN)
    return n * LAYERS * 2 * HIDDEN  # prefix: a key and a value per virtual token and layer


def options(method):
    return {} if method == "lora" else {"num_virtual_tokens": NUM_VIRTUAL_TOKENS}


@pytest.fixture
def base_folder(tmp_path):
    return tmp_path / "base"


def adapted(method, base_folder, seed=0):
    base = saved_base(LtgGptForCausalLM, base_folder)
    model = get_peft_model(base, adapter_config(base, method, **options(method)))
    return perturb_adapter_(model, seed=seed).eval()


@pytest.mark.parametrize("method", METHODS)
def test_forward_and_backward_reach_only_the_adapter(method, base_folder):
    model = adapted(method, base_folder)
    model.train()
    input_ids, attention_mask = prompts()

    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids)
    output.loss.backward()

    trainable, total = trainable_parameters(model)
    print(f"{method}: trainable {trainable} of {total}")
    assert trainable == expected_trainable(method)
    assert torch.isfinite(output.loss)
    expected_length = input_ids.shape[1] + (NUM_VIRTUAL_TOKENS if method in ("prompt", "ptuning") else 0)
    with torch.no_grad():  # training with labels returns logits=None (LtgGptForCausalLM's chunked loss)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert logits.shape == (2, expected_length, 99)
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


@pytest.mark.parametrize("method", METHODS)
def test_adapter_changes_the_output(method, base_folder):
    model = adapted(method, base_folder)
    input_ids, attention_mask = prompts()
    with torch.no_grad():
        adapted_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -6:]
        with model.disable_adapter():
            base_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert (adapted_logits - base_logits).abs().max() > 1e-2


@pytest.mark.parametrize("method", METHODS)
def test_generate_with_cache_matches_without_cache(method, base_folder):
    model = adapted(method, base_folder)
    input_ids, attention_mask = prompts()
    settings = dict(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=8, do_sample=False,
                    pad_token_id=98)

    cached = model.generate(**settings, use_cache=True)
    uncached = model.generate(**settings, use_cache=False)

    assert cached.shape == (2, 6 + 8)
    assert torch.equal(cached, uncached)
    with model.disable_adapter():
        plain = model.generate(**settings)
    assert not torch.equal(cached, plain), "the adapter should change the greedy tokens"


@pytest.mark.parametrize("method", METHODS)
def test_saved_adapter_reloads_with_identical_logits(method, base_folder, tmp_path):
    model = adapted(method, base_folder)
    input_ids, attention_mask = prompts()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
    model.save_pretrained(tmp_path / "adapter")

    fresh_base = LtgGptForCausalLM.from_pretrained(base_folder)
    reloaded = PeftModel.from_pretrained(fresh_base, tmp_path / "adapter").eval()
    auto = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter", trust_remote_code=True).eval()

    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=input_ids, attention_mask=attention_mask).logits, expected)
        assert torch.equal(auto(input_ids=input_ids, attention_mask=attention_mask).logits, expected)
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]


def test_lora_without_target_modules_uses_the_registered_default(base_folder):
    base = saved_base(LtgGptForCausalLM, base_folder)
    model = get_peft_model(base, LoraConfig(task_type=TaskType.CAUSAL_LM))
    adapted_layers = {name.split(".lora_A")[0] for name, _ in model.named_parameters() if "lora_A" in name}
    assert adapted_layers == {f"base_model.model.transformer.h.{i}.attn.qkv_proj" for i in range(LAYERS)}


def test_lora_all_linear_adapts_every_block_layer_but_not_lm_head(base_folder):
    base = saved_base(LtgGptForCausalLM, base_folder)
    model = get_peft_model(base, LoraConfig(task_type=TaskType.CAUSAL_LM, target_modules="all-linear"))
    adapted_layers = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in model.named_parameters()
                      if "lora_A" in name}
    assert adapted_layers == {"qkv_proj", "out_proj", "fc_in", "fc_out"}
    assert not any("lm_head.lora" in name for name, _ in model.named_parameters())


def test_unknown_lora_target_is_an_error_listing_the_linear_layers(base_folder):
    base = saved_base(LtgGptForCausalLM, base_folder)
    with pytest.raises(ValueError, match="'c_attn' is neither a linear nor an embedding layer") as error:
        lora_config(base, targets=["qkv_proj", "c_attn"])
    for name in ("fc_in", "fc_out", "out_proj", "qkv_proj", "lm_head"):
        assert name in str(error.value)


def test_lora_merge_and_unload_matches_the_adapter_and_loads_without_hf_ltg(base_folder, tmp_path):
    model = adapted("lora", base_folder)
    input_ids, attention_mask = prompts()
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
        merged = model.merge_and_unload()
        merged_logits = merged(input_ids=input_ids, attention_mask=attention_mask).logits
    print(f"merged vs adapter max |diff| {(merged_logits - expected).abs().max().item():.2e}")
    assert type(merged) is LtgGptForCausalLM
    torch.testing.assert_close(merged_logits, expected, atol=1e-5, rtol=0)

    merged.save_pretrained(tmp_path / "merged")
    code = f"""
    import json, torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(CKPT, trust_remote_code=True).eval()
    assert "hf_ltg" not in type(model).__module__
    with torch.no_grad():
        logits = model(input_ids=torch.tensor({input_ids.tolist()})).logits
    print(json.dumps(logits.tolist()))
    """
    isolated = torch.tensor(json.loads(run_without_hf_ltg(code, tmp_path / "merged", tmp_path).splitlines()[-1]))
    torch.testing.assert_close(isolated, expected, atol=1e-5, rtol=0)


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_adapter_arguments(parser)
    return parser.parse_args(list(argv))


def test_apply_adapter_without_adapter_option_returns_the_model(base_folder):
    base = saved_base(LtgGptForCausalLM, base_folder)
    assert apply_adapter(base, parse()) is base


@pytest.mark.parametrize("argv, method", [
    (["--adapter", "lora", "--lora-r", "4", "--lora-alpha", "8", "--lora-targets", "qkv_proj", "fc_in"], "LORA"),
    (["--adapter", "prompt", "--num-virtual-tokens", "5"], "PROMPT_TUNING"),
    (["--adapter", "ptuning", "--num-virtual-tokens", "5"], "P_TUNING"),
    (["--adapter", "prefix", "--num-virtual-tokens", "5"], "PREFIX_TUNING"),
])
def test_apply_adapter_follows_the_command_line_options(argv, method, base_folder, tmp_path, capsys):
    model = apply_adapter(saved_base(LtgGptForCausalLM, base_folder), parse(*argv))

    config = model.peft_config["default"]
    assert config.peft_type.value == method
    if method == "LORA":
        assert (config.r, config.lora_alpha, set(config.target_modules)) == (4, 8, {"qkv_proj", "fc_in"})
    else:
        assert config.num_virtual_tokens == 5
    assert "trainable params" in capsys.readouterr().out

    out = save_adapter_or_merged(model, tmp_path / "out")
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()


def test_save_merged_writes_a_full_checkpoint_with_the_merged_weights(base_folder, tmp_path):
    model = perturb_adapter_(apply_adapter(saved_base(LtgGptForCausalLM, base_folder),
                                           parse("--adapter", "lora", "--merge"))).eval()
    input_ids, _ = prompts()
    with torch.no_grad():
        expected = model(input_ids=input_ids).logits

    out = save_adapter_or_merged(model, tmp_path / "merged", merge=True)

    assert not (out / "adapter_config.json").exists()
    reloaded = LtgGptForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=input_ids).logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("argv, message", [
    (["--adapter", "prefix", "--merge"], "--merge folds LoRA weights"),
    (["--merge"], "--merge folds LoRA weights"),
    (["--adapter", "lora", "--prompt-init-text", "hello"], "--prompt-init-text applies to --adapter prompt"),
    (["--adapter", "prompt", "--lora-targets", "fc_in"], "--lora-targets applies to --adapter lora"),
    (["--adapter", "prompt", "--num-virtual-tokens", "64"], "max_position_embeddings=64"),
    (["--adapter", "lora", "--lora-r", "0"], "rank r must be a positive integer"),
])
def test_inconsistent_adapter_options_are_rejected(argv, message, base_folder):
    base = saved_base(LtgGptForCausalLM, base_folder)
    with pytest.raises(ValueError, match=message):
        apply_adapter(base, parse(*argv))


def test_prompt_tuning_text_initialisation_starts_from_the_text_embeddings(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path / "tokenizer")
    base = saved_base(LtgGptForCausalLM, tmp_path / "base", vocab_size=len(tiny_tokenizer))
    text = "The cat sat"
    ids = tiny_tokenizer(text)["input_ids"]

    model = apply_adapter(base, parse("--adapter", "prompt", "--num-virtual-tokens", "7",
                                      "--prompt-init-text", text), tokenizer=str(tmp_path / "tokenizer"))

    prompt_embeddings = model.prompt_encoder["default"].embedding.weight
    expected = base.transformer.wte.weight[(ids * 7)[:7]]
    assert torch.equal(prompt_embeddings, expected)
    assert model.peft_config["default"].prompt_tuning_init.value == "TEXT"


def test_prompt_tuning_text_initialisation_needs_a_tokenizer_folder(tmp_path, tiny_tokenizer):
    base = saved_base(LtgGptForCausalLM, tmp_path / "base", vocab_size=len(tiny_tokenizer))
    with pytest.raises(ValueError, match="tokenizer as a local folder"):
        apply_adapter(base, parse("--adapter", "prompt", "--prompt-init-text", "The cat"), tokenizer=tiny_tokenizer)
