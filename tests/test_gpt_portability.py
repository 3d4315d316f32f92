"""The GPT speed paths run on every CPU: each is probed before use, falls back to the plain op,
and tracing and export see plain ops only. Both ISA levels are tested on one machine by running
the kernel tests again in subprocesses with oneDNN and ATen capped at AVX2."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from gpt_utils import VOCAB, randomize_, tiny_gpt2_config
from helpers import REPO, run_without_hf_ltg

from hf_ltg.conversion.gpt2 import config_from_gpt2
from hf_ltg.gpt import LtgGptForCausalLM
from hf_ltg.gpt import kernels_ltg_gpt as kernels
from hf_ltg.gpt.kernels_ltg_gpt import ChunkedLinearCrossEntropy

AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def tiny_model():
    torch.manual_seed(0)
    return randomize_(LtgGptForCausalLM(config_from_gpt2(tiny_gpt2_config().to_dict())))


def direct_onednn_call_works(dtype):
    x, w, b = kernels._probe_operands(dtype)
    try:
        got = kernels._ONEDNN_LINEAR(x, w, b, "none", [], "")
    except RuntimeError:
        return False
    return torch.allclose(got.float(), F.linear(x.float(), w.float(), b.float()), atol=3e-2)


@pytest.mark.skipif(kernels._ONEDNN_LINEAR is None, reason="this torch build has no oneDNN linear")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_probe_verdict_is_what_the_kernel_does_on_this_machine(dtype, monkeypatch):
    monkeypatch.setattr(kernels, "_PROBED", {})
    assert kernels.onednn_linear_works(dtype) == direct_onednn_call_works(dtype)


def test_probes_do_not_draw_from_the_users_random_generator(monkeypatch):
    monkeypatch.setattr(kernels, "_PROBED", {})
    state = torch.random.get_rng_state()
    for dtype in (torch.float32, torch.bfloat16):
        kernels.onednn_linear_works(dtype)
        kernels.onednn_training_linear_works(dtype)
        kernels.onednn_packing_works(dtype)
        kernels.native_16bit_matmul(dtype)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_a_kernel_that_computes_wrong_numbers_fails_its_probe(monkeypatch):
    monkeypatch.setattr(kernels, "_PROBED", {})
    monkeypatch.setattr(kernels, "_ONEDNN_LINEAR", lambda x, w, b, *args: torch.zeros(*x.shape[:-1], w.shape[0]))
    assert not kernels.onednn_linear_works(torch.float32)
    layer = torch.nn.Linear(24, 10)
    x = torch.randn(3, 24)
    with torch.no_grad():
        torch.testing.assert_close(kernels.linear(layer, x), F.linear(x, layer.weight, layer.bias))


def test_a_kernel_error_after_the_probe_falls_back_and_turns_the_path_off(monkeypatch):
    calls = []

    def failing(*args):
        calls.append(1)
        raise RuntimeError("could not create a primitive descriptor for the inner product forward propagation primitive")

    monkeypatch.setattr(kernels, "_ONEDNN_LINEAR", failing)
    monkeypatch.setattr(kernels, "_PROBED", {("onednn_linear", torch.float32): True})
    layer = torch.nn.Linear(24, 10)
    x = torch.randn(3, 24)
    with torch.no_grad():
        torch.testing.assert_close(kernels.linear(layer, x), F.linear(x, layer.weight, layer.bias))
        torch.testing.assert_close(kernels.linear(layer, x), F.linear(x, layer.weight, layer.bias))
    assert calls == [1]  # tried once, then the plain op only
    assert kernels._PROBED[("onednn_linear", torch.float32)] is False


def relative_difference(got, want):
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


@pytest.mark.parametrize("mode", ["bf16 weights", "autocast"])
def test_fp32_products_for_emulated_bf16_match_the_bf16_linear(mode, monkeypatch):
    """On a CPU without bf16 matrix instructions, 16-bit linears multiply in fp32 on the bf16
    operands: forward and gradients are the bf16 F.linear's up to summation order."""
    monkeypatch.setattr(kernels, "_PROBED", {("native_16bit_matmul", torch.bfloat16): False})
    torch.manual_seed(0)
    ours, reference = torch.nn.Linear(40, 24), torch.nn.Linear(40, 24)
    reference.load_state_dict(ours.state_dict())
    if mode == "bf16 weights":
        ours, reference = ours.bfloat16(), reference.bfloat16()
    x = torch.randn(2, 16, 40, dtype=torch.bfloat16 if mode == "bf16 weights" else torch.float32)
    grad_out = torch.randn(2, 16, 24, dtype=torch.bfloat16)
    results = []
    for module, forward in ((ours, kernels.linear), (reference, lambda module, x: module(x))):
        inputs = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
            out = forward(module, inputs)
        out.backward(grad_out)
        results.append((out, inputs.grad, module.weight.grad, module.bias.grad))
    for got, want in zip(*results):
        assert got.dtype == want.dtype
        assert relative_difference(got, want) < 1e-2


