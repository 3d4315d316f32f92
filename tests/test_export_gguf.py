"""`hf-ltg export --gguf`: a llama.cpp `gpt2` file whose weights, run through GPT-2 as llama.cpp
computes it (a reference written here from the architecture, on the tensors read back with the
gguf reader), give torch's greedy tokens."""

import json

import numpy as np
import pytest
import torch
from gpt_utils import randomize_
from helpers import REPO
from hub_utils import save_tiny_gpt, save_tiny_ltg_bert

from hf_ltg.checkpoint import save_checkpoint
from hf_ltg.cli import main
from hf_ltg.hub.export_gguf import export_gguf

gguf = pytest.importorskip("gguf")

STEPS = 8
# llama.cpp's gpt2 tensor names -> LtgGptForCausalLM's (blk.N.* for every block N)
GLOBAL_NAMES = {"token_embd.weight": "transformer.wte.weight", "position_embd.weight": "transformer.wpe.weight",
                "output_norm.weight": "transformer.ln_f.weight", "output_norm.bias": "transformer.ln_f.bias",
                "output.weight": "lm_head.weight"}
BLOCK_NAMES = {"attn_norm": "ln_1", "attn_qkv": "attn.qkv_proj", "attn_output": "attn.out_proj", "ffn_norm": "ln_2",
               "ffn_up": "mlp.fc_in", "ffn_down": "mlp.fc_out"}


def read_gguf(path):
    """(metadata {key: value}, tensors {name: float32 array in [out, in] order}) of a GGUF file."""
    reader = gguf.GGUFReader(str(path))
    metadata = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    tensors = {}
    for tensor in reader.tensors:
        if tensor.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            tensors[tensor.name] = np.array(tensor.data, dtype=np.float32)
        else:
            tensors[tensor.name] = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        tensors[tensor.name] = tensors[tensor.name].reshape([int(n) for n in reversed(tensor.shape)])
    return metadata, tensors


def layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + eps) * weight + bias


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def gpt2_next_token_logits(metadata, t, ids):
    """GPT-2 on one sequence, from the GGUF hyper-parameters and tensors (float64)."""
    t = {k: v.astype(np.float64) for k, v in t.items()}
    eps, heads = metadata["gpt2.attention.layer_norm_epsilon"], metadata["gpt2.attention.head_count"]
    x = t["token_embd.weight"][ids] + t["position_embd.weight"][: len(ids)]  # (T, D)
    length, width = x.shape
    head_dim = width // heads
    causal = np.triu(np.full((length, length), -np.inf), k=1)
    for i in range(metadata["gpt2.block_count"]):
        def p(name, i=i):
            return t[f"blk.{i}.{name}"]
        h = layer_norm(x, p("attn_norm.weight"), p("attn_norm.bias"), eps)
        q, k, v = np.split(h @ p("attn_qkv.weight").T + p("attn_qkv.bias"), 3, axis=-1)
        q, k, v = (a.reshape(length, heads, head_dim).transpose(1, 0, 2) for a in (q, k, v))  # (H, T, hd)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(head_dim) + causal
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attended = (probs @ v).transpose(1, 0, 2).reshape(length, width)
        x = x + attended @ p("attn_output.weight").T + p("attn_output.bias")
        h = layer_norm(x, p("ffn_norm.weight"), p("ffn_norm.bias"), eps)
        x = x + gelu_tanh(h @ p("ffn_up.weight").T + p("ffn_up.bias")) @ p("ffn_down.weight").T + p("ffn_down.bias")
    x = layer_norm(x, t["output_norm.weight"], t["output_norm.bias"], eps)
    head = t.get("output.weight", t["token_embd.weight"])  # no output.weight: tied, as llama.cpp reads it
    return x[-1] @ head.T


def reference_greedy(metadata, tensors, ids, steps=STEPS):
    ids = list(ids)
    for _ in range(steps):
        ids.append(int(np.argmax(gpt2_next_token_logits(metadata, tensors, ids))))
    return ids


def torch_state_from_gguf(tensors, num_layers):
    state = {GLOBAL_NAMES[name]: torch.from_numpy(v) for name, v in tensors.items() if name in GLOBAL_NAMES}
    for i in range(num_layers):
        for gguf_name, ours in BLOCK_NAMES.items():
            for kind in ("weight", "bias"):
                state[f"transformer.h.{i}.{ours}.{kind}"] = torch.from_numpy(tensors[f"blk.{i}.{gguf_name}.{kind}"])
    return state


