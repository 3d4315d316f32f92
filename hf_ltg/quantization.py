"""Quantized inference: quantize a loaded model or a checkpoint folder, and measure what it costs.

Int8-product schemes (per-output-channel weights, per-row activations, int8 x int8 -> int32 products):
  absmax     symmetric:  scale = max|w| / 127, q = clamp(round(w / scale), -127, 127)
  zeropoint  asymmetric: scale = (max - min) / 255, zero_point = round(-128 - min / scale),
             q = clamp(round(w / scale) + zero_point, -128, 127)
  llm-int8   absmax, but activation columns with a value |x| >= threshold (default 6.0) are
             multiplied in floating point with the dequantized weight columns (LLM.int8()).
Weight-only schemes (activations stay in floating point; decoding reads fewer weight bytes per token):
  int8-weight-only  absmax per output channel, scale rounded to a bfloat16 value
  int4-weight-only  round-to-nearest between min and max per group of 32 inputs:
                    scale = (max - min) / 15, q = clamp(round((w - min) / scale), 0, 15)
                    (llama.cpp's Q4_1 block; `hf-ltg export --gguf-type q4_1` writes it unchanged)

The int8 module and the replacement logic live in the model's sibling file `int8_ltg_gpt.py`
(`LtgGptInt8Linear`, `quantize_linear_layers_`) and its sibling `weight_only_ltg_gpt.py`
(`LtgGptInt8WeightOnlyLinear`, `LtgGptInt4Linear`), which travel with every checkpoint, so that
quantized checkpoints load without hf_ltg; this module holds
the user-facing entry points and their error checks.
"""

import json
import os
from pathlib import Path

import torch
from torch import nn

from .checkpoint import atomic_directory
from .gpt.int8_ltg_gpt import (
    QUANTIZATION_SCHEMES,
    LtgGptInt8Linear,
    quantize_absmax,
    quantize_linear_layers_,
    quantize_zeropoint,
)
from .gpt.weight_only_ltg_gpt import (
    INT4_GROUP_SIZE,
    WEIGHT_ONLY_LAYERS,
    LtgGptInt4Linear,
    LtgGptInt8WeightOnlyLinear,
    quantize_int8_weight_only,
)

SCHEMES = QUANTIZATION_SCHEMES
QUANTIZED_LAYERS = (LtgGptInt8Linear, *WEIGHT_ONLY_LAYERS.values())
DEFAULT_THRESHOLD = 6.0
# Output heads stay in floating point unless include_lm_head=True: the LM head is the largest and
# most error-sensitive matrix (it is also tied to the token embedding); classifier heads are tiny.
HEAD_NAMES = ("lm_head", "score", "classifier")
# The int8 module lives in the GPT model file; another family needs its own copy to load quantized.
SUPPORTED_MODEL_TYPES = ("ltg_gpt",)

__all__ = [
    "DEFAULT_THRESHOLD",
    "SCHEMES",
    "LtgGptInt4Linear",
    "LtgGptInt8Linear",
    "LtgGptInt8WeightOnlyLinear",
    "checkpoint_size",
    "dequantize_weight",
    "is_quantized",
    "quantize_checkpoint",
    "quantize_model",
    "quantize_weight",
]


def check_scheme(scheme: str, threshold: float = DEFAULT_THRESHOLD) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"Unknown quantization scheme {scheme!r}; choose one of {', '.join(SCHEMES)}.")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
        raise ValueError(
            f"The outlier threshold must be a positive number, got {threshold!r}; the default "
            f"{DEFAULT_THRESHOLD} is the LLM.int8() paper's value (columns with |x| >= threshold stay in floating point)."
        )


def quantize_weight(weight: torch.Tensor, scheme: str = "absmax"):
    """(q int8, scale float32 [rows], zero_point int8 [rows] or None) of a [out, in] matrix, for the
    int8 schemes (4-bit groups: `weight_only_ltg_gpt.quantize_int4_groupwise`)."""
    check_scheme(scheme)
    if scheme == "int4-weight-only":
        raise ValueError("quantize_weight returns int8 rows; 4-bit weights come in groups: use "
                         "hf_ltg.gpt.weight_only_ltg_gpt.quantize_int4_groupwise.")
    if scheme == "zeropoint":
        return quantize_zeropoint(weight)
    if scheme == "int8-weight-only":
        q, scale = quantize_int8_weight_only(weight)
        return q, scale, None
    q, scale = quantize_absmax(weight)
    return q, scale, None


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> torch.Tensor:
    q = q.float()
    if zero_point is not None:
        q = q - zero_point.float()[:, None]
    return q * scale.float()[:, None]


