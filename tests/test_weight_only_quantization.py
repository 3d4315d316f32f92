"""Weight-only quantization (int8-weight-only, int4-weight-only): the formulas, the packed CPU kernels
against the plain dequantized product, their fallbacks, checkpoints with and without hf_ltg, the AVX2
setting, and perplexity on the shipped trained LM."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, run_without_hf_ltg
from safetensors import safe_open

from hf_ltg import LtgGptConfig, LtgGptForCausalLM
from hf_ltg.cli import main as cli_main
from hf_ltg.gpt import kernels_ltg_gpt as kernels
from hf_ltg.gpt import weight_only_ltg_gpt as weight_only
from hf_ltg.gpt.weight_only_ltg_gpt import LtgGptInt4Linear, LtgGptInt8WeightOnlyLinear
from hf_ltg.quantization import quantize_model

LAYERS = {"int8-weight-only": LtgGptInt8WeightOnlyLinear, "int4-weight-only": LtgGptInt4Linear}
KERNEL_NAMES = {"int8-weight-only": "_INT8PACK", "int4-weight-only": "_INT4PACK"}
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def matrix(rows=96, columns=128, seed=0):
    w = torch.randn(rows, columns, generator=torch.Generator().manual_seed(seed)) * 0.02
    w[5, :40] = 0.0  # a constant group (and, for int4, groups of one value)
    w[9] *= 30  # a row with a large range
    return w


def reference_int4(w, group=32):
    """Round-to-nearest between each group's min and max, 16 levels (llama.cpp's Q4_1), written here."""
    rows, columns = w.shape
    g = w.reshape(rows, columns // group, group)
    low, high = g.min(-1, keepdim=True).values, g.max(-1, keepdim=True).values
    step = (high - low) / 15
    q = torch.where(step > 0, torch.round((g - low) / torch.where(step > 0, step, 1)), 0).clamp(0, 15)
    return (q * step + low).reshape(rows, columns), step.squeeze(-1)


def reference_int8(w):
    """absmax per row with a bfloat16 scale, written here."""
    scale = (w.abs().amax(1) / 127).bfloat16().float()
    scale = torch.where(scale > 0, scale, 1)
    return torch.round(w / scale[:, None]).clamp(-127, 127) * scale[:, None], scale


def tiny_model(seed=0, **overrides):
    torch.manual_seed(seed)
    config = LtgGptConfig(**{**dict(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    max_position_embeddings=64, bos_token_id=0, eos_token_id=0), **overrides})
    return LtgGptForCausalLM(config).eval()


@pytest.fixture
def fresh_probes(monkeypatch):
    monkeypatch.setattr(kernels, "_PROBED", {})


def count_calls(monkeypatch, scheme):
    """Wrap the packed kernel of `scheme` so that its calls are counted."""
    name = KERNEL_NAMES[scheme]
    kernel, calls = getattr(weight_only, name), []

    def counted(*args):
        calls.append(args[0].shape[0])
        return kernel(*args)

    monkeypatch.setattr(weight_only, name, counted)
    return calls


# --- the formulas ------------------------------------------------------------------------------

def test_int4_is_round_to_nearest_per_group_of_32_within_half_a_step():
    w = matrix()
    layer = LtgGptInt4Linear.from_linear(_linear_with(w))
    want, step = reference_int4(w)
    got = layer.dequantized_weight()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert ((got - w).abs() <= step.repeat_interleave(32, 1) / 2 + 1e-7).all()
    assert layer.weight.dtype == torch.uint8 and layer.weight.shape == (96, 64)
    assert layer.weight_scale.shape == layer.weight_min.shape == (96, 4)
    assert (got[5, :32] == 0).all()  # a constant group is exact


def test_int8_weight_only_is_absmax_per_row_with_a_bfloat16_scale():
    w = matrix()
    layer = LtgGptInt8WeightOnlyLinear.from_linear(_linear_with(w))
    want, scale = reference_int8(w)
    torch.testing.assert_close(layer.dequantized_weight(), want, rtol=0, atol=0)
    assert torch.equal(layer.weight_scale.bfloat16().float(), layer.weight_scale)
    assert layer.weight.abs().max() == 127 and layer.weight.dtype == torch.int8


def _linear_with(weight, bias=True):
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias:
            linear.bias.copy_(torch.linspace(-0.1, 0.1, weight.shape[0]))
    return linear


# --- the packed kernels against the plain product ------------------------------------------------

@pytest.mark.parametrize("scheme", list(LAYERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 5, 32, 40])
def test_product_matches_the_dequantized_linear(scheme, dtype, rows, fresh_probes, monkeypatch):
    """Few rows (decoding) take the packed kernel where its probe passed, more rows the dequantized
    product; both give F.linear with the dequantized weight (the kernel up to bf16 activations)."""
    calls = count_calls(monkeypatch, scheme)
    layer = LAYERS[scheme].from_linear(_linear_with(matrix(rows=100)))  # 100 rows: int4 pads to 16s
    x = torch.randn(rows, 128, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        got = layer(x.reshape(1, rows, 128))
        want = F.linear(x.double(), layer.dequantized_weight(torch.float64), layer.bias.double())
    assert got.dtype == dtype and got.shape == (1, rows, 100)
    kernel_expected = rows <= weight_only.PACKED_KERNEL_MAX_ROWS and (
        weight_only.int8pack_works() if scheme == "int8-weight-only" else weight_only.int4pack_works())
    assert bool(calls) == kernel_expected
    if kernel_expected or dtype == torch.bfloat16:  # bf16 activations: relative error ~2**-8
        tolerance = 0.02 * want.abs().max().item()
    else:
        tolerance = 1e-5
    assert (got[0].double() - want).abs().max().item() <= tolerance


@pytest.mark.parametrize("scheme", list(LAYERS))
def test_kernel_is_used_where_its_probe_passes_on_an_avx512_machine(scheme):
    """The torch builds this project ships on have both kernels; a probe that fails here is a bug."""
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        pytest.skip("the packed kernels are checked on AVX-512 machines (they may be missing elsewhere)")
    works = weight_only.int8pack_works() if scheme == "int8-weight-only" else weight_only.int4pack_works()
    assert works


@pytest.mark.parametrize("scheme", list(LAYERS))
def test_a_kernel_that_computes_wrong_numbers_fails_its_probe_and_the_plain_product_is_used(
        scheme, fresh_probes, monkeypatch):
    kernel = getattr(weight_only, KERNEL_NAMES[scheme])
    monkeypatch.setattr(weight_only, KERNEL_NAMES[scheme], lambda *args: kernel(*args) * 1.5)
    layer = LAYERS[scheme].from_linear(_linear_with(matrix()))
    x = torch.randn(2, 128)
    with torch.no_grad():
        got = layer(x)
    assert not (weight_only.int8pack_works() if scheme == "int8-weight-only" else weight_only.int4pack_works())
    torch.testing.assert_close(got, F.linear(x, layer.dequantized_weight(), layer.bias), rtol=0, atol=0)


@pytest.mark.parametrize("scheme", list(LAYERS))
def test_a_kernel_error_after_the_probe_falls_back_and_turns_the_kernel_off(scheme, fresh_probes, monkeypatch):
    layer = LAYERS[scheme].from_linear(_linear_with(matrix()))
    x = torch.randn(2, 128)
    with torch.no_grad():
        layer(x)  # probes
    if not (weight_only.int8pack_works() if scheme == "int8-weight-only" else weight_only.int4pack_works()):
        pytest.skip("the kernel does not pass its probe on this machine")

    def broken(*args):
        raise RuntimeError("unsupported shape")

    monkeypatch.setattr(weight_only, KERNEL_NAMES[scheme], broken)
    with torch.no_grad():
        got = layer(x)
    torch.testing.assert_close(got, F.linear(x, layer.dequantized_weight(), layer.bias), rtol=0, atol=0)
    assert not (weight_only.int8pack_works() if scheme == "int8-weight-only" else weight_only.int4pack_works())


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("scheme", list(LAYERS))
def test_tracing_and_gradients_see_the_plain_product(scheme, monkeypatch):
    calls = count_calls(monkeypatch, scheme)
    layer = LAYERS[scheme].from_linear(_linear_with(matrix()))
    x = torch.randn(2, 128, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.no_grad():
        torch.jit.trace(layer, torch.randn(2, 128), check_trace=False)
    assert calls == []


def test_unaligned_weights_and_inputs_run_as_aligned_ones():
    """The packed kernels crash on unaligned addresses (weights memory-mapped from safetensors are
    at any offset): such tensors are copied first."""
    layer = LtgGptInt8WeightOnlyLinear.from_linear(_linear_with(matrix()))
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    with torch.no_grad():
        want = layer(x)
        storage = torch.zeros(layer.weight.numel() + 24, dtype=torch.int8)
        unaligned = storage[24:].view(layer.weight.shape)
        unaligned.copy_(layer.weight)
        layer.weight = unaligned
        shifted = torch.zeros(x.numel() + 8, dtype=torch.bfloat16)
        shifted[8:].copy_(x.reshape(-1))
        assert layer.weight.data_ptr() % 64 and shifted[8:].data_ptr() % 64
        torch.testing.assert_close(layer(shifted[8:].view(3, 128)), want, rtol=0, atol=0)


def test_int4_weights_change_remakes_the_kernel_layout(monkeypatch):
    layer = LtgGptInt4Linear.from_linear(_linear_with(matrix()))
    x = torch.randn(1, 128)
    with torch.no_grad():
        layer(x)
        new = LtgGptInt4Linear.from_linear(_linear_with(matrix(seed=3)))
        for name in ("weight", "weight_scale", "weight_min"):
            getattr(layer, name).copy_(getattr(new, name))
        torch.testing.assert_close(layer(x), new(x), rtol=0, atol=0)


# --- models and checkpoints ----------------------------------------------------------------------

@pytest.mark.parametrize("scheme", list(LAYERS))
def test_quantized_model_reloads_identically_and_generates_as_the_dequantized_model(scheme, tmp_path):
    from transformers import AutoModelForCausalLM

    model = quantize_model(tiny_model(), scheme, include_lm_head=True)
    assert isinstance(model.lm_head, LAYERS[scheme]) and model.config.tie_word_embeddings is False
    ids = torch.randint(1, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization"]["scheme"] == scheme and len(config["quantization"]["modules"]) == 9
    assert (tmp_path / "weight_only_ltg_gpt.py").is_file()
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        kind = f.get_slice("transformer.h.1.mlp.fc_in.weight").get_dtype()
    assert kind == {"int8-weight-only": "I8", "int4-weight-only": "U8"}[scheme]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)
        # the same model with float layers holding the dequantized weights: the plain ops
        plain = tiny_model()
        plain.config.tie_word_embeddings = False
        plain.lm_head.weight = torch.nn.Parameter(plain.lm_head.weight.clone())
        for name, module in model.named_modules():
            if isinstance(module, LAYERS[scheme]):
                plain.get_submodule(name).weight.copy_(module.dequantized_weight())
        prompt = ids[:1, :6]
        want = plain.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
        got = reloaded.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
        close = (reloaded(ids).logits - plain(ids).logits).abs().max() / plain(ids).logits.abs().max()
    assert close < 0.02
    assert got.tolist() == want.tolist()


def test_int4_refuses_a_layer_whose_input_size_is_not_a_multiple_of_32():
    model = tiny_model(hidden_size=48, num_attention_heads=4)
    with pytest.raises(ValueError, match=r"multiple of 32.*int8-weight-only"):
        quantize_model(model, "int4-weight-only")
    assert not getattr(model.config, "quantization", None)  # nothing was replaced


def test_quantize_command_writes_a_4bit_checkpoint_a_quarter_of_the_float_size(tmp_path, capsys):
    model = tiny_model(hidden_size=128, intermediate_size=512)
    model.save_pretrained(tmp_path / "float")
    assert cli_main(["quantize", str(tmp_path / "float"), str(tmp_path / "q4"), "--scheme", "int4-weight-only"]) == 0
    out = capsys.readouterr().out
    assert "int4-weight-only" in out
    with safe_open(tmp_path / "q4" / "model.safetensors", "pt") as f:
        blocks = sum(f.get_slice(k).get_shape()[0] * f.get_slice(k).get_shape()[1] for k in f.keys()
                     if k.endswith(".weight") and f.get_slice(k).get_dtype() == "U8")
    linear_params = 2 * (128 * 384 + 128 * 128 + 2 * 128 * 512)
    assert blocks == linear_params // 2  # two 4-bit values per byte


@pytest.mark.slow
@pytest.mark.parametrize("scheme", list(LAYERS))
def test_weight_only_checkpoint_loads_without_hf_ltg_and_generates(scheme, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = REPO / "checkpoints" / "ltg-gpt-lm"
    assert cli_main(["quantize", str(folder), str(tmp_path / "q"), "--scheme", scheme, "--include-lm-head"]) == 0
    local = AutoModelForCausalLM.from_pretrained(tmp_path / "q").eval()
    prompt = torch.tensor([[5, 17, 99, 250]])
    expected = local.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)[0].tolist()
    out = run_without_hf_ltg(
        """
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(CKPT, trust_remote_code=True).eval()
        print(type(model.lm_head).__name__, model.lm_head.weight.dtype, model.config.quantization["scheme"])
        print(model.generate(torch.tensor([[5, 17, 99, 250]]), max_new_tokens=8, do_sample=False,
                             pad_token_id=0)[0].tolist())
        """,
        tmp_path / "q",
        tmp_path,
    )
    lines = out.strip().splitlines()
    dtype = {"int8-weight-only": "torch.int8", "int4-weight-only": "torch.uint8"}[scheme]
    assert lines[-2] == f"{LAYERS[scheme].__name__} {dtype} {scheme}"
    assert lines[-1] == str(expected)


@pytest.mark.parametrize("scheme, limit", [("int8-weight-only", 0.02), ("int4-weight-only", 0.05)])
def test_perplexity_of_the_trained_lm_stays_within_the_limit(scheme, limit):
    """The shipped LM on the embedded validation text (as eval_int8.py measures it), head included."""
    from hf_ltg.data.core import LanguageModelingDataset
    from hf_ltg.data.corpus import pretraining_corpus
    from hf_ltg.tokenization import load_tokenizer
    from hf_ltg.training import sliding_window_perplexity

    folder = REPO / "checkpoints" / "ltg-gpt-lm"
    model = LtgGptForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    length = model.config.max_position_embeddings
    _, valid = pretraining_corpus(0.1)
    ids = LanguageModelingDataset(valid, load_tokenizer(folder), length, length).token_ids

    def perplexity(m):
        with torch.no_grad():
            return sliding_window_perplexity(m, ids, length, length // 2, batch_size=32)["perplexity"]

    base = perplexity(model)
    quantized = perplexity(quantize_model(model, scheme, include_lm_head=True))
    print(f"{scheme}: perplexity {quantized:.3f} vs fp32 {base:.3f} ({100 * (quantized / base - 1):+.2f} %)")
    assert abs(quantized / base - 1) <= limit


# --- the AVX2 setting --------------------------------------------------------------------------

@pytest.mark.slow
def test_weight_only_tests_pass_on_an_avx2_only_setting():
    """ATen reads ATEN_CPU_CAPABILITY once, at import: the tests above run again in a fresh process
    capped at AVX2 (an AVX2-only AMD EPYC), where the kernels are probed again."""
    env = {**os.environ, **AVX2_ONLY}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", __file__],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout.splitlines()[-1]
