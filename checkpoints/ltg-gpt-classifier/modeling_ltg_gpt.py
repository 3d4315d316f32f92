"""LTG GPT: a GPT-2 style decoder as a native Hugging Face model.

Pre-norm blocks `x + attn(LN(x))`, `x + mlp(LN(x))`, learned absolute positions, a final
LayerNorm and an LM head tied to the token embedding: GPT-2 exactly, with a fused q/k/v
`nn.Linear` instead of GPT-2's transposed `Conv1D`.

This file is copied into every checkpoint next to `configuration_ltg_gpt.py`: it imports only
torch, transformers and its sibling, never hf_ltg.
"""

import math
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel

from .configuration_ltg_gpt import LtgGptConfig

# transformers 5.24 renamed the KV cache from `past_key_values` to `cache` (forward arguments,
# output fields, generate). This file runs on both sides of the rename: forwards take either
# name and outputs use the field the installed version declares.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def resolve_cache(past_key_values: Cache | None, cache: Cache | None) -> Cache | None:
    """The KV cache passed under either name (transformers >= 5.24 `cache`, earlier ones and peft
    `past_key_values`)."""
    if past_key_values is not None and cache is not None and past_key_values is not cache:
        raise ValueError(
            "Got two different KV caches, `cache` and `past_key_values`: pass one of them. (peft <= 0.21 "
            "prefix tuning does this in generate on transformers >= 5.24; use transformers 5.23 with it.)"
        )
    return cache if cache is not None else past_key_values


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
    op = torch.library.custom_op(
        "ltg_gpt::dropout_scale", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,)
    )(_dropout_scale)
    op.register_fake(lambda x, p: torch.empty_like(x))
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
    `torch.compile` the mask is a custom op (same numbers as eager). CUDA uses `F.dropout`.
    """
    if not training or p == 0.0:
        return x
    compiling = torch.compiler.is_compiling()
    if x.device.type != "cpu" or p >= 1.0 or (compiling and _DROPOUT_SCALE_OP is None):
        return F.dropout(x, p, training=True)
    return x * (_DROPOUT_SCALE_OP(x.detach(), p) if compiling else _dropout_scale(x, p))


class Dropout(nn.Dropout):
    """`nn.Dropout` through `fast_dropout`."""

    def forward(self, x):
        return fast_dropout(x, self.p, self.training)


# oneDNN's linear (the kernel Inductor uses on CPU) and its weight reordering; private, so looked up
# and not relied upon
_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None
_ONEDNN_PACK = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None) if _ONEDNN_LINEAR is not None else None
# Linear -> (the weight's identity and version, its reordered copy); see `LtgGptPreTrainedModel.pack_cpu_weights`.
# Outside the modules, so that copying or pickling a model never meets oneDNN's opaque tensors.
_PACKED_WEIGHTS = weakref.WeakKeyDictionary()


# True for tensors inside torch.func transforms (grad, vmap), which a plain autograd.Function cannot serve
_IS_FUNCTORCH_WRAPPED = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", lambda t: False)


class _OneDnnLinearFunction(torch.autograd.Function):
    """y = x @ weight.T + bias with all three products (forward, input and weight gradients) in
    oneDNN. For fp32 training on CPU: 1.25-1.8x faster than MKL's products for GPT-2 small's layers."""

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
        if ctx.needs_input_grad[0]:
            grad_x = _ONEDNN_LINEAR(grad, weight.t(), None, "none", [], "")
        if ctx.needs_input_grad[1]:
            grad_w = _ONEDNN_LINEAR(grad_rows.t(), x.reshape(-1, x.shape[-1]).t(), None, "none", [], "")
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_rows.sum(0)
        return grad_x, grad_w, grad_b


class Linear(nn.Linear):
    """`nn.Linear` whose products on CPU run through oneDNN.

    `F.linear` on fp32 CPU tensors calls MKL, whose product with a few rows (one per sequence when
    decoding) stays on one core; oneDNN's linear uses every core and is 1.6-1.9x faster for GPT-2
    small's layers on 2 cores, at any row count (bf16: 1.0-1.2x). fp32 training goes through
    `_OneDnnLinearFunction` for the same reason. Autocast, other dtypes and devices, tensor-subclass
    weights (torchao) and compiled graphs use `F.linear` (under autocast, bf16 products are oneDNN's
    already). With `pack_weight` set, inference uses a copy of the weight reordered into oneDNN's
    blocked layout, made once and remade when the weight changes: without it oneDNN reorders a bf16
    weight on every call.
    """

    pack_weight = False

    def forward(self, x):
        weight, bias = self.weight, self.bias
        if (
            _ONEDNN_LINEAR is not None
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.bfloat16)
            and weight.dtype == x.dtype
            and (bias is None or bias.dtype == x.dtype)
            and type(weight.data) is torch.Tensor
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()
        ):
            needs_grad = torch.is_grad_enabled() and (
                x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
            )
            if not needs_grad:
                if self.pack_weight and _ONEDNN_PACK is not None:
                    weight = self._packed(weight)
                return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")
            if x.dtype == torch.float32 and not (_IS_FUNCTORCH_WRAPPED(x) or _IS_FUNCTORCH_WRAPPED(weight)):
                return _OneDnnLinearFunction.apply(x, weight, bias)
        return F.linear(x, weight, bias)

    def _packed(self, weight):
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.shape)
        entry = _PACKED_WEIGHTS.get(self)
        if entry is None or entry[0] != key:
            entry = _PACKED_WEIGHTS[self] = (key, _ONEDNN_PACK(weight.detach(), 1))  # laid out for a few rows
        return entry[1]


def eager_attention_forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Reference attention. query (B, nh, T, hs), key/value (B, nh, S, hs) -> (B, T, nh, hs)."""
    weights = torch.matmul(query * scaling, key.transpose(-1, -2))  # (B, nh, T, S); scaling q is the smaller pass
    if attention_mask is None and query.shape[2] > 1:
        attention_mask = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=query.device)
        attention_mask = attention_mask.tril(key.shape[2] - query.shape[2])
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        weights = weights.masked_fill_(~attention_mask, torch.finfo(weights.dtype).min)
    elif attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1)  # low-precision inputs are accumulated in fp32 anyway
    weights = fast_dropout(weights, dropout, module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, `chunk` rows at a time.

    hidden (N, D), weight (V, D), targets (N,) with -100 for ignored rows; the summed loss is
    divided by `divisor` (the number of targets, or the Trainer's `num_items_in_batch`). The fp32
    (N, V) logits never exist whole: each chunk's logits (in eager mode in a reused buffer, except
    fp32 on CPU, where oneDNN's product writes a fresh one) are turned into the loss and, in the
    same pass, into the gradient of `hidden` (softmax minus one-hot), so backward
    only scales the gradients. Under autocast the products run in the autocast dtype and the
    softmax in fp32, as autocast would do.

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
            run = cls._compiled if torch.compiler.is_compiling() else cls._eager
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
        onednn = accumulate and _ONEDNN_LINEAR is not None and h.device.type == "cpu"
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


class LtgGptAttention(nn.Module):
    """Causal multi-head self-attention with a fused q/k/v projection."""

    def __init__(self, config: LtgGptConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.is_causal = True
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.qkv_proj = Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.out_proj = Linear(config.hidden_size, config.hidden_size)
        self.resid_dropout = Dropout(config.hidden_dropout)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, output_attentions=False, **kwargs):
        batch, length, width = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, T, hs)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)  # (B, nh, S, hs)

        attention_dropout = self.config.attention_dropout if self.training else 0.0
        attention_interface = eager_attention_forward
        # Only the eager path computes the weights. On CPU, SDPA with dropout falls back to an
        # unfused kernel with slow dropout: the eager path with `fast_dropout` beats it.
        cpu_dropout = attention_dropout > 0 and query.device.type == "cpu"
        if not output_attentions and not (cpu_dropout and self.config._attn_implementation == "sdpa"):
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        output, weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        output = self.resid_dropout(self.out_proj(output.reshape(batch, length, width)))
        return output, weights


