"""Speed paths of the LTG GPT model, each with the plain PyTorch op it stands in for.

`modeling_ltg_gpt.py` uses three things from here, and reads the same without them:
- `linear(module, x)`: `module(x)` for its `nn.Linear` layers, whose CPU products may run through
  oneDNN (faster than MKL at every GPT-2 shape on 2 cores) or, for 16-bit products on a CPU
  without native 16-bit matrix instructions, in fp32 on the same rounded operands; the layers
  stay plain `nn.Linear` modules, which quantizers and adapters recognise by type;
- `Dropout` / `fast_dropout`: CPU dropout masks from 16-bit random numbers;
- `chunked_causal_lm_loss`: the causal-LM cross-entropy without the full logits tensor.

A fast path is a guess about the machine. Each one is taken only where a one-time probe (the op on
a tiny input, compared with the plain op) showed that it works for this dtype on this machine and
torch build; a kernel error later still falls back to the plain op and switches the path off.
Tracing, scripting, ONNX export and compiled graphs always take the plain ops.

Copied into every checkpoint beside the model file: imports only torch.
"""

import functools
import math
import sys
import weakref

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------
# Probes
# ----------------------------------------------------------------------------------------------

_PROBED: dict = {}  # (name, dtype) -> bool


def _probe(name: str, dtype: torch.dtype, check) -> bool:
    """`check(dtype)`'s verdict, computed once per process; any exception means "no"."""
    key = (name, dtype)
    if key not in _PROBED:
        try:
            with torch.no_grad(), torch.autocast("cpu", enabled=False):
                _PROBED[key] = bool(check(dtype))
        except Exception:  # noqa: BLE001 - a kernel that fails in any way is not used
            _PROBED[key] = False
    return _PROBED[key]


def _disable(name: str, dtype: torch.dtype) -> None:
    _PROBED[(name, dtype)] = False


def _probe_operands(dtype, rows=3, features=24, outputs=10):
    """Deterministic operands (the probes must not draw from the user's random generator)."""
    x = torch.linspace(-1.0, 1.0, rows * features).reshape(rows, features).to(dtype)
    w = torch.linspace(0.5, -0.5, outputs * features).reshape(features, outputs).t().contiguous().to(dtype)
    w = w + 0.01 * torch.arange(outputs, dtype=dtype)[:, None]
    b = torch.linspace(-0.1, 0.1, outputs).to(dtype)
    return x, w, b


def _close(got, want, dtype) -> bool:
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    return got.shape == want.shape and torch.allclose(got.float(), want.float(), atol=tolerance, rtol=tolerance)


def _onnx_exporting_flags():
    """A function telling whether an ONNX export is running, reading the exporters' flags directly
    (`torch.onnx.is_in_onnx_export` imports its modules on every call: a microsecond per linear
    layer while decoding); that function itself where the flags are not where torch 2.13 keeps them."""
    try:
        from torch.onnx._internal.exporter import _flags
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:
        return torch.onnx.is_in_onnx_export
    if not (hasattr(GLOBALS, "in_onnx_export") and hasattr(_flags, "_is_onnx_exporting")):
        return torch.onnx.is_in_onnx_export
    return lambda: GLOBALS.in_onnx_export or _flags._is_onnx_exporting


_READ_ONNX_FLAGS = _onnx_exporting_flags()


def _onnx_exporting() -> bool:
    # torch.compile traces torch.onnx.is_in_onnx_export but not the flags' own module
    return torch.onnx.is_in_onnx_export() if torch.compiler.is_compiling() else _READ_ONNX_FLAGS()


def _tracing_or_exporting() -> bool:
    return torch.jit.is_scripting() or torch.jit.is_tracing() or _onnx_exporting() or _FX_SYMBOLIC_TRACING()


