"""Int8 layers of the LTG GPT model, so that a quantized checkpoint loads with trust_remote_code alone.

Weights are quantized per output channel (one scale, and for "zeropoint" one zero point, per
row of the [out, in] matrix); activations are quantized per row (per token) at run time and
multiplied in int8 with int32 accumulation (torch._int_mm: AVX-512 VNNI / AMX on x86 CPUs),
falling back to a float matmul of the same integers where no int8 kernel exists.
"llm-int8" (Dettmers et al., 2022) takes the activation columns holding a value with
|x| >= threshold out of the int8 product and multiplies them in the activation dtype with the
dequantized weight columns. `config.quantization` records the scheme and the quantized module
names; the model's `post_init` calls `quantize_linear_layers_`, so `from_pretrained` loads int8
weights directly. hf_ltg.quantization builds the user-facing entry points on this file.
The weight-only schemes ("int8-weight-only", "int4-weight-only": float activations, fewer bytes
per weight for decoding) live in the sibling `weight_only_ltg_gpt.py`; `quantize_linear_layers_`
builds either kind from the recorded scheme.

Copied into every GPT checkpoint beside the model file: imports only torch and its siblings.
"""

import torch
from torch import nn

from .weight_only_ltg_gpt import WEIGHT_ONLY_LAYERS

# activations quantized per token and multiplied in int8 (this file)
INT8_PRODUCT_SCHEMES = ("absmax", "zeropoint", "llm-int8")
QUANTIZATION_SCHEMES = INT8_PRODUCT_SCHEMES + tuple(WEIGHT_ONLY_LAYERS)


def quantize_absmax(tensor: torch.Tensor):
    """Symmetric int8 per row (last dim): scale = max|t| / 127, q = clamp(round(t / scale), -127, 127).

    Returns (q int8, scale float32 of shape tensor.shape[:-1]); t ~= q * scale.
    """
    tensor = tensor.float()
    scale = tensor.abs().amax(dim=-1, keepdim=True) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row stays exactly zero
    q = torch.round(tensor / scale).clamp_(-127, 127).to(torch.int8)
    return q, scale.squeeze(-1)


def quantize_zeropoint(tensor: torch.Tensor):
    """Asymmetric int8 per row (last dim): scale = (max - min) / 255, zero_point = round(-128 - min / scale),
    q = clamp(round(t / scale) + zero_point, -128, 127).

    The range is widened to contain 0 (as PyTorch's observers do), so zero is exact and the zero
    point fits in int8. Returns (q int8, scale float32, zero_point int8); t ~= (q - zero_point) * scale.
    """
    tensor = tensor.float()
    low = tensor.amin(dim=-1, keepdim=True).clamp(max=0)
    high = tensor.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = (high - low) / 255
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero_point = torch.round(-128 - low / scale).clamp_(-128, 127)
    q = (torch.round(tensor / scale) + zero_point).clamp_(-128, 127).to(torch.int8)
    return q, scale.squeeze(-1), zero_point.squeeze(-1).to(torch.int8)


_INT_MM_WORKS: dict = {}  # device type -> whether torch._int_mm gives the exact int32 product there