class LtgGptMLP(nn.Module):
    def __init__(self, config: LtgGptConfig):
        super().__init__()
        self.fc_in = Linear(config.hidden_size, config.intermediate_size)
        # GPT-2's "gelu_new" is the tanh approximation of GELU: the fused kernel computes the same
        # function in one pass (transformers' NewGELUActivation takes eight, and saves their outputs).
        self.act = ACT2FN["gelu_pytorch_tanh" if config.activation == "gelu_new" else config.activation]
        self.fc_out = Linear(config.intermediate_size, config.hidden_size)
        self.dropout = Dropout(config.hidden_dropout)

    def forward(self, hidden_states):
        return self.dropout(self.fc_out(self.act(self.fc_in(hidden_states))))


class LtgGptBlock(GradientCheckpointingLayer):
    def __init__(self, config: LtgGptConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = LtgGptAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = LtgGptMLP(config)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, output_attentions=False, **kwargs):
        attn_output, attn_weights = self.attn(
            self.ln_1(hidden_states),
            attention_mask=attention_mask,
            past_key_values=past_key_values,
            output_attentions=output_attentions,
            **kwargs,
        )
        hidden_states = hidden_states + attn_output
        hidden_states = hidden_states + self.mlp(self.ln_2(hidden_states))
        return hidden_states, attn_weights