def is_quantized(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "quantization", None)) or any(
        isinstance(m, QUANTIZED_LAYERS) for m in model.modules()
    )


def quantize_model(model, scheme: str = "absmax", threshold: float = DEFAULT_THRESHOLD,
                   include_lm_head: bool = False):
    """Quantize every `nn.Linear` of an hf_ltg model in place (the output head only if
    `include_lm_head`), record it in `model.config.quantization`, and return the model.

    `save_pretrained` then writes the quantized weights + scales, which `from_pretrained` loads quantized.
    """
    check_scheme(scheme, threshold)
    if is_quantized(model):
        current = getattr(model.config, "quantization", None) or {}
        raise ValueError(
            f"The model is already quantized (scheme {current.get('scheme', 'unknown')!r}); quantize the "
            "original floating-point checkpoint instead of quantizing twice."
        )
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"Quantization supports the model types {SUPPORTED_MODEL_TYPES} (hf_ltg's GPT family), got "
            f"{type(model).__name__} (model_type {model_type!r}); LTG-BERT checkpoints are not supported yet."
        )
    prefix = "" if hasattr(model, model.base_model_prefix) else f"{model.base_model_prefix}."
    heads = [] if include_lm_head else list(HEAD_NAMES)
    modules = [
        f"{prefix}{name}" for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.split(".")[0] not in heads
    ]
    if not modules:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to quantize.")
    if scheme == "int4-weight-only":
        odd = [name for name, module in model.named_modules()
               if f"{prefix}{name}" in modules and module.in_features % INT4_GROUP_SIZE]
        if odd:
            raise ValueError(f"int4-weight-only groups {INT4_GROUP_SIZE} inputs, but {', '.join(odd)} "
                             f"{'has' if len(odd) == 1 else 'have'} an input size that is not a multiple of "
                             f"{INT4_GROUP_SIZE}; use int8-weight-only for this model.")
    quantization = {"scheme": scheme, "threshold": float(threshold), "include_lm_head": bool(include_lm_head),
                    "modules": modules}
    replaced = quantize_linear_layers_(model, quantization)
    assert sorted(replaced) == sorted(modules), (replaced, modules)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(output, QUANTIZED_LAYERS) and getattr(model.config, "tie_word_embeddings", False):
        # The quantized head is no longer the token embedding: untie, or loading would tie it back.
        model.config.tie_word_embeddings = False
        model.all_tied_weights_keys = {}
    model.config.quantization = quantization
    return model


def _load_float_model(src):
    from transformers import AutoConfig

    from . import gpt

    config = AutoConfig.from_pretrained(src)
    if getattr(config, "quantization", None):
        raise ValueError(
            f"{src} is already quantized (scheme {config.quantization.get('scheme')!r}); "
            "quantize the original floating-point checkpoint instead."
        )
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{src} holds a {config.model_type!r} model; quantization supports {SUPPORTED_MODEL_TYPES} "
            "(hf_ltg's GPT family) only, LTG-BERT is not supported yet."
        )
    classes = {cls.__name__: cls for cls in gpt.AUTO_MODEL_CLASSES.values()}
    architecture = (getattr(config, "architectures", None) or ["LtgGptForCausalLM"])[0]
    if architecture not in classes:
        raise ValueError(f"{src} holds a {architecture}, which hf-ltg quantize does not know; use one of {sorted(classes)}.")
    return classes[architecture].from_pretrained(src, dtype=torch.float32)


def quantize_checkpoint(src, out, scheme: str = "absmax", threshold: float = DEFAULT_THRESHOLD,
                        include_lm_head: bool = False) -> Path:
    """Write a quantized copy of checkpoint folder `src` to `out` (atomically), with its tokenizer
    and generation config; it loads quantized with `from_pretrained(out, trust_remote_code=True)`."""
    check_scheme(scheme, threshold)
    src = Path(src)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} is not a checkpoint folder (no config.json).")
    model = _load_float_model(src)
    quantize_model(model, scheme, threshold, include_lm_head)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        for name in os.listdir(src):  # tokenizer and generation files, unchanged
            if name.startswith(("tokenizer", "special_tokens_map", "vocab", "merges", "generation_config")):
                (tmp / name).write_bytes((src / name).read_bytes())
    return Path(out)


def checkpoint_size(folder) -> int:
    """Bytes of the weight files (safetensors) of a checkpoint folder."""
    folder = Path(folder)
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def describe(folder) -> dict:
    """The recorded quantization of a checkpoint folder (None for a floating-point one)."""
    return json.loads((Path(folder) / "config.json").read_text()).get("quantization")