# torch.fx's symbolic tracing (transformers' and llm-compressor's tracers): the inputs are proxies
_FX_SYMBOLIC_TRACING = getattr(getattr(torch.fx, "_symbolic_trace", None), "is_fx_symbolic_tracing", lambda: False)


def plain_ops_required() -> bool:
    """True while tracing, scripting, exporting or compiling: those see only public ops."""
    return torch.compiler.is_compiling() or _tracing_or_exporting()


# ----------------------------------------------------------------------------------------------
# oneDNN linear
# ----------------------------------------------------------------------------------------------

# oneDNN's linear (the kernel Inductor uses on CPU) and its weight reordering; private API, so
# looked up, probed and never relied upon.
_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
_ONEDNN_PACK = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None) if _ONEDNN_LINEAR is not None else None
# nn.Linear -> None (packing on, nothing packed yet) or (the weight's identity and version, its
# reordered copy); see `pack_cpu_weights`. Outside the modules, so that copying or pickling a model
# never meets oneDNN's opaque tensors.
_PACKED_WEIGHTS = weakref.WeakKeyDictionary()
# True for tensors inside torch.func transforms (grad, vmap), which a plain autograd.Function cannot serve
_IS_FUNCTORCH_WRAPPED = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", lambda t: False)


def _check_onednn_linear(dtype) -> bool:
    x, w, b = _probe_operands(dtype)
    want = F.linear(x.float(), w.float(), b.float())
    batched = x.reshape(1, *x.shape)
    return (
        _close(_ONEDNN_LINEAR(x, w, b, "none", [], ""), want, dtype)
        and _close(_ONEDNN_LINEAR(batched, w, None, "none", [], "")[0], want - b.float(), dtype)
        and _close(_ONEDNN_LINEAR(x[:1], w, b, "none", [], ""), want[:1], dtype)
    )


def onednn_linear_works(dtype: torch.dtype) -> bool:
    """oneDNN's linear exists and computes F.linear for `dtype` on this machine (AVX2-only CPUs,
    for one, have no bf16 inner product)."""
    return _ONEDNN_LINEAR is not None and _probe("onednn_linear", dtype, _check_onednn_linear)


def _check_onednn_training_linear(dtype) -> bool:
    x, w, b = _probe_operands(dtype)
    grad = torch.linspace(-2.0, 2.0, x.shape[0] * w.shape[0]).reshape(x.shape[0], w.shape[0])
    with torch.enable_grad():
        got = [t.clone().requires_grad_() for t in (x, w, b)]
        want = [t.clone().requires_grad_() for t in (x, w, b)]
        _OneDnnLinearFunction.apply(*got).backward(grad)
        F.linear(*want).backward(grad)
    return all(_close(g.grad, r.grad, dtype) for g, r in zip(got, want))


def onednn_training_linear_works(dtype: torch.dtype) -> bool:
    return (
        dtype == torch.float32
        and onednn_linear_works(dtype)
        and _probe("onednn_training_linear", dtype, _check_onednn_training_linear)
    )