class LtgGptPreTrainedModel(PreTrainedModel):
    config_class = LtgGptConfig
    base_model_prefix = "transformer"
    main_input_name = "input_ids"
    _no_split_modules = ["LtgGptBlock"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True

    def pack_cpu_weights(self, enabled: bool = True):
        """Keep oneDNN-reordered copies of the linear weights for CPU inference, or free them.

        bf16 decoding on CPU reads every weight once per token, and oneDNN reorders a plain bf16
        weight on each call; with packed copies, batch-1 bf16 `generate` is about 1.5x faster (fp32
        gains little). The price is a second copy of the linear weights (and of the tied
        embedding) in memory while enabled. Copies are made on first use and remade when a weight
        changes; training, autocast and compiled graphs never use them. Returns the model.
        """
        if enabled and _ONEDNN_PACK is None:
            raise RuntimeError(
                "pack_cpu_weights needs oneDNN's weight reordering (torch.ops.mkldnn._reorder_linear_weight), "
                "which this torch build does not have; run without packing."
            )
        for module in self.modules():
            if isinstance(module, Linear):
                module.pack_weight = enabled
                if not enabled:
                    _PACKED_WEIGHTS.pop(module, None)
        return self

    @torch.no_grad()
    def _init_weights(self, module):
        """GPT-2 initialisation: N(0, 0.02), residual projections N(0, 0.02 / sqrt(2 * n_layer))."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        if isinstance(module, (LtgGptAttention, LtgGptMLP)):
            projection = module.out_proj if isinstance(module, LtgGptAttention) else module.fc_out
            if isinstance(projection, nn.Linear):  # not an int8 module (see quantize_linear_layers_)
                init.normal_(projection.weight, mean=0.0, std=std / math.sqrt(2 * self.config.num_hidden_layers))

    def post_init(self):
        super().post_init()
        if getattr(self.config, "quantization", None):  # an int8 checkpoint: see the section at the end
            quantize_linear_layers_(self, self.config.quantization)


class LtgGptModel(LtgGptPreTrainedModel):
    """The decoder stack without a head; returns the final (normalised) hidden states."""

    def __init__(self, config: LtgGptConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.drop = Dropout(config.embedding_dropout)
        self.h = nn.ModuleList(LtgGptBlock(config, i) for i in range(config.num_hidden_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, new_embeddings):
        self.wte = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ):
        past_key_values = resolve_cache(past_key_values, cache)
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False  # the recomputation would write the cache twice

        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError(
                "Pass exactly one of input_ids and inputs_embeds "
                f"(got {'both' if input_ids is not None else 'neither'})."
            )
        if input_ids is not None:
            self._check_token_ids(input_ids)
            inputs_embeds = self.wte(input_ids)
        batch, length = inputs_embeds.shape[:2]

        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + length, device=inputs_embeds.device)[None]
        self._check_positions(past_length + length)
        if attention_mask is not None and attention_mask.ndim == 2:
            expected = (batch, past_length + length)
            if tuple(attention_mask.shape) != expected:
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)} but the input needs {expected} "
                    f"(batch, cached + new tokens)."
                )

        hidden_states = self.drop(inputs_embeds + self.wpe(position_ids))  # (B, T, D)
        # the cache goes by position: its keyword is `past_key_values` before transformers 5.24, `cache` after
        causal_mask = create_causal_mask(self.config, inputs_embeds, attention_mask, past_key_values, position_ids)

        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for block in self.h:
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, weights = block(
                hidden_states,
                attention_mask=causal_mask,
                past_key_values=past_key_values,
                output_attentions=output_attentions,
                **kwargs,
            )
            if output_attentions:
                all_attentions += (weights,)
        hidden_states = self.ln_f(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        returned_cache = past_key_values if use_cache else None
        if not return_dict:
            return tuple(v for v in (hidden_states, returned_cache, all_hidden_states, all_attentions) if v is not None)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            **{CACHE_FIELD: returned_cache},
        )

    def _check_token_ids(self, input_ids):
        # An out-of-range id would otherwise be an opaque IndexError (or a device assert on GPU).
        if torch.compiler.is_compiling() or input_ids.numel() == 0:
            return
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= self.config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"input_ids contains token id {bad}, outside the vocabulary [0, {self.config.vocab_size}); "
                "check that the tokenizer matches the model (len(tokenizer) <= config.vocab_size)."
            )

    def _check_positions(self, total_length):
        if total_length > self.config.max_position_embeddings:
            raise ValueError(
                f"The input needs {total_length} positions (cached + new tokens) but the model has "
                f"max_position_embeddings={self.config.max_position_embeddings}; truncate the input to at most "
                f"{self.config.max_position_embeddings} tokens or use a sliding window with a stride."
            )


class LtgGptForCausalLM(LtgGptPreTrainedModel, GenerationMixin):
    """GPT with its language-modelling head.

    Training-only shortcut: in training mode (`model.train()`), a forward with `labels` returns
    the loss but `logits=None`. The loss then comes from the hidden states in chunks of rows
    (`ChunkedLinearCrossEntropy`), so the (batch, length, vocabulary) fp32 logits, their
    log-softmax and their gradient are never materialised (600 MB for GPT-2 small at 4 x 256
    tokens). In evaluation mode (the Trainer's `evaluate`/`predict` switch to it), without
    `labels`, or with an adapter on `lm_head`, logits are computed and returned as usual.
    """

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: LtgGptConfig):
        super().__init__(config)
        self.transformer = LtgGptModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        cache: Cache | None = None,
        **kwargs,
    ):
        """`labels` are the input ids themselves (-100 to ignore); the loss shifts them."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        if labels is not None and self._loss_without_logits(logits_to_keep):
            logits, loss = None, self._chunked_loss(hidden_states, labels, **kwargs)
        else:
            if isinstance(logits_to_keep, int):
                keep = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
                hidden_states = hidden_states[:, keep]
            else:
                hidden_states = hidden_states[:, logits_to_keep]
            logits = self.lm_head(hidden_states)
            loss = None
            if labels is not None:
                loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)

        if not return_dict:
            rest = tuple(v for v in (getattr(outputs, CACHE_FIELD), outputs.hidden_states, outputs.attentions) if v is not None)
            return tuple(v for v in (loss, logits) if v is not None) + rest
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )

    def _loss_without_logits(self, logits_to_keep):
        """Training on labels with a plain LM head (not wrapped by an adapter or an offloading hook)."""
        head = self.lm_head
        return (
            self.training
            and isinstance(logits_to_keep, int)
            and logits_to_keep == 0
            and type(head) is Linear
            and head.bias is None
            and not (head._forward_hooks or head._forward_pre_hooks or "forward" in head.__dict__)
        )

    def _chunked_loss(self, hidden_states, labels, num_items_in_batch=None, shift_labels=None, **kwargs):
        """The causal-LM loss of `self.loss_function`, from hidden states (B, T, D) in chunks of rows."""
        if shift_labels is None:
            shift_labels = F.pad(labels, (0, 1), value=-100)[:, 1:]  # tokens < n predict n
        targets = shift_labels.reshape(-1).to(hidden_states.device)
        hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
        divisor = (targets != -100).sum() if num_items_in_batch is None else num_items_in_batch
        if torch.is_tensor(divisor):
            divisor = divisor.to(hidden.device)
        # about 64 MB of fp32 logits per chunk, equal chunks
        chunks = max(1, math.ceil(hidden.shape[0] * self.config.vocab_size / 2**24))
        chunk = math.ceil(hidden.shape[0] / chunks)
        need_grads = torch.is_grad_enabled() and (hidden.requires_grad or self.lm_head.weight.requires_grad)
        return ChunkedLinearCrossEntropy.apply(hidden, self.lm_head.weight, targets, divisor, chunk, need_grads)