def save_random_gpt(folder, tokenizer, **overrides):
    model = randomize_(save_tiny_gpt(folder, tokenizer, **overrides), seed=2)
    save_checkpoint(model, folder, tokenizer=tokenizer, overwrite=True)
    return model


@pytest.mark.parametrize("weight_type, overrides", [
    ("f32", {}), ("f16", {}), ("q8_0", {}), ("q4_0", {}), ("q4_1", {}),
    ("f32", {"tie_word_embeddings": False, "qkv_bias": False}),
], ids=["f32", "f16", "q8_0", "q4_0", "q4_1", "f32-untied-no-qkv-bias"])
def test_gguf_weights_run_as_gpt2_give_torch_greedy_tokens(tmp_path, tiny_tokenizer, weight_type, overrides):
    model = save_random_gpt(tmp_path / "ckpt", tiny_tokenizer, **overrides)

    assert main(["export", str(tmp_path / "ckpt"), "--gguf", str(tmp_path / "m.gguf"), "--gguf-type", weight_type]) == 0

    metadata, tensors = read_gguf(tmp_path / "m.gguf")
    assert metadata["general.architecture"] == "gpt2"
    assert ("output.weight" in tensors) == (not model.config.tie_word_embeddings)
    # the model whose weights the file holds (rounded to f16 or q8_0): torch's tokens for the file
    state = torch_state_from_gguf(tensors, model.config.num_hidden_layers)
    for name, value in model.state_dict().items():
        if name in state:
            error = (state[name] - value).abs().max().item()
            bound = {"f32": 0, "f16": 1e-3, "q8_0": 1 / 127, "q4_0": 1 / 15, "q4_1": 1 / 15}[weight_type]
            assert error <= bound * max(value.abs().max().item(), 1)
    if not model.config.qkv_bias:
        assert all(not state.pop(f"transformer.h.{i}.attn.qkv_proj.bias").any() for i in range(2))
    stored = type(model)(model.config).eval()
    stored.load_state_dict(state, strict=False)
    stored.tie_weights()

    prompt = tiny_tokenizer("The quick brown fox", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want = stored.generate(prompt, max_new_tokens=STEPS, do_sample=False, pad_token_id=model.config.pad_token_id)
    got = reference_greedy(metadata, tensors, prompt[0].tolist())
    eos = model.config.eos_token_id
    want = want[0].tolist()
    stop = want.index(eos, prompt.shape[1]) + 1 if eos in want[prompt.shape[1]:] else len(want)
    assert got[:stop] == want[:stop]
    if weight_type == "f32":
        with torch.no_grad():
            logits = model(prompt).logits[0, -1].double().numpy()
        np.testing.assert_allclose(gpt2_next_token_logits(metadata, tensors, prompt[0].tolist()), logits, atol=1e-4)


@pytest.mark.parametrize("scheme, weight_type, exact", [
    ("int4-weight-only", "q4_1", True), ("int8-weight-only", "q8_0", True), ("absmax", "q8_0", True),
    ("int4-weight-only", "f16", False), ("zeropoint", "q8_0", False),
])
def test_a_quantized_checkpoint_exports_its_own_numbers_where_the_type_holds_them(
        tmp_path, tiny_tokenizer, scheme, weight_type, exact):
    """`hf-ltg quantize` output: int4-weight-only is Q4_1's block formula and absmax / int8-weight-only
    are Q8_0 with the row scale in every block, so the file holds the checkpoint's weights (f16 scales);
    other pairs hold the dequantized weights, rounded to the type."""
    from hf_ltg.quantization import quantize_checkpoint

    save_random_gpt(tmp_path / "ckpt", tiny_tokenizer)
    quantize_checkpoint(tmp_path / "ckpt", tmp_path / "q", scheme, include_lm_head=True)
    from hf_ltg.gpt import LtgGptForCausalLM

    quantized = LtgGptForCausalLM.from_pretrained(tmp_path / "q").eval()

    assert main(["export", str(tmp_path / "q"), "--gguf", str(tmp_path / "m.gguf"), "--gguf-type", weight_type]) == 0

    metadata, tensors = read_gguf(tmp_path / "m.gguf")
    kinds = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors}
    assert kinds["blk.0.ffn_up.weight"] == kinds["output.weight"] == weight_type.upper()
    layer = quantized.transformer.h[0].mlp.fc_in
    error = np.abs(tensors["blk.0.ffn_up.weight"] - layer.dequantized_weight().numpy()).max()
    scale = layer.weight_scale.abs().max().item()  # one quantization step (int8: of the largest row)
    if exact:  # only the f16 rounding of the scales (and minimums)
        assert error <= 1e-3 * np.abs(tensors["blk.0.ffn_up.weight"]).max()
    else:
        assert 0 < error <= {"f16": 1e-3, "q8_0": 1 / 127}[weight_type] * np.abs(layer.dequantized_weight().numpy()).max()
    assert scale > 0
    prompt = tiny_tokenizer("The quick brown fox", return_tensors="pt")["input_ids"]
    if exact:  # the file's GPT-2 decodes as the quantized checkpoint's dequantized weights do
        with torch.no_grad():
            logits = quantized(prompt).logits[0, -1].double().numpy()
        np.testing.assert_allclose(gpt2_next_token_logits(metadata, tensors, prompt[0].tolist()), logits,
                                   atol=0.05 * np.abs(logits).max())