def onednn_gradients_are_faster() -> bool:
    """A capability check: with AVX-512 (ATen's dispatch level, which `ATEN_CPU_CAPABILITY` caps),
    oneDNN's gradient products beat MKL's at GPT-2 small's shapes (1.2-1.3x); on AVX2-only CPUs
    MKL's are faster (training step 1.2x faster with oneDNN forward and MKL gradients), while
    oneDNN's forward product wins on both."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def _check_onednn_pack(dtype) -> bool:
    x, w, b = _probe_operands(dtype)
    packed = _ONEDNN_PACK(w, 1)
    return _close(_ONEDNN_LINEAR(x[:1], packed, b, "none", [], ""), F.linear(x[:1].float(), w.float(), b.float()), dtype)


def onednn_packing_works(dtype: torch.dtype) -> bool:
    return _ONEDNN_PACK is not None and onednn_linear_works(dtype) and _probe("onednn_pack", dtype, _check_onednn_pack)


# ATen's own matrix-vector product, which `F.linear` reaches for one 16-bit row when oneDNN is off:
# it reads a plain weight as it lies, where oneDNN first reorders it on every call.
_GET_ONEDNN_ENABLED = getattr(torch._C, "_get_mkldnn_enabled", None)
_SET_ONEDNN_ENABLED = getattr(torch._C, "_set_mkldnn_enabled", None)


def _aten_one_row_linear(x, weight, bias):
    """`F.linear` with oneDNN switched off for the call. The switch is process-wide: another thread
    multiplying at that moment also skips oneDNN (same result up to summation order, maybe slower)."""
    previous = _GET_ONEDNN_ENABLED()
    _SET_ONEDNN_ENABLED(False)
    try:
        return F.linear(x, weight, bias)
    finally:
        _SET_ONEDNN_ENABLED(previous)


def _check_aten_one_row(dtype) -> bool:
    x, w, b = _probe_operands(dtype)
    want = F.linear(x[:1].float(), w.float(), b.float())
    return (
        _close(_aten_one_row_linear(x[:1], w, b), want, dtype)
        and _close(_aten_one_row_linear(x[:1].reshape(1, 1, -1), w, None)[0], want - b.float(), dtype)
        and torch.backends.mkldnn.enabled == _GET_ONEDNN_ENABLED()
    )


def aten_one_row_linear_works(dtype: torch.dtype) -> bool:
    """For one bf16 row (batch-1 decoding), ATen's matrix-vector product on the plain weight: 1.6-1.8x
    oneDNN's, which reorders the weight on every call (GPT-2 small's layers on an AVX-512 + BF16 EPYC,
    2 threads: 43-51 GB/s against 21-29; with 8 rows ATen's is 4x slower, so one row only). Taken
    where the CPU has native bf16 products and the probe agrees with the plain op."""
    return (
        dtype == torch.bfloat16
        and _SET_ONEDNN_ENABLED is not None
        and _GET_ONEDNN_ENABLED is not None
        and native_16bit_matmul(dtype)
        and _probe("aten_one_row", dtype, _check_aten_one_row)
    )


def _check_native_bf16_matmul(dtype) -> bool:
    """Whether 16-bit products run natively: oneDNN's bf16 inner product exists only where the CPU
    has bf16 (or bf16-convert) instructions; without them ATen emulates 16-bit matrix products,
    about 5x slower than fp32 ones (GPT-2 small's MLP at 1,024 rows: 296 ms against 55 ms on an
    AVX2-only AMD EPYC)."""
    return onednn_linear_works(dtype)


def native_16bit_matmul(dtype: torch.dtype) -> bool:
    return _probe("native_16bit_matmul", dtype, _check_native_bf16_matmul)


def emulated_16bit_autocast(device_type: str) -> bool:
    """Autocast to a 16-bit dtype whose matrix products this CPU emulates (5x slower than fp32 ones)."""
    if device_type != "cpu" or not torch.is_autocast_enabled("cpu") or plain_ops_required():
        return False
    dtype = torch.get_autocast_dtype("cpu")
    return dtype != torch.float32 and not native_16bit_matmul(dtype)


def attention_in_fp32(query: torch.Tensor) -> bool:
    """Whether attention should run on fp32 copies of 16-bit queries, keys and values: under
    autocast on a CPU that emulates 16-bit products, and for one decoded token per row on any CPU
    (inference). CPU SDPA on one bf16 query row costs its fixed setup per head: 2.7-4x the same call
    on fp32 copies, conversions included (12 heads of 64, 32-1,024 keys, AVX-512 + BF16 EPYC), and
    fp32 is the more accurate of the two. The result is rounded back to the 16-bit dtype."""
    if query.device.type != "cpu":
        return False
    if emulated_16bit_autocast("cpu"):
        return True
    return (
        not plain_ops_required()
        and query.dtype in (torch.bfloat16, torch.float16)
        and query.shape[-2] == 1
        and not (torch.is_grad_enabled() and query.requires_grad)
    )


class _OneDnnLinearFunction(torch.autograd.Function):
    """y = x @ weight.T + bias with the forward product in oneDNN and the gradient products in
    oneDNN where that is faster (`onednn_gradients_are_faster`), else in MKL (`torch.mm`)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_rows = grad.reshape(-1, grad.shape[-1])
        grad_x = grad_w = grad_b = None
        onednn = onednn_gradients_are_faster()
        if ctx.needs_input_grad[0]:
            grad_x = _ONEDNN_LINEAR(grad, weight.t(), None, "none", [], "") if onednn else grad @ weight
        if ctx.needs_input_grad[1]:
            x_rows = x.reshape(-1, x.shape[-1])
            grad_w = _ONEDNN_LINEAR(grad_rows.t(), x_rows.t(), None, "none", [], "") if onednn else grad_rows.t() @ x_rows
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_rows.sum(0)
        return grad_x, grad_w, grad_b