class LtgGptForSequenceClassification(LtgGptPreTrainedModel):
    """Classifies from the last real token (left or right padding), as GPT-2 does."""

    # The loss is a per-example mean, not a token sum: the Trainer must not pass
    # `num_items_in_batch` and must divide by gradient-accumulation steps itself.
    accepts_loss_kwargs = False

    def __init__(self, config: LtgGptConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = LtgGptModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=config.score_bias)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ):
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state  # (B, T, D)
        last = self._last_token_index(input_ids, attention_mask, hidden_states)
        pooled_logits = self.score(hidden_states[torch.arange(hidden_states.shape[0], device=last.device), last])

        loss = None
        if labels is not None:
            loss = self._classification_loss(pooled_logits, labels.to(pooled_logits.device))
        if not return_dict:
            rest = tuple(v for v in (getattr(outputs, CACHE_FIELD), outputs.hidden_states, outputs.attentions) if v is not None)
            return ((loss,) if loss is not None else ()) + (pooled_logits,) + rest
        return SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )

    def _last_token_index(self, input_ids, attention_mask, hidden_states):
        """Index of the rightmost real token of each row, shape (B,)."""
        batch, length = hidden_states.shape[:2]
        positions = torch.arange(length, device=hidden_states.device)
        if attention_mask is not None and attention_mask.ndim == 2:
            keep = attention_mask[:, -length:].to(hidden_states.device).bool()
            return (positions * keep).argmax(-1)
        if self.config.pad_token_id is None or input_ids is None:
            if batch == 1:
                return torch.full((1,), length - 1, device=hidden_states.device)
            raise ValueError(
                f"Sequence classification of a batch of {batch} needs to know where each row ends: pass an "
                "attention_mask, or set config.pad_token_id to the tokenizer's pad id (and pass input_ids)."
            )
        keep = (input_ids != self.config.pad_token_id).to(hidden_states.device)
        return (positions * keep).argmax(-1)

    def _classification_loss(self, logits, labels):
        """Regression, single-label or multi-label loss, chosen as transformers does."""
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype))
            return F.mse_loss(logits, labels.to(logits.dtype))
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class LtgGptForTokenClassification(LtgGptPreTrainedModel):
    def __init__(self, config: LtgGptConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = LtgGptModel(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout
        self.dropout = Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ):
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config, **kwargs)
        if not return_dict:
            rest = tuple(v for v in (outputs.hidden_states, outputs.attentions) if v is not None)
            return ((loss,) if loss is not None else ()) + (logits,) + rest
        return TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


