"""Weight-only quantized layers of the LTG GPT model: int8 per output channel, 4-bit per group of 32.

The activations stay in floating point; only the weights are stored (and read) in fewer bits.
Decoding reads every weight once per token, so fewer bytes per weight is a faster token.

- "int8-weight-only": w ~= q * scale, q int8 in [-127, 127], one scale per output row
  (scale = max|w| / 127, rounded to a bfloat16 value, so the packed kernel's bf16 scales are exact).
- "int4-weight-only": w ~= q * scale + minimum, q in [0, 15], one scale and minimum per group of
  32 consecutive inputs of a row (round-to-nearest between the group's min and max): llama.cpp's
  Q4_1 block, so `hf-ltg export --gguf-type q4_1` writes these very numbers.

Products of up to `PACKED_KERNEL_MAX_ROWS` rows (decoding) run on CPU in torch's weight-only
kernels (`aten._weight_int8pack_mm`, `aten._weight_int4pack_mm_for_cpu`), which read the small
weights directly; they take bfloat16 activations (their float32 variants are scalar code, 20-50x
slower), accumulate in float32, and the result is returned in the input's dtype. Longer inputs
(prompts) and every other case (GPU, tracing, export, compiled graphs, a machine or torch build
where a probe failed) dequantize the weight to the input's dtype and call `F.linear`, the plain
op these kernels stand in for. Each kernel is probed once per process (`kernels_ltg_gpt._probe`)
and switched off after an error.

Copied into every GPT checkpoint beside the model file: imports only torch and its siblings.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .kernels_ltg_gpt import _disable, _probe, plain_ops_required

INT4_GROUP_SIZE = 32
# The packed kernels cost about rows x (their one-row cost); a dequantized weight and one matrix
# product win from ~48 rows (GPT-2 small's MLP on an AVX-512 EPYC).
PACKED_KERNEL_MAX_ROWS = 32
# aten._weight_int4pack_mm_for_cpu: weights come in 16-row tiles (other row counts are zero-padded)
_INT4_ROW_TILE = 16

_INT8PACK = getattr(torch.ops.aten, "_weight_int8pack_mm", None)
_INT4PACK = getattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu", None)
_INT4_CONVERT = getattr(torch.ops.aten, "_convert_weight_to_int4pack_for_cpu", None)


# ----------------------------------------------------------------------------------------------
# The formulas
# ----------------------------------------------------------------------------------------------

def quantize_int8_weight_only(weight: torch.Tensor):
    """(q int8 [out, in], scale float32 [out]) with w ~= q * scale; the scale is a bfloat16 value."""
    weight = weight.float()
    scale = (weight.abs().amax(dim=-1) / 127).to(torch.bfloat16).float()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays exactly zero
    q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4_groupwise(weight: torch.Tensor, group_size: int = INT4_GROUP_SIZE):
    """Round-to-nearest 4-bit per group of `group_size` inputs (Q4_1's formula):
    scale = (max - min) / 15, q = clamp(round((w - min) / scale), 0, 15), w ~= q * scale + min.

    Returns (packed uint8 [out, in / 2]: element 2j in the low nibble, 2j + 1 in the high one,
    scale float32 [out, in / group_size], minimum float32 [out, in / group_size]).
    """
    rows, columns = weight.shape
    if columns % group_size:
        raise ValueError(f"4-bit quantization groups {group_size} inputs, but the layer has {columns} inputs; "
                         f"quantize layers whose input size is a multiple of {group_size}, or use int8-weight-only.")
    groups = weight.float().reshape(rows, columns // group_size, group_size)
    minimum, maximum = groups.amin(dim=-1), groups.amax(dim=-1)
    scale = (maximum - minimum) / 15
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant group is its minimum, exactly
    q = torch.round((groups - minimum[..., None]) / scale[..., None]).clamp_(0, 15).to(torch.uint8)
    return pack_int4(q.reshape(rows, columns)), scale, minimum


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """[out, in] values in [0, 15] -> uint8 [out, in / 2] (low nibble first)."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [out, in / 2] -> uint8 [out, in] values in [0, 15]."""
    return torch.stack((packed & 15, packed >> 4), dim=-1).reshape(packed.shape[0], -1)


def dequantize_int4(packed, scale, minimum, group_size: int = INT4_GROUP_SIZE, dtype=torch.float32):
    q = unpack_int4(packed).float()
    rows, columns = q.shape
    groups = q.reshape(rows, columns // group_size, group_size) * scale.float()[..., None] + minimum.float()[..., None]
    return groups.reshape(rows, columns).to(dtype)


# ----------------------------------------------------------------------------------------------
# Probes: each kernel on a tiny deterministic input against the dequantized product
# ----------------------------------------------------------------------------------------------

def _probe_weight(rows=48, columns=64):
    w = torch.linspace(-0.5, 0.5, rows * columns).reshape(columns, rows).t().contiguous()
    return w + 0.01 * torch.arange(rows, dtype=torch.float32)[:, None]


def _probe_input(count, columns=64):
    return torch.linspace(-1.0, 1.0, count * columns).reshape(count, columns).to(torch.bfloat16)


def _bf16_close(got, want) -> bool:
    return got.shape == want.shape and torch.allclose(got.float(), want, atol=2e-2, rtol=2e-2)


def _check_int8pack(dtype) -> bool:
    q, scale = quantize_int8_weight_only(_probe_weight())
    want_weight = q.float() * scale[:, None]
    return all(
        _bf16_close(_INT8PACK(x, q, scale.to(torch.bfloat16)), x.float() @ want_weight.t())
        for x in (_probe_input(1), _probe_input(5))
    )


def int8pack_works() -> bool:
    return _INT8PACK is not None and _probe("weight_int8pack_mm", torch.bfloat16, _check_int8pack)


def _check_int4pack(dtype) -> bool:
    packed, scale, minimum = quantize_int4_groupwise(_probe_weight())
    kernel_weight, scale_and_zeros = _int4_kernel_operands(packed, scale, minimum)
    want_weight = dequantize_int4(packed, scale, minimum)
    return all(
        _bf16_close(_INT4PACK(x, kernel_weight, INT4_GROUP_SIZE, scale_and_zeros), x.float() @ want_weight.t())
        for x in (_probe_input(1), _probe_input(5))
    )


def int4pack_works() -> bool:
    return (
        _INT4PACK is not None
        and _INT4_CONVERT is not None
        and _probe("weight_int4pack_mm_for_cpu", torch.bfloat16, _check_int4pack)
    )


def _int4_kernel_operands(packed, scale, minimum):
    """The CPU kernel's weight layout and its (groups, rows, 2) bf16 scales and zeros; its formula is
    w = (q - 8) * scale + zero, so zero = minimum + 8 * scale. Rows are zero-padded to 16s."""
    q = unpack_int4(packed).to(torch.int32)
    pad = -q.shape[0] % _INT4_ROW_TILE
    if pad:
        q = F.pad(q, (0, 0, 0, pad))
        scale, minimum = F.pad(scale, (0, 0, 0, pad), value=1.0), F.pad(minimum, (0, 0, 0, pad))
    zero = minimum.float() + 8 * scale.float()
    scale_and_zeros = torch.stack((scale.float().t(), zero.t()), dim=-1).to(torch.bfloat16).contiguous()
    return _INT4_CONVERT(q.contiguous(), 1), scale_and_zeros


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """`t`, or an aligned copy: the packed kernels use aligned vector loads (a tensor at an unaligned
    address, such as a weight read from a memory-mapped safetensors file, crashes the process)."""
    return t if t.data_ptr() % 64 == 0 and t.is_contiguous() else t.contiguous().clone()


def _use_packed_kernel(x: torch.Tensor, rows: int) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and 0 < rows <= PACKED_KERNEL_MAX_ROWS
        and not plain_ops_required()
        and not (torch.is_grad_enabled() and x.requires_grad)  # the kernels have no gradient
    )


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------

class _WeightOnlyLinear(nn.Module):
    """Shared by both layers: `forward` = the packed kernel for few rows where probed, else
    `F.linear` with the dequantized weight; `bias` stays in the model dtype."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype), requires_grad=False) if bias else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape, dtype = hidden_states.shape, hidden_states.dtype
        x = hidden_states.reshape(-1, self.in_features)
        bias = None if self.bias is None else self.bias.to(dtype)
        if _use_packed_kernel(x, x.shape[0]) and self._packed_kernel_works():
            try:
                # a converted copy is new, so aligned (torch's CPU allocator aligns to 64 bytes)
                out = self._packed_product(x.to(torch.bfloat16) if dtype != torch.bfloat16 else _aligned(x))
            except RuntimeError:  # a shape or build the probe did not meet: plain op from now on
                self._disable_packed_kernel()
            else:
                out = out.to(dtype)  # new unless already bf16: fresh from the kernel either way
                if bias is not None:
                    out.add_(bias)
                return out.reshape(*shape[:-1], self.out_features)
        return F.linear(x, self.dequantized_weight(dtype), bias).reshape(*shape[:-1], self.out_features)


class LtgGptInt8WeightOnlyLinear(_WeightOnlyLinear):
    """An `nn.Linear` with int8 weights and one scale per output row ("int8-weight-only").

    State: `weight` int8 [out, in], `weight_scale` float32 [out], `bias` in the model dtype.
    """

    scheme = "int8-weight-only"

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self._kernel_weight = None  # (key, the weight or its aligned copy, the bf16 scales)

    @classmethod
    def from_linear(cls, linear: nn.Linear):
        module = cls(linear.in_features, linear.out_features, linear.bias is not None,
                     device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            q, scale = quantize_int8_weight_only(linear.weight)
            module.weight.copy_(q)
            module.weight_scale.copy_(scale)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        return module

    def dequantized_weight(self, dtype=torch.float32) -> torch.Tensor:
        return (self.weight.float() * self.weight_scale.float()[:, None]).to(dtype)

    def _packed_kernel_works(self):
        return int8pack_works()

    def _disable_packed_kernel(self):
        _disable("weight_int8pack_mm", torch.bfloat16)

    def _packed_product(self, x):
        key = tuple((t.data_ptr(), t._version) for t in (self.weight, self.weight_scale))
        if self._kernel_weight is None or self._kernel_weight[0] != key:
            self._kernel_weight = (key, _aligned(self.weight), _aligned(self.weight_scale.to(torch.bfloat16)))
        return _INT8PACK(x, self._kernel_weight[1], self._kernel_weight[2])

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, scheme={self.scheme}")


class LtgGptInt4Linear(_WeightOnlyLinear):
    """An `nn.Linear` with 4-bit weights, a scale and a minimum per group of 32 inputs ("int4-weight-only").

    State: `weight` uint8 [out, in / 2] (two values per byte, low nibble first), `weight_scale` and
    `weight_min` float32 [out, in / 32], `bias` in the model dtype. The CPU kernel's own weight
    layout depends on the machine, so it is made from these on first use (and remade when they change):
    while the kernel is used, the layer holds its weights twice (0.625 bytes per weight each).
    """

    scheme = "int4-weight-only"
    group_size = INT4_GROUP_SIZE

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        if in_features % self.group_size:
            raise ValueError(f"4-bit quantization groups {self.group_size} inputs, but the layer has {in_features} "
                             f"inputs; quantize layers whose input size is a multiple of {self.group_size}, or use "
                             "int8-weight-only.")
        super().__init__(in_features, out_features, bias, device, dtype)
        groups = in_features // self.group_size
        self.register_buffer("weight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, groups, dtype=torch.float32, device=device))
        self.register_buffer("weight_min", torch.zeros(out_features, groups, dtype=torch.float32, device=device))
        self._kernel_operands = None

    @classmethod
    def from_linear(cls, linear: nn.Linear):
        module = cls(linear.in_features, linear.out_features, linear.bias is not None,
                     device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            packed, scale, minimum = quantize_int4_groupwise(linear.weight, cls.group_size)
            module.weight.copy_(packed)
            module.weight_scale.copy_(scale)
            module.weight_min.copy_(minimum)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        return module

    def dequantized_weight(self, dtype=torch.float32) -> torch.Tensor:
        return dequantize_int4(self.weight, self.weight_scale, self.weight_min, self.group_size, dtype)

    def _packed_kernel_works(self):
        return int4pack_works()

    def _disable_packed_kernel(self):
        _disable("weight_int4pack_mm_for_cpu", torch.bfloat16)

    def _packed_product(self, x):
        key = tuple((t.data_ptr(), t._version) for t in (self.weight, self.weight_scale, self.weight_min))
        if self._kernel_operands is None or self._kernel_operands[0] != key:
            self._kernel_operands = (key, *_int4_kernel_operands(self.weight, self.weight_scale, self.weight_min))
        _, weight, scale_and_zeros = self._kernel_operands
        out = _INT4PACK(x, weight, self.group_size, scale_and_zeros)
        return out[:, : self.out_features] if out.shape[1] != self.out_features else out

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, scheme={self.scheme}, group_size={self.group_size}")


WEIGHT_ONLY_LAYERS = {cls.scheme: cls for cls in (LtgGptInt8WeightOnlyLinear, LtgGptInt4Linear)}