def test_few_row_bf16_products_keep_the_bf16_op_where_it_is_emulated(monkeypatch):
    """Decoding (a few rows) stays on the bf16 op, which costs per row: upcasting the weight costs more."""
    monkeypatch.setattr(kernels, "_PROBED", {("native_16bit_matmul", torch.bfloat16): False})
    used = []
    monkeypatch.setattr(kernels._Fp32ProductLinearFunction, "apply", lambda *a: used.append(1) or F.linear(*a))
    layer = torch.nn.Linear(40, 24).bfloat16()
    with torch.no_grad():
        kernels.linear(layer, torch.randn(1, 1, 40, dtype=torch.bfloat16))
        assert not used
        kernels.linear(layer, torch.randn(1, 64, 40, dtype=torch.bfloat16))
        assert used


def test_chunked_loss_for_emulated_bf16_matches_the_bf16_formulation():
    torch.manual_seed(0)
    h, w = torch.randn(37, 16, dtype=torch.bfloat16), torch.randn(17_000, 16, dtype=torch.bfloat16)
    targets = torch.randint(0, 17_000, (37,))
    targets[::5] = -100
    scale = (targets != -100).float() / (targets != -100).sum()
    targets = targets.clamp(min=0)[:, None]
    emulated = ChunkedLinearCrossEntropy._emulated_16bit(h, w, targets, scale, 8, True, torch.float32)
    bf16 = ChunkedLinearCrossEntropy._eager(h, w, targets, scale, 8, True, torch.float32)
    for got, want in zip(emulated, bf16):
        assert got.dtype == want.dtype
        assert relative_difference(got, want) < 2e-2


def test_training_step_under_autocast_with_emulated_bf16_matches_the_bf16_step(monkeypatch):
    model = tiny_model().train()
    ids = torch.randint(0, VOCAB, (2, 24))
    params = [model.lm_head.weight, model.transformer.h[0].attn.qkv_proj.weight, model.transformer.h[1].mlp.fc_out.bias]

    def step(native):
        monkeypatch.setattr(kernels, "_PROBED", {("native_16bit_matmul", torch.bfloat16): native,
                                                 ("onednn_linear", torch.bfloat16): False})
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        return loss, torch.autograd.grad(loss, params)

    emulated_loss, emulated_grads = step(False)
    bf16_loss, bf16_grads = step(True)
    assert relative_difference(emulated_loss, bf16_loss) < 1e-2
    for got, want in zip(emulated_grads, bf16_grads):
        assert relative_difference(got, want) < 5e-2


def test_tracing_sees_plain_ops_only():
    model = tiny_model().eval()
    model.config.return_dict, model.config.use_cache = False, False
    ids = torch.randint(0, VOCAB, (2, 8))
    traced = torch.jit.trace(model, (ids,), strict=False)
    graph = str(traced.inlined_graph)
    assert "mkldnn" not in graph and "aten::linear" in graph
    with torch.no_grad():
        torch.testing.assert_close(traced(ids)[0], model(ids)[0], atol=1e-5, rtol=1e-5)


def test_legacy_onnx_export_sees_plain_ops_only(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = tiny_model().eval()
    model.config.return_dict, model.config.use_cache = False, False
    ids = torch.randint(0, VOCAB, (2, 8))
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (ids,), str(path), kwargs={"attention_mask": torch.ones_like(ids)}, dynamo=False)
    graph = onnx.load(str(path)).graph
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}  # standard ONNX ops, no custom kernels
    assert any(node.op_type in ("MatMul", "Gemm") for node in graph.node)


def test_torch_export_sees_plain_ops_only():
    model = tiny_model().eval()
    ids = torch.randint(0, VOCAB, (2, 8))
    exported = torch.export.export(model, (ids,), {"use_cache": False})
    assert "mkldnn" not in str(exported.graph)


KERNEL_TESTS = ["tests/test_gpt_speed_paths.py", "tests/test_gpt_portability.py"]


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["AVX2 only", "machine default"])
def test_kernel_tests_pass_under_each_isa_setting(setting):
    """oneDNN and ATen read these variables once, at import: so the kernel tests run again in a
    fresh process, capped at AVX2 (an AVX2-only AMD EPYC) and at the machine's own level."""
    env = {k: v for k, v in os.environ.items() if k not in AVX2_ONLY}
    if setting == "AVX2 only":
        env.update(AVX2_ONLY)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *KERNEL_TESTS],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout.splitlines()[-1]


SHIPPED = ["ltg-gpt-lm", "ltg-gpt-classifier", "ltg-bert-mlm"]
BF16_GENERATE = """
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(CKPT, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(CKPT, trust_remote_code=True, dtype=torch.bfloat16).eval()
tok.padding_side = "left"
if tok.pad_token is None:
    tok.pad_token = tok.eos_token or tok.sep_token
batch = tok(["The for statement", "A function"], return_tensors="pt", padding=True)
out = model.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
long = tok(["The for statement " * 12], return_tensors="pt")
logits = model(**long).logits
assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
print(out.shape[1] - batch["input_ids"].shape[1])
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_generates_in_bf16_on_an_avx2_only_cpu(name, tmp_path, monkeypatch):
    """A stranger's AVX2-only machine, without hf_ltg: bf16 loading and generation work."""
    for key, value in AVX2_ONLY.items():
        monkeypatch.setenv(key, value)
    out = run_without_hf_ltg(BF16_GENERATE, REPO / "checkpoints" / name, tmp_path)
    assert out.strip().splitlines()[-1] == "6"