# `save_pretrained` of any class copies this file and its sibling; the config's default
# auto_map already names every head.
LtgGptConfig.register_for_auto_class()
LtgGptModel.register_for_auto_class("AutoModel")
LtgGptForCausalLM.register_for_auto_class("AutoModelForCausalLM")
LtgGptForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
LtgGptForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")


# ---------------------------------------------------------------------------------------------
# Int8 inference (hf_ltg.quantization builds on this section; it lives here so that a quantized
# checkpoint loads with trust_remote_code and nothing else).
#
# Weights are quantized per output channel (one scale, and for "zeropoint" one zero point, per
# row of the [out, in] matrix); activations are quantized per row (per token) at run time and
# multiplied in int8 with int32 accumulation (torch._int_mm: AVX-512 VNNI / AMX on x86 CPUs),
# falling back to a float matmul of the same integers where no int8 kernel exists.
# "llm-int8" (Dettmers et al., 2022) takes the activation columns holding a value with
# |x| >= threshold out of the int8 product and multiplies them in the activation dtype with the
# dequantized weight columns. `config.quantization` records the scheme and the quantized module
# names; `post_init` rebuilds those modules, so `from_pretrained` loads int8 weights directly.
# ---------------------------------------------------------------------------------------------

QUANTIZATION_SCHEMES = ("absmax", "zeropoint", "llm-int8")


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