def _int_mm_works(device: torch.device) -> bool:
    """A one-time probe per device type: torch._int_mm exists, runs and is exact on a small product."""
    if device.type not in _INT_MM_WORKS:
        a = (torch.arange(32 * 64, device=device) % 255 - 127).to(torch.int8).reshape(32, 64)
        b = (torch.arange(64 * 16, device=device) * 7 % 255 - 127).to(torch.int8).reshape(16, 64)
        try:
            got = torch._int_mm(a, b.t())
            _INT_MM_WORKS[device.type] = bool(torch.equal(got.cpu(), a.cpu().long().mm(b.cpu().long().t()).int()))
        except (RuntimeError, AttributeError, NotImplementedError):
            _INT_MM_WORKS[device.type] = False
    return _INT_MM_WORKS[device.type]


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (M, K) int8 @ b (N, K) int8 transposed -> (M, N) int32, in int8 where torch has a working kernel."""
    if a.shape[0] > 0 and not torch.jit.is_tracing() and _int_mm_works(a.device):
        try:
            return torch._int_mm(a, b.t())
        except (RuntimeError, AttributeError, NotImplementedError):
            pass  # no int8 kernel for this shape (e.g. CUDA needs M > 16)
    return (a.float() @ b.float().t()).round_().to(torch.int32)


class LtgGptInt8Linear(nn.Module):
    """An `nn.Linear` with int8 weights (per-output-channel scales, optional zero points).

    State: `weight` int8 [out, in], `weight_scale` float32 [out], `weight_zero_point` int8 [out]
    ("zeropoint" only), `bias` in the model dtype. `forward` quantizes the input rows the same way
    as the weights ("llm-int8" uses absmax and keeps outlier columns in floating point).
    """

    def __init__(self, in_features, out_features, bias=True, scheme="absmax", threshold=6.0, device=None, dtype=None):
        super().__init__()
        if scheme not in INT8_PRODUCT_SCHEMES:
            raise ValueError(f"Unknown int8-product scheme {scheme!r}; choose one of {INT8_PRODUCT_SCHEMES} "
                             f"(the weight-only schemes {tuple(WEIGHT_ONLY_LAYERS)} have layers of their own).")
        if scheme == "llm-int8" and not (threshold is not None and threshold > 0):
            raise ValueError(
                f"The llm-int8 outlier threshold must be a positive number, got {threshold!r}; "
                "the default 6.0 is the LLM.int8() paper's value."
            )
        self.in_features, self.out_features = in_features, out_features
        self.scheme, self.threshold = scheme, float(threshold) if threshold is not None else None
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        if scheme == "zeropoint":
            self.register_buffer("weight_zero_point", torch.zeros(out_features, dtype=torch.int8, device=device))
        else:
            self.register_buffer("weight_zero_point", None)
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, scheme="absmax", threshold=6.0):
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, scheme, threshold,
                     device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            if scheme == "zeropoint":
                q, scale, zero_point = quantize_zeropoint(linear.weight)
                module.weight_zero_point.copy_(zero_point)
            else:
                q, scale = quantize_absmax(linear.weight)
            module.weight.copy_(q)
            module.weight_scale.copy_(scale)
            if linear.bias is not None:
                module.bias.copy_(linear.bias)
        return module

    def dequantized_weight(self, dtype=torch.float32) -> torch.Tensor:
        q = self.weight.to(torch.float32)
        if self.weight_zero_point is not None:
            q = q - self.weight_zero_point.to(torch.float32)[:, None]
        return (q * self.weight_scale.float()[:, None]).to(dtype)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape, dtype = hidden_states.shape, hidden_states.dtype
        x = hidden_states.reshape(-1, self.in_features)  # (M, K)
        if self.scheme == "zeropoint":
            out = self._zeropoint_matmul(x)
        elif self.scheme == "llm-int8":
            outliers = (x.abs() >= self.threshold).any(dim=0)  # (K,) feature columns kept in floating point
            if bool(outliers.any()):
                columns = outliers.nonzero().squeeze(1)
                weight_columns = self.weight[:, columns].to(dtype) * self.weight_scale.to(dtype)[:, None]
                out = self._absmax_matmul(x.masked_fill(outliers, 0)) + (x[:, columns] @ weight_columns.t()).float()
            else:
                out = self._absmax_matmul(x)
        else:
            out = self._absmax_matmul(x)
        out = out.to(dtype)
        if self.bias is not None:
            out = out + self.bias.to(dtype)
        return out.reshape(*shape[:-1], self.out_features)

    def _absmax_matmul(self, x):
        # quantize_absmax of the rows, with fewer kernel launches (this runs for every token)
        x = x.float()
        x_scale = x.abs().amax(dim=-1, keepdim=True).clamp_(min=1e-30) / 127  # (M, 1)
        xq = torch.round(x / x_scale).clamp_(-127, 127).to(torch.int8)
        return int8_matmul(xq, self.weight).float().mul_(x_scale).mul_(self.weight_scale.float())

    def _zeropoint_matmul(self, x):
        # x ~= sx (xq - zx), w ~= sw (q - zw):  x.w = sx sw (xq.q - zx sum(q) - zw sum(xq) + K zx zw), exact in int32
        xq, x_scale, x_zero = quantize_zeropoint(x)
        x_zero, w_zero = x_zero.to(torch.int32)[:, None], self.weight_zero_point.to(torch.int32)[None]
        acc = int8_matmul(xq, self.weight)
        acc -= x_zero * self._weight_row_sums()[None]
        acc -= w_zero * (xq.sum(dim=1, dtype=torch.int32)[:, None] - self.in_features * x_zero)
        return acc.float().mul_(x_scale[:, None]).mul_(self.weight_scale.float())

    def _weight_row_sums(self):
        # sum(q) per output row, cached: recomputing it would read the whole matrix a second time per call
        key = (self.weight.data_ptr(), self.weight._version)
        if getattr(self, "_row_sums_key", None) != key:
            self._row_sums = self.weight.sum(dim=1, dtype=torch.int32)
            self._row_sums_key = key
        return self._row_sums

    def extra_repr(self):
        threshold = f", threshold={self.threshold}" if self.scheme == "llm-int8" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, scheme={self.scheme}{threshold}")


def _quantization_prefix(model) -> str:
    # `modules` holds names as in the saved model; a bare LtgGptModel loading a head checkpoint
    # sees its own modules under the base prefix ("transformer.").
    prefix = model.base_model_prefix
    return "" if hasattr(model, prefix) else f"{prefix}."


def quantize_linear_layers_(model, quantization: dict) -> list[str]:
    """Replace, in place, each `nn.Linear` of `model` named in `quantization["modules"]` by an
    `LtgGptInt8Linear` (or, for a weight-only scheme, its `weight_only_ltg_gpt` layer); returns the
    replaced names. Real weights are quantized; weights on the meta device (`from_pretrained`) give
    empty quantized modules that the checkpoint then fills.
    """
    scheme, threshold = quantization.get("scheme"), quantization.get("threshold", 6.0)
    if scheme not in QUANTIZATION_SCHEMES:
        raise ValueError(f"The checkpoint's quantization scheme {scheme!r} is unknown to this model file; it knows "
                         f"{', '.join(QUANTIZATION_SCHEMES)} (a newer hf_ltg wrote it: update the model files).")
    weight_only = WEIGHT_ONLY_LAYERS.get(scheme)
    wanted = set(quantization.get("modules", ()))
    prefix = _quantization_prefix(model)
    replaced = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or f"{prefix}{name}" not in wanted:
            continue
        if weight_only is not None:
            new = (weight_only(module.in_features, module.out_features, module.bias is not None, device="meta",
                               dtype=module.weight.dtype) if module.weight.is_meta else weight_only.from_linear(module))
        elif module.weight.is_meta:
            new = LtgGptInt8Linear(module.in_features, module.out_features, module.bias is not None, scheme,
                                   threshold, device="meta", dtype=module.weight.dtype)
        else:
            new = LtgGptInt8Linear.from_linear(module, scheme, threshold)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        replaced.append(f"{prefix}{name}")
    return replaced