def test_gguf_metadata_and_tokenizer_are_llama_cpp_gpt2(tmp_path, tiny_tokenizer):
    model = save_random_gpt(tmp_path / "ckpt", tiny_tokenizer)

    export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf", weight_type="q8_0")

    metadata, tensors = read_gguf(tmp_path / "m.gguf")
    config = model.config
    assert metadata["gpt2.context_length"] == config.max_position_embeddings
    assert metadata["gpt2.embedding_length"] == config.hidden_size
    assert metadata["gpt2.feed_forward_length"] == config.intermediate_size
    assert metadata["gpt2.block_count"] == config.num_hidden_layers
    assert metadata["gpt2.attention.head_count"] == config.num_attention_heads
    assert metadata["general.file_type"] == gguf.LlamaFileType.MOSTLY_Q8_0
    assert metadata["tokenizer.ggml.model"] == "gpt2" and metadata["tokenizer.ggml.pre"] == "gpt-2"
    tokens = metadata["tokenizer.ggml.tokens"]
    assert tokens == tiny_tokenizer.convert_ids_to_tokens(list(range(config.vocab_size)))
    saved = json.loads((tmp_path / "ckpt" / "tokenizer.json").read_text())["model"]["merges"]
    assert metadata["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in saved]
    eos = config.eos_token_id
    assert metadata["tokenizer.ggml.token_type"][eos] == gguf.TokenType.CONTROL
    assert metadata["tokenizer.ggml.eos_token_id"] == eos and metadata["tokenizer.ggml.bos_token_id"] == eos
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds["blk.0.attn_qkv.weight"] == gguf.GGMLQuantizationType.Q8_0 and config.hidden_size % block == 0
    assert kinds["blk.0.attn_qkv.bias"] == kinds["position_embd.weight"] == gguf.GGMLQuantizationType.F32


def test_gguf_export_of_ltg_bert_is_refused_naming_the_supported_head(tmp_path, capsys):
    save_tiny_ltg_bert(tmp_path / "ckpt")

    assert main(["export", str(tmp_path / "ckpt"), "--gguf", str(tmp_path / "m.gguf")]) == 2

    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "LtgGptForCausalLM" in error and "LtgBertForMaskedLM" in error
    assert not (tmp_path / "m.gguf").exists()


def test_gguf_export_of_a_classifier_is_refused(tmp_path, tiny_tokenizer, capsys):
    save_tiny_gpt(tmp_path / "ckpt", tiny_tokenizer, head="sequence-classification")

    assert main(["export", str(tmp_path / "ckpt"), "--gguf", str(tmp_path / "m.gguf")]) == 2

    error = capsys.readouterr().err.strip()
    assert "LtgGptForSequenceClassification" in error and "LtgGptForCausalLM" in error and "--onnx" in error


@pytest.mark.parametrize("argument, expected", [
    (["--gguf-type", "q4_k"], "'q4_k'"),
    (["--onnx", "elsewhere"], "exactly one output"),
])
def test_gguf_export_refuses_bad_arguments_before_any_work(tmp_path, tiny_tokenizer, capsys, argument, expected):
    save_tiny_gpt(tmp_path / "ckpt", tiny_tokenizer)

    assert main(["export", str(tmp_path / "ckpt"), "--gguf", str(tmp_path / "m.gguf"), *argument]) == 2

    error = capsys.readouterr().err.strip()
    assert expected in error and len(error.splitlines()) == 1
    assert not (tmp_path / "m.gguf").exists()


def test_gguf_export_refuses_an_activation_llama_cpp_does_not_compute(tmp_path, tiny_tokenizer):
    save_tiny_gpt(tmp_path / "ckpt", tiny_tokenizer, activation="relu")

    with pytest.raises(ValueError, match="'relu'.*tanh-approximated GELU"):
        export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf")


def test_gguf_export_replaces_only_a_previous_gguf_file(tmp_path, tiny_tokenizer):
    save_tiny_gpt(tmp_path / "ckpt", tiny_tokenizer)
    (tmp_path / "notes.txt").write_text("mine")

    with pytest.raises(ValueError, match="not a GGUF file"):
        export_gguf(tmp_path / "ckpt", tmp_path / "notes.txt")
    export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf", weight_type="f32")
    assert main(["export", str(tmp_path / "ckpt"), "--gguf", str(tmp_path / "m.gguf")]) == 2  # no --overwrite
    assert main(["export", str(tmp_path / "ckpt"), "--gguf", str(tmp_path / "m.gguf"), "--overwrite"]) == 0
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("weight_type", ["f32", "q8_0"])
def test_llama_cpp_runs_the_exported_shipped_lm_with_torch_tokens_and_tokenization(tmp_path, weight_type):
    # llama-cpp-python builds from source (about 40 minutes on 2 cores), so it is not in the dev extra:
    # this test runs where it is installed, the gguf-reader tests above everywhere.
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = REPO / "checkpoints" / "ltg-gpt-lm"
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    path = tmp_path / f"lm-{weight_type}.gguf"
    export_gguf(folder, path, weight_type=weight_type)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=model.config.max_position_embeddings, verbose=False,
                          logits_all=True)

    for text in ["The quick brown fox jumps over the lazy dog.", "def add(a, b): return a + b  # ünïcode ☃ 123"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tokenizer(text)["input_ids"]
    prompt = tokenizer("The for statement", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=STEPS, do_sample=False,
                                  pad_token_id=model.config.pad_token_id)[0, prompt.shape[1]:].tolist()
        torch_logits = model(prompt).logits[0, -1].numpy()
    generated = []
    for token in llm.generate(prompt[0].tolist(), temp=0.0, top_k=1, reset=True):
        generated.append(token)
        if len(generated) == len(expected) or token == model.config.eos_token_id:
            break
    llm.reset()
    llm.eval(prompt[0].tolist())
    llama_logits = np.array(llm.scores[prompt.shape[1] - 1])
    assert generated == expected[:len(generated)]
    assert np.abs(llama_logits - torch_logits).max() < {"f32": 1e-3, "q8_0": 5e-2}[weight_type]
    del llm


@pytest.mark.parametrize("scheme, weight_type", [("int4-weight-only", "q4_1"), ("int8-weight-only", "q8_0")])
def test_llama_cpp_runs_a_weight_only_checkpoint_as_torch_runs_it(tmp_path, scheme, weight_type):
    """hf-ltg quantize, then export: llama.cpp decodes the quantized shipped LM to torch's greedy tokens."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from transformers import AutoModelForCausalLM

    from hf_ltg.quantization import quantize_checkpoint

    quantize_checkpoint(REPO / "checkpoints" / "ltg-gpt-lm", tmp_path / "q", scheme, include_lm_head=True)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "q").eval()
    export_gguf(tmp_path / "q", tmp_path / "q.gguf", weight_type=weight_type)
    llm = llama_cpp.Llama(model_path=str(tmp_path / "q.gguf"), n_ctx=model.config.max_position_embeddings,
                          verbose=False, logits_all=True)
    prompt = [5, 17, 99, 250, 31]
    with torch.no_grad():
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=STEPS, do_sample=False,
                                  pad_token_id=model.config.pad_token_id)[0, len(prompt):].tolist()
        torch_logits = model(torch.tensor([prompt])).logits[0, -1].numpy()
    generated = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        generated.append(token)
        if len(generated) == len(expected) or token == model.config.eos_token_id:
            break
    llm.reset()
    llm.eval(prompt)
    assert generated == expected[:len(generated)]
    # llama.cpp rounds the activations to 8 bits for these types, torch to bf16 for its kernels
    assert np.abs(np.array(llm.scores[len(prompt) - 1]) - torch_logits).max() < 0.1
    del llm