def int8_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (M, K) int8 @ b (N, K) int8 transposed -> (M, N) int32, in int8 where torch has a kernel."""
    if a.shape[0] > 0:
        try:
            return torch._int_mm(a, b.t())
        except (RuntimeError, AttributeError, NotImplementedError):
            pass  # no int8 kernel for this device or shape (e.g. CUDA needs M > 16)
    return (a.float() @ b.float().t()).round_().to(torch.int32)


class LtgGptInt8Linear(nn.Module):
    """An `nn.Linear` with int8 weights (per-output-channel scales, optional zero points).

    State: `weight` int8 [out, in], `weight_scale` float32 [out], `weight_zero_point` int8 [out]
    ("zeropoint" only), `bias` in the model dtype. `forward` quantizes the input rows the same way
    as the weights ("llm-int8" uses absmax and keeps outlier columns in floating point).
    """

    def __init__(self, in_features, out_features, bias=True, scheme="absmax", threshold=6.0, device=None, dtype=None):
        super().__init__()
        if scheme not in QUANTIZATION_SCHEMES:
            raise ValueError(f"Unknown quantization scheme {scheme!r}; choose one of {QUANTIZATION_SCHEMES}.")
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
    `LtgGptInt8Linear`; returns the replaced names. Real weights are quantized; weights on the meta
    device (`from_pretrained`) give empty int8 modules that the checkpoint then fills.
    """
    scheme, threshold = quantization.get("scheme"), quantization.get("threshold", 6.0)
    wanted = set(quantization.get("modules", ()))
    prefix = _quantization_prefix(model)
    replaced = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or f"{prefix}{name}" not in wanted:
            continue
        if module.weight.is_meta:
            new = LtgGptInt8Linear(module.in_features, module.out_features, module.bias is not None, scheme,
                                   threshold, device="meta", dtype=module.weight.dtype)
        else:
            new = LtgGptInt8Linear.from_linear(module, scheme, threshold)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        replaced.append(f"{prefix}{name}")
    return replaced