class _Fp32ProductLinearFunction(torch.autograd.Function):
    """A 16-bit linear whose products run in fp32 on the 16-bit operands, for CPUs that emulate
    16-bit matrix products. bf16 x bf16 products are exact in fp32 and a 16-bit product accumulates
    in fp32 anyway, so the result is what the 16-bit product gives (up to summation order), rounded
    once to the 16-bit dtype; so are the gradients."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        out = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
        return out.to(x.dtype)

    @staticmethod
    @torch.autocast("cpu", enabled=False)
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad32 = grad.float()
        grad_rows = grad32.reshape(-1, grad.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad32 @ weight.float()).to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (grad_rows.t() @ x.reshape(-1, x.shape[-1]).float()).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_rows.sum(0).to(grad.dtype)
        return grad_x, grad_w, grad_b


def linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` for the model's linear layers, with faster CPU products where they are safe.

    The layers are plain `nn.Linear` modules, which quantizers (bitsandbytes, quanto, llm-compressor)
    and adapters recognise by type and replace or wrap. Only a plain `nn.Linear` that nothing hooks
    takes the paths below; anything else (a quantized or adapter layer, a layer with hooks or a
    replaced forward, a traced, exported or compiled graph) runs as `module(x)`.

    - fp32 and bf16 on CPU, where oneDNN's linear passed its probe: oneDNN for inference (MKL,
      which `F.linear` calls for fp32, keeps few-row products such as decoding on one core) and,
      for fp32, for training too (forward and both gradients).
    - one bf16 row without gradients (batch-1 decoding) where the CPU has native bf16 products:
      ATen's matrix-vector product on the plain weight (`aten_one_row_linear_works`).
    - 16-bit products (bf16 weights, or autocast) on a CPU that emulates them: the products in fp32
      on the same 16-bit operands, rounded once (5x faster there; same numbers up to summation order).
    - Everywhere else (CUDA, other dtypes, tensor-subclass weights such as torchao's, torch.func
      transforms): `F.linear`.
    With `pack_cpu_weights`, CPU inference uses a copy of the weight reordered into oneDNN's blocked
    layout, remade when the weight changes.

    An adapter layer (peft's, which keep the wrapped layer as `base_layer`) runs its own forward,
    with the product of an unhooked plain `nn.Linear` base layer on these paths: LoRA training on
    CPU keeps oneDNN's frozen-weight products (with `F.linear` instead, LoRA steps on GPT-2 small ran
    1.3-2.5x slower, one thread of a shared 2-core machine).
    """
    if plain_ops_required():
        return module(x)
    if type(module) is nn.Linear:
        return module(x) if _hooked(module) else _fast_linear(module, x)
    base = getattr(module, "base_layer", None)
    if type(base) is not nn.Linear or _hooked(base):
        return module(x)
    # for this call only: a forward kept on the instance would follow copies (DataParallel's
    # replicas share the instance dict) and break pickling
    base.forward = functools.partial(_fast_linear, base)
    try:
        return module(x)
    finally:
        del base.forward


