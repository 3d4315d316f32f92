"""Third-party quantizers find the models' linear layers as they find GPT-2's and BERT's.

transformers' bitsandbytes route converts modules whose type is exactly `nn.Linear` (or GPT-2's
`Conv1D`): the GPT layers are plain `nn.Linear` modules, so 8-bit and 4-bit loading quantize every
linear layer but the head, as on GPT-2 with the same sizes, and QLoRA trains on them.
llm-compressor's sequential pipeline (GPTQ W4A16) rewrites the source of the models' forwards
before tracing: it wraps starred tuples into calls, so a starred assignment target cannot compile.
"""

import ast
import inspect
import textwrap

import pytest
import torch
from torch import nn

from hf_ltg import LtgBertConfig, LtgBertForMaskedLM, LtgGptConfig, LtgGptForCausalLM
from hf_ltg.gpt import kernels_ltg_gpt as kernels
from hf_ltg.ltg_bert import modeling_ltg_bert


def save_tiny_models(folder):
    """Tiny GPT-2, LTG GPT (same sizes) and LTG-BERT checkpoints under `folder` (64 wide: bitsandbytes'
    CPU 4-bit kernels quantize in blocks of 64)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=64, n_layer=2, n_head=4)).save_pretrained(
        folder / "gpt2")
    LtgGptForCausalLM(LtgGptConfig(vocab_size=64, max_position_embeddings=32, hidden_size=64, num_hidden_layers=2,
                                   num_attention_heads=4)).save_pretrained(folder / "gpt")
    LtgBertForMaskedLM(LtgBertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=32,
                                     position_bucket_size=8)).save_pretrained(folder / "bert")


def linear_layers(model):
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"]


def test_gpt_linear_layers_are_plain_nn_linear_modules():
    """What quantizers and adapters that match by exact type (bitsandbytes, peft's GLoRA) need."""
    model = LtgGptForCausalLM(LtgGptConfig(vocab_size=64, max_position_embeddings=16, hidden_size=16,
                                           num_hidden_layers=1, num_attention_heads=2))
    layers = {name: type(m) for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert set(layers) == {"transformer.h.0.attn.qkv_proj", "transformer.h.0.attn.out_proj",
                           "transformer.h.0.mlp.fc_in", "transformer.h.0.mlp.fc_out", "lm_head"}
    assert set(layers.values()) == {nn.Linear}


def test_adapter_layers_keep_the_fast_product_for_their_base_layer(monkeypatch):
    """peft wraps a layer and calls its `base_layer`: that product stays on the CPU fast path,
    the adapter's own forward (and its result) unchanged, and nothing stays on the layer."""
    peft = pytest.importorskip("peft")
    calls = []

    def spy(x, weight, bias, *args):
        calls.append(tuple(weight.shape))
        return torch.nn.functional.linear(x, weight, bias)

    monkeypatch.setattr(kernels, "_ONEDNN_LINEAR", spy)
    monkeypatch.setattr(kernels, "_PROBED", {("onednn_linear", torch.float32): True})
    torch.manual_seed(0)
    adapted = peft.get_peft_model(nn.Sequential(nn.Linear(8, 6)), peft.LoraConfig(target_modules=["0"], r=2,
                                                                                   init_lora_weights=False))
    layer = adapted.base_model.model[0]
    x = torch.randn(3, 8)
    with torch.no_grad():
        got = kernels.linear(layer, x)
        want = layer(x)
    assert calls == [(6, 8)]  # the base product only (the LoRA matrices are small, plain layers)
    torch.testing.assert_close(got, want)
    assert "forward" not in layer.base_layer.__dict__
    hook = layer.base_layer.register_forward_hook(lambda *args: None)
    with torch.no_grad():
        kernels.linear(layer, x)
    hook.remove()
    assert calls == [(6, 8)]  # a hooked base layer runs as it is


# ---------------------------------------------------------------------------------------------
# bitsandbytes (CPU backend)


def bnb_layer_types():
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (kept out of the dev extra, "
                              "see pyproject.toml; pip install bitsandbytes to run these)")
    return bnb.nn.Linear8bitLt, bnb.nn.Linear4bit


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_quantizer_models")
    save_tiny_models(folder)
    return folder


@pytest.mark.parametrize("scheme", ["8bit", "nf4", "fp4"])
def test_bitsandbytes_quantizes_every_gpt_linear_but_the_head_as_on_gpt2(scheme, tiny_folders):
    quantized_types = bnb_layer_types()
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, BitsAndBytesConfig

    config = (BitsAndBytesConfig(load_in_8bit=True) if scheme == "8bit" else
              BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=scheme, bnb_4bit_compute_dtype=torch.float32))
    counts = {}
    for name, auto in (("gpt2", AutoModelForCausalLM), ("gpt", AutoModelForCausalLM), ("bert", AutoModelForMaskedLM)):
        model = auto.from_pretrained(tiny_folders / name, quantization_config=config, device_map="cpu")
        quantized = [n for n, m in model.named_modules() if isinstance(m, quantized_types)]
        counts[name] = (len(quantized), len(linear_layers(model)))  # bitsandbytes layers are nn.Linear subclasses
        left = [n for n in linear_layers(model) if n not in quantized]
        assert left == (["lm_head.decoder"] if name == "bert" else ["lm_head"])  # the tied output layer
        if name == "gpt":
            with torch.no_grad():
                logits = model(torch.tensor([[1, 2, 3, 4]])).logits
            assert torch.isfinite(logits).all()
    assert counts["gpt"] == counts["gpt2"] == (8, 9)  # 2 layers x (q/k/v, out, fc_in, fc_out), no head
    assert counts["bert"] == (11, 12)


def test_qlora_step_trains_the_adapter_on_4bit_gpt_layers(tiny_folders):
    quantized_types = bnb_layer_types()
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(tiny_folders / "gpt", quantization_config=config, device_map="cpu")
    model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = peft.get_peft_model(model, peft.LoraConfig(task_type="CAUSAL_LM", r=4,
                                                       target_modules=["qkv_proj", "out_proj", "fc_in", "fc_out"]))
    bases = [m.base_layer for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    assert len(bases) == 8 and all(isinstance(b, quantized_types[1]) for b in bases)  # LoRA on 4-bit layers
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    model.train()
    losses = []
    for _ in range(2):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    changed = [n for n, p in model.named_parameters() if n in trainable and not torch.equal(p, trainable[n])]
    assert changed and all(torch.isfinite(torch.tensor(losses)))


# ---------------------------------------------------------------------------------------------
# llm-compressor


def starred_assignment_targets(function) -> list[int]:
    """Line numbers of assignments to starred targets (`a, *b = ...`) in `function`'s source: the
    pattern llm-compressor's AutoWrapper turns into an assignment to a call."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    lines = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AnnAssign, ast.AugAssign, ast.For)) else []
        if any(isinstance(part, ast.Starred) for target in targets for part in ast.walk(target)):
            lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("forward", [modeling_ltg_bert.LtgBertModel.forward, modeling_ltg_bert.LtgBertLayer.forward,
                                     modeling_ltg_bert.LtgBertAttention.forward])
def test_ltg_bert_forwards_have_no_starred_assignment_targets(forward):
    assert starred_assignment_targets(forward) == []


def test_ltg_bert_gptq_w4a16_through_llm_compressor_quantizes_every_linear_but_the_head(tmp_path):
    """llm-compressor's sequential pipeline traces LtgBertModel.forward (source rewriting, torch.fx)
    and GPTQ quantizes the encoder's linear layers (else: "cannot assign to function call")."""
    pytest.importorskip("llmcompressor", reason="llm-compressor is not installed (it pins its own transformers "
                                                "release; run this file in a venv with it)")
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=__import__("tokenizers").Tokenizer(
        __import__("tokenizers").models.WordLevel({f"t{i}": i for i in range(64)}, unk_token="t0")))
    torch.manual_seed(0)
    # 128 wide: W4A16 quantizes in groups of 128 inputs
    model = LtgBertForMaskedLM(LtgBertConfig(vocab_size=64, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=256, max_position_embeddings=32, position_bucket_size=8))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model.config._name_or_path = str(tmp_path)  # where llm-compressor looks for the model's files
    rows = torch.randint(5, 60, (8, 16), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": rows.tolist(), "attention_mask": torch.ones_like(rows).tolist()})
    oneshot(model=model, dataset=data, processor=tokenizer, max_seq_length=16, num_calibration_samples=8,
            recipe=GPTQModifier(targets="Linear", scheme="W4A16", ignore=["re:.*lm_head.*"]), pipeline="sequential")
    quantized = [n for n, m in model.named_modules() if hasattr(m, "weight_scale")]
    assert len(quantized) == 10 and not any(n.startswith("lm_head") for n in quantized)  # 2 x (q/k, v, out, 2 MLP)