def _fast_linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight, bias = module.weight, module.bias
    if x.device.type != "cpu" or type(weight.data) is not torch.Tensor:
        return F.linear(x, weight, bias)
    autocast = torch.is_autocast_enabled("cpu")
    dtype = torch.get_autocast_dtype("cpu") if autocast else x.dtype
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return F.linear(x, weight, bias)
    if dtype != torch.float32 and not native_16bit_matmul(dtype):
        # Emulated 16-bit products cost rows x weight; fp32 ones cost the weight's conversion
        # once, then about a fifth per row: fp32 wins from ~12 rows (~32 for a vocabulary-sized head).
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if rows < (32 if weight.numel() > 2**23 else 12) or _IS_FUNCTORCH_WRAPPED(x) or _IS_FUNCTORCH_WRAPPED(weight):
            return F.linear(x, weight, bias)
        with torch.autocast("cpu", enabled=False):
            args = (t if t is None else t.to(dtype) for t in (x, weight, bias))
            return _Fp32ProductLinearFunction.apply(*args)
    if autocast or weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        return F.linear(x, weight, bias)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    try:
        if not needs_grad and dtype != torch.float32 and x.numel() == weight.shape[1] and module not in _PACKED_WEIGHTS:
            if aten_one_row_linear_works(dtype):
                try:
                    return _aten_one_row_linear(x, weight, bias)
                except RuntimeError:  # this path off from now on; oneDNN's below still stands
                    _disable("aten_one_row", dtype)
        if not needs_grad and onednn_linear_works(dtype):
            if module in _PACKED_WEIGHTS and onednn_packing_works(dtype):
                weight = _packed(module, weight)
            return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")
        if (
            needs_grad
            and onednn_training_linear_works(dtype)
            and not (_IS_FUNCTORCH_WRAPPED(x) or _IS_FUNCTORCH_WRAPPED(weight))
        ):
            return _OneDnnLinearFunction.apply(x, weight, bias)
    except RuntimeError:  # a shape or layout the probe did not meet: plain op from now on
        _disable("onednn_linear", dtype)
    return F.linear(x, module.weight, bias)


def _hooked(module: nn.Module) -> bool:
    """Whether calling `module` would run more than its forward: hooks (llm-compressor's calibration,
    accelerate's offloading), a forward replaced on the instance, or global module hooks."""
    state = module.__dict__
    return bool(
        state.get("_forward_hooks") or state.get("_forward_pre_hooks") or state.get("_backward_hooks")
        or state.get("_backward_pre_hooks") or "forward" in state
        or any(getattr(_TORCH_MODULE, name, None) for name in _GLOBAL_HOOKS)
    )


_TORCH_MODULE = sys.modules[nn.Module.__module__]  # torch.nn.modules.module, which keeps the global hooks
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def _packed(module, weight):
    key = (weight.data_ptr(), weight._version, weight.dtype, weight.shape)
    entry = _PACKED_WEIGHTS.get(module)
    if entry is None or entry[0] != key:
        entry = _PACKED_WEIGHTS[module] = (key, _ONEDNN_PACK(weight.detach(), 1))  # laid out for a few rows
    return entry[1]


def pack_cpu_weights(model: nn.Module, enabled: bool = True) -> None:
    """Turn the reordered weight copies of every plain `nn.Linear` in `model` on (made on first use
    through `linear`) or off (freed)."""
    if enabled and _ONEDNN_PACK is None:
        raise RuntimeError(
            "pack_cpu_weights needs oneDNN's weight reordering (torch.ops.mkldnn._reorder_linear_weight), "
            "which this torch build does not have; run without packing."
        )
    for module in model.modules():
        if type(module) is nn.Linear:
            if enabled:
                _PACKED_WEIGHTS.setdefault(module, None)
            else:
                _PACKED_WEIGHTS.pop(module, None)


# ----------------------------------------------------------------------------------------------
# Dropout
# ----------------------------------------------------------------------------------------------


def _dropout_scale(x: torch.Tensor, p: float) -> torch.Tensor:
    """0 or 1/(1-p') in x's dtype from 16-bit random numbers, p' = p rounded to a multiple of 2**-16."""
    cut = round(p * 65536)
    bits = torch.randint(-(2**31), 2**31, ((x.numel() + 1) // 2,), dtype=torch.int32, device=x.device)
    keep = torch.empty_like(x)
    torch.ge(bits.view(torch.int16)[: x.numel()].view(x.shape), cut - 32768, out=keep)
    return keep.mul_(1.0 / (1.0 - cut / 65536))


def _opaque_dropout_scale():
    """`_dropout_scale` as a custom op, so that compiled graphs call it instead of generating the
    random numbers one element at a time. Registered once per process (a checkpoint's copy of this
    file and hf_ltg's may both be loaded); seeded random, so never recomputed in backward. None
    on a torch without `torch.library.custom_op` (compiled graphs then use `F.dropout`)."""
    try:
        return torch.ops.ltg_gpt.dropout_scale
    except (AttributeError, RuntimeError):
        pass
    if not hasattr(torch.library, "custom_op") or not hasattr(torch.Tag, "nondeterministic_seeded"):
        return None
    try:
        op = torch.library.custom_op(
            "ltg_gpt::dropout_scale", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,)
        )(_dropout_scale)
        op.register_fake(lambda x, p: torch.empty_like(x))
    except Exception:  # noqa: BLE001 - an older or newer custom-op API: compiled graphs use F.dropout
        return None
    return torch.ops.ltg_gpt.dropout_scale


_DROPOUT_SCALE_OP = _opaque_dropout_scale()


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout`, but on CPU the mask comes from 16-bit random numbers.

    PyTorch's CPU dropout draws one number from a sequential generator per element, which makes
    dropout the largest single cost of a CPU training step, and compiled graphs draw them one
    element at a time; two 16-bit draws per 32-bit number halve that, and the mask is made in x's
    dtype by a comparison, so applying it (and its gradient) is one multiplication (1.5x faster
    than `F.dropout` on one core). The probability is rounded to a multiple of 2**-16 (0.1 becomes
    0.100006) and the scale uses the rounded value, so the expectation is kept exactly. Under
    `torch.compile` the mask is a custom op (same numbers as eager). CUDA, tracing and export use
    `F.dropout`.
    """
    if not training or p == 0.0:
        return x
    compiling = torch.compiler.is_compiling()
    if (
        x.device.type != "cpu"
        or p >= 1.0
        or (compiling and _DROPOUT_SCALE_OP is None)
        or _tracing_or_exporting()
    ):
        return F.dropout(x, p, training=True)
    return x * (_DROPOUT_SCALE_OP(x.detach(), p) if compiling else _dropout_scale(x, p))


class Dropout(nn.Dropout):
    """`nn.Dropout` through `fast_dropout`."""

    def forward(self, x):
        return fast_dropout(x, self.p, self.training)


# ----------------------------------------------------------------------------------------------
# Chunked cross-entropy
# ----------------------------------------------------------------------------------------------


def chunked_causal_lm_loss(hidden_states, head_weight, labels, num_items_in_batch=None, shift_labels=None):
    """The causal-LM loss of `hidden_states @ head_weight.T` (transformers' `ForCausalLMLoss`: labels
    shifted left, -100 ignored, mean over targets or divided by `num_items_in_batch`), computed in
    chunks of rows so that the (B, T, V) logits never exist whole."""
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=-100)[:, 1:]  # tokens < n predict n
    targets = shift_labels.reshape(-1).to(hidden_states.device)
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
    divisor = (targets != -100).sum() if num_items_in_batch is None else num_items_in_batch
    if torch.is_tensor(divisor):
        divisor = divisor.to(hidden.device)
    vocab = head_weight.shape[0]
    # about 64 MB of fp32 logits per chunk, equal chunks
    chunks = max(1, math.ceil(hidden.shape[0] * vocab / 2**24))
    chunk = math.ceil(hidden.shape[0] / chunks)
    need_grads = torch.is_grad_enabled() and (hidden.requires_grad or head_weight.requires_grad)
    return ChunkedLinearCrossEntropy.apply(hidden, head_weight, targets, divisor, chunk, need_grads)


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, `chunk` rows at a time.

    hidden (N, D), weight (V, D), targets (N,) with -100 for ignored rows; the summed loss is
    divided by `divisor` (the number of targets, or the Trainer's `num_items_in_batch`). The fp32
    (N, V) logits never exist whole: each chunk's logits (in eager mode in a reused buffer, except
    fp32 on CPU, where oneDNN's product writes a fresh one) are turned into the loss and, in the
    same pass, into the gradient of `hidden` (softmax minus one-hot), so backward
    only scales the gradients. Under autocast the products run in the autocast dtype and the
    softmax in fp32, as autocast would do (on a CPU that emulates 16-bit products, in fp32 on the
    16-bit operands).

    The weight gradient: in fp32 it is accumulated chunk by chunk. In a 16-bit dtype the chunks'
    probabilities are kept (N x V 16-bit numbers, half of what the fp32 logits would take) and
    multiplied once per vocabulary slice, so the gradient is rounded once, as autocast's single
    product rounds it; accumulating 16-bit partial products would round it once per chunk, and
    adding them to an fp32 sum costs more than the products themselves on CPU.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, divisor, chunk, need_grads):
        device = hidden.device.type
        compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        with torch.autocast(device, enabled=False):
            h, w = hidden.to(compute), weight.to(compute)
            scale = (targets != -100).float() / divisor  # (N,) weight of each row in the mean
            targets = targets.clamp(min=0)[:, None]  # ignored rows have scale 0
            cls = ChunkedLinearCrossEntropy
            if plain_ops_required():
                run = cls._compiled
            elif device == "cpu" and compute != torch.float32 and not native_16bit_matmul(compute):
                run = cls._emulated_16bit
            else:
                run = cls._eager
            loss, grad_h, grad_w = run(h, w, targets, scale, chunk, need_grads, weight.dtype)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = hidden.dtype, weight.dtype
        return loss

    @staticmethod
    def _chunk(logits, targets, scale):
        """In place on one chunk's fp32 logits: (summed loss, d loss / d logits)."""
        top = logits.amax(-1, keepdim=True)
        target_logits = logits.gather(1, targets)
        exp = logits.sub_(top).exp_()
        total = exp.sum(-1, keepdim=True)
        loss = ((total.log() + top - target_logits).squeeze(1) * scale).sum()
        weights = scale[:, None]
        return loss, exp.mul_(weights / total).scatter_add_(1, targets, -weights)

    @staticmethod
    def _eager(h, w, targets, scale, chunk, need_grads, weight_dtype):
        """Preallocated buffers, written in place (fresh large tensors cost page faults on CPU)."""
        rows_total, vocab, compute = h.shape[0], w.shape[0], h.dtype
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        accumulate = compute == torch.float32
        grad_h = torch.empty_like(h) if need_grads else None
        grad_w = torch.empty_like(w) if need_grads and accumulate else None
        kept_probs = h.new_empty(rows_total, vocab) if need_grads and not accumulate else None
        # fp32 on CPU: oneDNN's product, 1.7x faster than MKL's (what torch.mm calls) at this shape
        onednn = accumulate and h.device.type == "cpu" and onednn_linear_works(torch.float32)
        products = None if onednn else h.new_empty(min(chunk, rows_total), vocab)  # reused by every chunk
        logits_buffer = products if accumulate else torch.empty_like(products, dtype=torch.float32)
        for start in range(0, rows_total, chunk):
            rows = slice(start, start + chunk)
            count = h[rows].shape[0]
            if onednn:
                logits = _ONEDNN_LINEAR(h[rows], w, None, "none", [], "")
            else:
                torch.mm(h[rows], w.t(), out=products[:count])
                logits = logits_buffer[:count]
                if not accumulate:
                    logits.copy_(products[:count])
            chunk_loss, probs = ChunkedLinearCrossEntropy._chunk(logits, targets[rows], scale[rows])
            loss += chunk_loss
            if not need_grads:
                continue
            if accumulate:
                torch.mm(probs, w, out=grad_h[rows])
                if start == 0:
                    torch.mm(probs.t(), h[rows], out=grad_w)
                else:
                    grad_w.addmm_(probs.t(), h[rows])
            else:
                kept_probs[rows] = probs
                torch.mm(kept_probs[rows], w, out=grad_h[rows])
        del products, logits_buffer
        if kept_probs is not None:
            grad_w = torch.empty_like(w, dtype=weight_dtype)
            slice_rows = min(vocab, 8192)
            part = w.new_empty(slice_rows, w.shape[1]) if weight_dtype != compute else None
            for first in range(0, vocab, slice_rows):
                vocab_rows = slice(first, first + slice_rows)
                target = grad_w[vocab_rows]
                out = target if part is None else part[: target.shape[0]]
                torch.mm(kept_probs[:, vocab_rows].t(), h, out=out)
                if part is not None:
                    target.copy_(out)
        return loss, grad_h, grad_w

    @staticmethod
    def _emulated_16bit(h, w, targets, scale, chunk, need_grads, weight_dtype):
        """16-bit operands on a CPU without 16-bit matrix instructions: the fp32 path on the rounded
        operands (exact products, fp32 sums), with the gradients rounded to the 16-bit dtype once, as
        the 16-bit products would round them."""
        compute = h.dtype
        loss, grad_h, grad_w = ChunkedLinearCrossEntropy._eager(
            h.float(), w.float(), targets, scale, chunk, need_grads, torch.float32
        )
        if not need_grads:
            return loss, None, None
        return loss, grad_h.to(compute), grad_w.to(compute).to(weight_dtype)

    @staticmethod
    def _compiled(h, w, targets, scale, chunk, need_grads, weight_dtype):
        """The same without buffers or writes into slices, which compiled graphs turn into copies."""
        compute = h.dtype
        loss, grad_h, grad_w, kept_probs = 0.0, [], None, []
        for start in range(0, h.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = (h[rows] @ w.t()).float()
            chunk_loss, probs = ChunkedLinearCrossEntropy._chunk(logits, targets[rows], scale[rows])
            loss = loss + chunk_loss
            if not need_grads:
                continue
            probs = probs.to(compute)
            grad_h.append(probs @ w)
            if compute != torch.float32:
                kept_probs.append(probs)
            elif grad_w is None:
                grad_w = probs.t() @ h[rows]
            else:
                grad_w = grad_w.addmm(probs.t(), h[rows])
        if not need_grads:
            return loss, None, None
        if kept_probs:
            grad_w = torch.cat(kept_probs).t() @ h
        return loss, torch.cat(grad_h), grad_w.to(weight_dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        if grad_loss.device.type == "cpu" and not torch.compiler.is_compiling() and grad_loss.item() == 1.0:
            return grad_h.to(ctx.dtypes[0]), grad_w.to(ctx.dtypes[1]), None, None, None, None  # saves a pass
        return (
            (grad_h * grad_loss).to(ctx.dtypes[0]),
            (grad_w * grad_loss).to(ctx.dtypes[1]),
            None,
            None,
            None,
            None,
        )
