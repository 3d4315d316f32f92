"""NorBERT4 (LTG, 2025): a GPT-BERT trained on masked and causal objectives, with every head.

A port of the release's Hub code (`modeling_gptbert.py`, mirrored in ltgoslo/NorBERT under
`norbert4/huggingface_prototype/`) that computes what it computes, plus what it lacks: a KV cache
for `generate()`, transformers' attention registry (eager, sdpa, flash attention), no dtype
casts of its own, gradient checkpointing.

The model, top to bottom:
- embedding: word embedding -> LayerNorm without parameters -> x (word_scale + 1), dropout;
- each layer mixes its inputs from the hidden state h and the embedding output e with learned
  weights normalised by their mean absolute value (`lambdas_*`): values from
  lv0 h + lv1 e, queries/keys from lq0 h + lq1 e, each with its own parameter-free pre-norm;
  a fused q/k projection, per-head LayerNorm on q and k times (q_scale + 1) / (k_scale + 1),
  rotary positions (base `rope_theta` on global layers, `local_rope_theta` on the others),
  sliding-window attention, a parameter-free norm before `out_proj`; the feed-forward reads
  lm0 a + lm1 h + lm2 e (a: attention output): norm, GeGLU, norm, `down_proj`; the layer's
  output is lo0 f + lo1 a + lo2 h + lo3 e (f: feed-forward output). No final norm.
- LM head: norm, projection, GELU (tanh), norm, the word embedding (tied) as output projection
  with its own bias and per-input-feature scale, then the soft cap 30 sigmoid(x / 7.5).

The release's linear layers scale their weight per input feature, `W (scale + 1)`, at every
forward. Here those are plain `nn.Linear` layers holding the product (the converter multiplies
once, as the release does at each forward), so peft, quantisation and export meet ordinary
linears. Only the tied output projection keeps its scale (`lm_head.decoder_scale`, applied to
its input) so that it can share the word embedding.

Modes. NorBERT4 runs bidirectionally (masked mode) or causally (causal mode) with the same
weights. `Norbert4ForCausalLM` is always causal. Every other class follows `config.is_decoder`
(default False: masked mode), and `Norbert4Model.forward(is_causal=...)` overrides it per call.
In both modes hidden state i predicts token i + 1: `Norbert4ForMaskedLM` returns the release's
shifted logits (position i holds the prediction made at i - 1, position 0 a BOS column: 1.0
at `bos_token_id`, 0 elsewhere), so `[MASK]` positions and labels keep BERT's convention and
the fill-mask pipeline works; its loss skips position 0. The shift is by index, as the
release's: after left padding the first real token holds a prediction made at padding (pad
masked-LM and classification inputs on the right, as tokenizers do by default; the sequence
classifier, like the release's, reads the first token).

Windows. Layer i is global when (i + 1) % local_global_ratio == 0 (window
`global_window_length`), local otherwise (`local_window_length`). Masked mode attends within
the window on both sides, causal mode only backwards. `config.window_edge` "flash" (default)
keeps |i - j| <= w - 1, as the release's flash-attn path that trained the model; "padded" keeps
|i - j| <= w, as the release's padded path. Windows count token indices; they equal the
release's counts of real tokens wherever padding is one block (left or right).

Positions. Without `position_ids`, a 2-D `attention_mask` decides them (each token's position is
the number of real tokens before it, as the release's flash-attn path sees each sequence), so a
left-padded row gets the logits and greedy tokens it gets alone. The release's padded path
numbers padding too: with right padding (the tokenizer's default) the two agree.

The KV cache keeps every key of every layer (a `DynamicCache`, or a `StaticCache` with
`cache_implementation="static"`); the windows are applied by the masks.

This file is copied into every checkpoint: it imports only torch, transformers and its
sibling configuration file.
"""

import math
import types

import torch
from torch import nn
from torch.nn import functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_norbert4 import Norbert4Config

try:  # transformers >= 5: initialisers that skip tensors loaded from a checkpoint
    from transformers import initialization as init
except ImportError:  # transformers 4.x: torch.nn.init, skipping tensors flagged as loaded as 5.x's helpers do
    def _skip_loaded(initialise):
        def wrapped(tensor, *args, **kwargs):
            return tensor if getattr(tensor, "_is_hf_initialized", False) else initialise(tensor, *args, **kwargs)
        return wrapped

    init = types.SimpleNamespace(**{name: _skip_loaded(getattr(nn.init, name)) for name in ("trunc_normal_", "zeros_", "ones_")})

# transformers 5.24 renamed the KV cache from `past_key_values` to `cache` (forward arguments,
# output fields, generate). This file runs on both sides of the rename: forwards take either
# name and outputs use the field the installed version declares.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

# The release's soft cap of the LM logits: SOFT_CAP * sigmoid(logits / SOFT_CAP_TEMPERATURE).
SOFT_CAP = 30.0
SOFT_CAP_TEMPERATURE = 7.5


def resolve_cache(past_key_values: Cache | None, cache: Cache | None) -> Cache | None:
    """The KV cache passed under either name (transformers >= 5.24 `cache`, earlier ones and peft
    `past_key_values`)."""
    if past_key_values is not None and cache is not None and past_key_values is not cache:
        raise ValueError(
            "Got two different KV caches, `cache` and `past_key_values`: pass one of them (peft <= 0.21's "
            "prefix tuning passes its prefix as `past_key_values`)."
        )
    return cache if cache is not None else past_key_values


def positions_from_mask(attention_mask, past_length: int, length: int, device) -> torch.LongTensor:
    """Positions of the new tokens, [B, T] or [1, T]: where a 2-D attention mask covers the cached
    and new tokens, the count of real tokens before each one (padding takes none); otherwise
    past_length, past_length + 1, ..."""
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
        positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        return positions[:, -length:]
    return torch.arange(past_length, past_length + length, device=device)[None]


def rotary_cos_sin(positions, head_size: int, theta: float):
    """cos and sin of the rotary angles, [B or 1, 1, T, head_size] fp32, as the release's table:
    frequencies theta^(-2k/d), the angle halves repeated (rotate-half layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_size, 2, dtype=torch.float32, device=positions.device) / head_size))
    angles = positions[..., None].float() * inv_freq  # [B, T, d/2]
    angles = torch.cat([angles, angles], dim=-1)[:, None]  # [B, 1, T, d]
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """Rotate [B, H, T, d] by the angles (computed in fp32, returned in x's dtype)."""
    hidden = x.float()
    half = x.size(-1) // 2
    rotated = torch.cat([-hidden[..., half:], hidden[..., :half]], dim=-1)
    return (hidden * cos + rotated * sin).type_as(x)


def window_keep_mask(padding_mask, batch: int, past_length: int, length: int, reach: int, is_causal: bool,
                     device, fill_empty_rows: bool):
    """Boolean [B, 1, Tq, Tk] mask of the keys each new token sees (Tk = cached + new tokens), or
    None when it sees all: keys within `reach` token indices (|i - j| <= reach), only earlier ones
    in causal mode, never padding. `fill_empty_rows` lets a query that sees no key (a padding
    query before any real token) see every key instead, so that SDPA gives no NaN there; its
    output is never read by a real token."""
    key_length = past_length + length
    if not is_causal and padding_mask is None and reach >= key_length - 1:
        return None
    query_index = torch.arange(past_length, key_length, device=device)
    distance = query_index[:, None] - torch.arange(key_length, device=device)[None, :]  # [Tq, Tk]
    keep = distance.abs() <= reach
    if is_causal:
        keep = keep & (distance >= 0)
    keep = keep[None, None]
    if padding_mask is not None:
        keep = keep & padding_mask.to(device=device, dtype=torch.bool)[:, None, None, :]
    if fill_empty_rows:
        keep = keep | ~keep.any(dim=-1, keepdim=True)
    return keep.expand(batch, 1, length, key_length)


def eager_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Softmax attention; `attention_mask` is a boolean keep-mask [B, 1, Tq, Tk] (or None).

    Masked keys get -inf before the softmax and exactly 0 after it, so a query that sees no key
    (padding before a left-padded prompt) outputs zeros, as the release's masked softmax does.
    """
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # [B, H, Tq, Tk]
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if attention_mask is not None:
        probs = probs.masked_fill(~attention_mask, 0.0)
    probs = F.dropout(probs, p=dropout, training=module.training)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()  # [B, Tq, H, dv]
    return output, probs


def _is_flash(implementation: str) -> bool:
    return "flash" in implementation


class Norbert4Embedding(nn.Module):
    """Word embeddings, normalised without parameters and scaled per feature; no positions."""

    def __init__(self, config: Norbert4Config):
        super().__init__()
        self.word_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.word_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.word_scale = nn.Parameter(torch.zeros(config.hidden_size))
        self.dropout = nn.Dropout(config.embedding_dropout)

    def forward(self, inputs_embeds):
        """`inputs_embeds`: raw word embeddings [B, T, D]."""
        return self.dropout(self.word_norm(inputs_embeds) * (self.word_scale + 1.0))


class Norbert4Attention(nn.Module):
    """Sliding-window self-attention with normalised, scaled queries and keys and rotary positions."""

    def __init__(self, config: Norbert4Config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.is_causal = bool(config.is_decoder)  # each forward passes its mode as `is_causal`
        self.is_global = config.is_global_layer(layer_idx)
        self.window_length = config.global_window_length if self.is_global else config.local_window_length
        self.num_heads = config.num_attention_heads
        self.num_key_value_groups = 1
        self.query_key_head_size = config.query_key_head_size
        self.value_head_size = config.value_head_size
        self.scaling = 1.0 / math.sqrt(config.query_key_head_size)
        eps = config.layer_norm_eps
        self.pre_v_norm = nn.LayerNorm(config.hidden_size, eps=eps, elementwise_affine=False)
        self.pre_qk_norm = nn.LayerNorm(config.hidden_size, eps=eps, elementwise_affine=False)
        self.qk_proj = nn.Linear(config.hidden_size, 2 * self.num_heads * self.query_key_head_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_heads * self.value_head_size, bias=False)
        self.q_norm = nn.LayerNorm(self.query_key_head_size, eps=eps, elementwise_affine=False)
        self.k_norm = nn.LayerNorm(self.query_key_head_size, eps=eps, elementwise_affine=False)
        self.q_scale = nn.Parameter(torch.zeros(self.num_heads, self.query_key_head_size))
        self.k_scale = nn.Parameter(torch.zeros(self.num_heads, self.query_key_head_size))
        self.inter_norm = nn.LayerNorm(self.num_heads * self.value_head_size, eps=eps, elementwise_affine=False)
        self.out_proj = nn.Linear(self.num_heads * self.value_head_size, config.hidden_size, bias=False)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, v_input, qk_input, position_embeddings, attention_mask=None,
                past_key_values: Cache | None = None, is_causal: bool = False, output_attentions: bool = False,
                cache_position=None, **kwargs):
        """`attention_mask`: this layer's boolean keep-mask [B, 1, Tq, Tk] (flash attention: the 2-D
        padding mask [B, Tk]); `position_embeddings`: this layer's rotary (cos, sin); `cache_position`:
        the cache slots of the new tokens (static caches of transformers <= 5.0 write where it says)."""
        batch, length, _ = v_input.shape
        v_input = self.pre_v_norm(v_input.float()).type_as(v_input)
        qk_input = self.pre_qk_norm(qk_input.float()).type_as(qk_input)
        query, key = self.qk_proj(qk_input).chunk(2, dim=-1)
        query = query.view(batch, length, -1, self.query_key_head_size).transpose(1, 2)  # [B, H, T, dqk]
        key = key.view(batch, length, -1, self.query_key_head_size).transpose(1, 2)
        value = self.v_proj(v_input).view(batch, length, -1, self.value_head_size).transpose(1, 2)  # [B, H, T, dv]
        query = ((self.q_scale + 1.0).unsqueeze(1) * self.q_norm(query.float())).type_as(query)
        key = ((self.k_scale + 1.0).unsqueeze(1) * self.k_norm(key.float())).type_as(key)
        cos, sin = position_embeddings
        query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx, {"cache_position": cache_position})

        implementation = "eager" if output_attentions else self.config._attn_implementation
        if implementation == "eager":
            attention_interface = eager_attention_forward
        elif hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        else:  # older releases (4.x, 5.0): a plain mapping
            attention_interface = ALL_ATTENTION_FUNCTIONS.get(implementation, eager_attention_forward)
        if _is_flash(implementation):
            # flash attention keeps |i - j| <= sliding_window - 1, one-sided when causal
            kwargs["sliding_window"] = self.window_length + (self.config.window_edge == "padded")
            kwargs.setdefault("deterministic", self.config.deterministic_flash_attn)
        else:
            # the mask says everything, causality included (None: every key is visible)
            is_causal = False
            if attention_mask is not None and attention_mask.size(-1) < key.size(2):
                # a static cache returns all its slots; the empty ones come after every query
                attention_mask = F.pad(attention_mask, (0, key.size(2) - attention_mask.size(-1)), value=False)
        output, probs = attention_interface(
            self, query, key, value, attention_mask,
            dropout=self.config.attention_dropout if self.training else 0.0,
            scaling=self.scaling, is_causal=is_causal, **kwargs,
        )
        output = output.reshape(batch, length, -1)  # [B, T, H * dv]
        output = self.inter_norm(output.float()).type_as(output)
        return self.dropout(self.out_proj(output)), probs


class Norbert4FeedForward(nn.Module):
    """Pre-norm GeGLU feed-forward without biases, normalised before its output projection."""

    def __init__(self, config: Norbert4Config):
        super().__init__()
        eps = config.layer_norm_eps
        self.pre_norm = nn.LayerNorm(config.hidden_size, eps=eps, elementwise_affine=False)
        self.up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)  # [value; gate]
        self.inter_norm = nn.LayerNorm(config.intermediate_size, eps=eps, elementwise_affine=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states):
        hidden_states = self.pre_norm(hidden_states.float()).type_as(hidden_states)
        value, gate = self.up_proj(hidden_states).chunk(2, dim=-1)
        hidden_states = value * F.gelu(gate, approximate="tanh")
        hidden_states = self.inter_norm(hidden_states.float()).type_as(hidden_states)
        return self.dropout(self.down_proj(hidden_states))


def _normalised(lambdas):
    return lambdas / (lambdas.abs().mean() + 1e-6)


class Norbert4Layer(GradientCheckpointingLayer):
    def __init__(self, config: Norbert4Config, layer_idx: int):
        super().__init__()
        self.attention = Norbert4Attention(config, layer_idx)
        self.mlp = Norbert4FeedForward(config)
        # Mixing weights of the hidden state, the embedding output and the sub-layer outputs;
        # `_init_weights` starts them as the release does.
        self.lambdas_v = nn.Parameter(torch.zeros(2))
        self.lambdas_qk = nn.Parameter(torch.zeros(2))
        self.lambdas_mlp = nn.Parameter(torch.zeros(3))
        self.lambdas_out = nn.Parameter(torch.zeros(4))

    def forward(self, hidden_states, embeddings, position_embeddings=None, attention_mask=None,
                past_key_values: Cache | None = None, is_causal: bool = False, output_attentions: bool = False,
                **kwargs):
        """`hidden_states`, `embeddings` (the embedding output): [B, T, D], positional so that
        gradient checkpointing gives both gradients."""
        lambdas_v, lambdas_qk = _normalised(self.lambdas_v), _normalised(self.lambdas_qk)
        lambdas_mlp, lambdas_out = _normalised(self.lambdas_mlp), _normalised(self.lambdas_out)
        attention_output, probs = self.attention(
            lambdas_v[0] * hidden_states + lambdas_v[1] * embeddings,
            lambdas_qk[0] * hidden_states + lambdas_qk[1] * embeddings,
            position_embeddings, attention_mask, past_key_values=past_key_values, is_causal=is_causal,
            output_attentions=output_attentions, **kwargs,
        )
        mlp_output = self.mlp(
            lambdas_mlp[0] * attention_output + lambdas_mlp[1] * hidden_states + lambdas_mlp[2] * embeddings
        )
        output = (lambdas_out[0] * mlp_output + lambdas_out[1] * attention_output
                  + lambdas_out[2] * hidden_states + lambdas_out[3] * embeddings)
        return output, probs


class Norbert4LMHead(nn.Module):
    """Token prediction: norm, projection, GELU, norm, the (tied) output projection with its bias
    and per-input-feature scale, and the soft cap. Returns capped logits."""

    def __init__(self, config: Norbert4Config):
        super().__init__()
        eps = config.layer_norm_eps
        self.pre_norm = nn.LayerNorm(config.hidden_size, eps=eps, elementwise_affine=False)
        self.projection = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.post_norm = nn.LayerNorm(config.hidden_size, eps=eps, elementwise_affine=False)
        self.decoder_scale = nn.Parameter(torch.zeros(config.hidden_size))
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden_states):
        hidden_states = self.pre_norm(hidden_states.float()).type_as(hidden_states)
        hidden_states = F.gelu(self.projection(hidden_states), approximate="tanh")
        hidden_states = self.post_norm(hidden_states.float()).type_as(hidden_states)
        logits = self.decoder(hidden_states * (self.decoder_scale + 1.0))
        return SOFT_CAP * torch.sigmoid(logits / SOFT_CAP_TEMPERATURE)


class Norbert4ClassificationHead(nn.Module):
    """The release's classifier: norm, projection, GELU, norm, dropout, output projection."""

    def __init__(self, config: Norbert4Config, num_outputs: int):
        super().__init__()
        eps = config.layer_norm_eps
        self.pre_norm = nn.LayerNorm(config.hidden_size, eps=eps, elementwise_affine=False)
        self.projection = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.post_norm = nn.LayerNorm(config.hidden_size, eps=eps, elementwise_affine=False)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.out_proj = nn.Linear(config.hidden_size, num_outputs)

    def forward(self, hidden_states):
        hidden_states = self.pre_norm(hidden_states.float()).type_as(hidden_states)
        hidden_states = F.gelu(self.projection(hidden_states), approximate="tanh")
        hidden_states = self.post_norm(hidden_states.float()).type_as(hidden_states)
        return self.out_proj(self.dropout(hidden_states))


class Norbert4PreTrainedModel(PreTrainedModel):
    config_class = Norbert4Config
    base_model_prefix = "norbert4"
    main_input_name = "input_ids"
    _no_split_modules = ["Norbert4Layer"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = False
    # The sliding windows live in the masks this model builds; a serving backend that builds its
    # own (vLLM's) would drop them.
    _supports_attention_backend = False

    @torch.no_grad()
    def _init_weights(self, module):
        """The release's initialisation: truncated normal, std sqrt(2 / (5 * hidden)) cut at 2 std,
        zero biases; scales at 0 (factor 1); mixing weights as the release starts them."""
        std = math.sqrt(2.0 / (5.0 * self.config.hidden_size))
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.trunc_normal_(module.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, Norbert4Embedding):
            init.zeros_(module.word_scale)
        elif isinstance(module, Norbert4Attention):
            init.zeros_(module.q_scale)
            init.zeros_(module.k_scale)
        elif isinstance(module, Norbert4LMHead):
            init.zeros_(module.decoder_scale)
        elif isinstance(module, Norbert4Layer):
            # (1, 0), (1, 1, 0), (1, 1, 1, 0): the newest input passes through, the embedding output not
            for weights in (module.lambdas_v, module.lambdas_qk, module.lambdas_mlp, module.lambdas_out):
                if not getattr(weights, "_is_hf_initialized", False):  # keep weights loaded from a checkpoint
                    weights.fill_(1.0)
                    weights[-1] = 0.0


class Norbert4Model(Norbert4PreTrainedModel):
    """The encoder/decoder stack: last hidden state [B, T, D] (not normalised), optional hidden
    states (embedding output, then every layer's output)."""

    def __init__(self, config: Norbert4Config):
        super().__init__(config)
        self.embedding = Norbert4Embedding(config)
        self.layers = nn.ModuleList([Norbert4Layer(config, i) for i in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.embedding.word_embedding

    def set_input_embeddings(self, value):
        self.embedding.word_embedding = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        is_causal: bool | None = None,
        cache: Cache | None = None,
        **kwargs,
    ):
        r"""
        attention_mask: [B, cached + new tokens], 1 = real token, 0 = padding.
        position_ids: rotary positions [B or 1, T]; by default counted from `attention_mask`.
        token_type_ids: accepted for BERT-style tokenizers and ignored (no segment embeddings).
        past_key_values (or `cache`): earlier keys and values; new tokens attend to them and are
            positioned after them. Used whenever given; created only in causal mode with `use_cache`.
        is_causal: causal mode (True) or masked mode (False); None follows `config.is_decoder`.
        inputs_embeds: raw word embeddings [B, T, D] (before the embedding norm).
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        is_causal = bool(self.config.is_decoder) if is_causal is None else bool(is_causal)
        use_cache = is_causal and (use_cache if use_cache is not None else self.config.use_cache and not self.training)
        if self.gradient_checkpointing and self.training:
            use_cache = False  # the recomputation would write the cache twice
        past_key_values = resolve_cache(past_key_values, cache)

        inputs_embeds = self._embed(input_ids, inputs_embeds)
        batch, length = inputs_embeds.shape[:2]
        device = inputs_embeds.device
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        if not (torch.compiler.is_compiling() or torch.jit.is_tracing()):  # traced: a size, kept symbolic (ONNX)
            past_length = int(past_length)
        cache_position = kwargs.pop("cache_position", None)  # what generate passes on transformers <= 5.0
        if cache_position is None:
            cache_position = torch.arange(past_length, past_length + length, device=device)
        if attention_mask is not None:
            expected = (batch, past_length + length)
            if tuple(attention_mask.shape) != expected:
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)} but the input needs {expected} "
                    "([batch, cached + new tokens], 1 = real token, 0 = padding)."
                )
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, past_length, length, device)
        rotary = {
            True: rotary_cos_sin(position_ids, self.config.query_key_head_size, self.config.rope_theta),
            False: rotary_cos_sin(position_ids, self.config.query_key_head_size, self.config.local_rope_theta),
        }
        implementation = "eager" if output_attentions else (self.config._attn_implementation or "eager")
        masks = self._masks(attention_mask, batch, past_length, length, is_causal, device, implementation)

        hidden_states = self.embedding(inputs_embeds)
        embeddings = hidden_states
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            is_global = layer.attention.is_global
            hidden_states, probs = layer(
                hidden_states, embeddings, position_embeddings=rotary[is_global], attention_mask=masks[is_global],
                past_key_values=past_key_values, is_causal=is_causal, output_attentions=output_attentions,
                cache_position=cache_position, **kwargs,
            )
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (probs,)

        output = BaseModelOutputWithPast(
            last_hidden_state=hidden_states,
            hidden_states=all_hidden_states,
            attentions=all_attentions,
            **{CACHE_FIELD: past_key_values if use_cache else None},
        )
        return output if return_dict else output.to_tuple()

    def _masks(self, attention_mask, batch, past_length, length, is_causal, device, implementation):
        """The attention mask of the global (True) and local (False) layers for `implementation`."""
        if _is_flash(implementation):
            # flash attention takes the 2-D padding mask and the window as `sliding_window`
            padding = attention_mask if attention_mask is not None and not bool(attention_mask.all()) else None
            return {True: padding, False: padding}
        reach_extra = 0 if self.config.window_edge == "flash" else 1
        masks = {}
        for is_global, window in ((True, self.config.global_window_length), (False, self.config.local_window_length)):
            masks[is_global] = window_keep_mask(
                attention_mask, batch, past_length, length, window - 1 + reach_extra, is_causal, device,
                fill_empty_rows=implementation != "eager",
            )
        return masks

    def _embed(self, input_ids, inputs_embeds):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError(
                "Pass exactly one of input_ids or inputs_embeds "
                f"(got {'both' if input_ids is not None else 'neither'})."
            )
        if input_ids is not None:
            if input_ids.dim() != 2 or input_ids.size(1) == 0:
                raise ValueError(
                    f"input_ids must have shape [batch, length] with length >= 1, got {tuple(input_ids.shape)}."
                )
            if input_ids.is_floating_point():
                raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}.")
            # compiled graphs cannot branch on values (an out-of-range id then fails in the embedding)
            low, high = (0, 0) if torch.compiler.is_compiling() else (int(input_ids.min()), int(input_ids.max()))
            if low < 0 or high >= self.config.vocab_size:
                bad = low if low < 0 else high
                raise ValueError(
                    f"input_ids contains token id {bad}, outside the vocabulary [0, {self.config.vocab_size}); "
                    "check that the tokenizer matches this model."
                )
            return self.embedding.word_embedding(input_ids)
        if inputs_embeds.dim() != 3 or inputs_embeds.size(1) == 0 or inputs_embeds.size(2) != self.config.hidden_size:
            raise ValueError(
                f"inputs_embeds must have shape [batch, length >= 1, {self.config.hidden_size}], "
                f"got {tuple(inputs_embeds.shape)}."
            )
        return inputs_embeds


class Norbert4ForMaskedLM(Norbert4PreTrainedModel):
    """The release's masked LM: hidden state i predicts token i + 1, and the logits are shifted
    back so that position i holds the prediction for token i (position 0: a BOS column, 1.0 at
    `bos_token_id`). `labels` follow BERT's convention (the token at each masked position, -100
    elsewhere); position 0 is never scored."""

    _tied_weights_keys = {"lm_head.decoder.weight": "norbert4.embedding.word_embedding.weight"}

    def __init__(self, config: Norbert4Config):
        super().__init__(config)
        self.norbert4 = Norbert4Model(config)
        self.lm_head = Norbert4LMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, token_type_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        r"""labels: [B, T] token ids to predict, -100 where there is nothing to predict."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.norbert4(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
            **kwargs,
        )
        predictions = self.lm_head(outputs.last_hidden_state[:, :-1])  # [B, T-1, V]: tokens 1 .. T-1
        loss = None
        if labels is not None:
            loss = self.loss_function(predictions, labels[:, 1:].contiguous(), vocab_size=self.config.vocab_size, **kwargs)
        bos_column = predictions.new_zeros(predictions.size(0), 1, predictions.size(2))
        if self.config.bos_token_id is not None:
            bos_column[..., self.config.bos_token_id] = 1.0
        logits = torch.cat([bos_column, predictions], dim=1)
        output = MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


class Norbert4ForCausalLM(Norbert4PreTrainedModel, GenerationMixin):
    """The model in causal mode predicting the next token (always causal, whatever `is_decoder`)."""

    _tied_weights_keys = {"lm_head.decoder.weight": "norbert4.embedding.word_embedding.weight"}

    def __init__(self, config: Norbert4Config):
        super().__init__(config)
        self.norbert4 = Norbert4Model(config)
        self.lm_head = Norbert4LMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings

    def prepare_inputs_for_generation(self, *args, **kwargs):
        """GenerationMixin's step inputs, with the KV cache under `past_key_values` (forward takes
        both names). peft's prompt learning (<= 0.21) wraps this method and looks for the cache
        there: on transformers >= 5.24, which passes it as `cache`, it would find none and prepend
        its virtual tokens at every step."""
        inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        if inputs.get("cache") is not None and inputs.get("past_key_values") is None:
            inputs["past_key_values"] = inputs.pop("cache")
        return inputs

    def create_masks_for_generate(self, config=None, inputs_embeds=None, attention_mask=None, **kwargs):
        """`generate` asks for a 4-D mask before each step with a static cache; this model builds its
        window masks from the 2-D padding mask itself, so that is what it gets."""
        return attention_mask

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, token_type_ids=None,
                inputs_embeds=None, past_key_values=None, use_cache=None, labels=None,
                logits_to_keep: int | torch.Tensor = 0, output_attentions=None, output_hidden_states=None,
                return_dict=None, cache=None, **kwargs):
        r"""
        labels: [B, T] token ids; position t is predicted from tokens < t (the shift happens inside),
            -100 where there is nothing to predict.
        logits_to_keep: an int k > 0 computes logits for the last k positions only; a 1-D tensor
            of positions computes them there.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.norbert4(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds,
            past_key_values=past_key_values, cache=cache, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True, is_causal=True, **kwargs,
        )
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(outputs.last_hidden_state[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        output = CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )
        return output if return_dict else output.to_tuple()


class Norbert4ForSequenceClassification(Norbert4PreTrainedModel):
    """Classification or regression from the first token's hidden state, as the release."""

    def __init__(self, config: Norbert4Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.norbert4 = Norbert4Model(config)
        self.classifier = Norbert4ClassificationHead(config, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, token_type_ids=None, inputs_embeds=None,
                labels=None, past_key_values=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, cache=None, **kwargs):
        r"""labels: [B] class ids (or floats for regression / [B, num_labels] for multi-label).
        past_key_values: peft's prefix tuning hands its prefix here (named, so that peft calls this
            forward and not the base model with a pooler of its own guessing)."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.norbert4(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds,
            past_key_values=past_key_values, cache=cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True, **kwargs,
        )
        logits = self.classifier(outputs.last_hidden_state[:, 0])
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


class Norbert4ForTokenClassification(Norbert4PreTrainedModel):
    def __init__(self, config: Norbert4Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.norbert4 = Norbert4Model(config)
        self.classifier = Norbert4ClassificationHead(config, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, token_type_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        r"""labels: [B, T] class ids, -100 where there is nothing to predict."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.norbert4(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
            **kwargs,
        )
        logits = self.classifier(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.config, **kwargs)
        output = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


class Norbert4ForQuestionAnswering(Norbert4PreTrainedModel):
    """Extractive QA: a start and an end logit per token."""

    def __init__(self, config: Norbert4Config):
        super().__init__(config)
        self.norbert4 = Norbert4Model(config)
        self.qa_outputs = Norbert4ClassificationHead(config, 2)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, token_type_ids=None, inputs_embeds=None,
                start_positions=None, end_positions=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        r"""start_positions, end_positions: [B] token indices of the answer span."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.norbert4(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
            **kwargs,
        )
        start_logits, end_logits = self.qa_outputs(outputs.last_hidden_state).unbind(dim=-1)  # [B, T] each
        start_logits, end_logits = start_logits.contiguous(), end_logits.contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = self.loss_function(start_logits, end_logits, start_positions, end_positions, **kwargs)
        output = QuestionAnsweringModelOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


class Norbert4ForMultipleChoice(Norbert4PreTrainedModel):
    """One score per choice from each choice's first token: inputs [B, C, T], logits [B, C].

    The release's multiple-choice head applies its classifier to every token and reshapes the
    result to [-1, C], which mixes tokens and choices; this head pools as the release's
    sequence classifier does (first token, its classifier with one output)."""

    accepts_loss_kwargs = False  # plain mean cross-entropy; nothing to gain from num_items_in_batch

    def __init__(self, config: Norbert4Config):
        super().__init__(config)
        self.norbert4 = Norbert4Model(config)
        self.classifier = Norbert4ClassificationHead(config, 1)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, token_type_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        r"""input_ids / attention_mask: [B, C, T]; inputs_embeds: [B, C, T, D]; labels: [B] choice index."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        first = input_ids if input_ids is not None else inputs_embeds
        if first is None or first.dim() != (3 if input_ids is not None else 4):
            raise ValueError(
                "Norbert4ForMultipleChoice takes input_ids [batch, choices, length] or inputs_embeds "
                f"[batch, choices, length, hidden], got {None if first is None else tuple(first.shape)}."
            )
        num_choices = first.size(1)
        outputs = self.norbert4(
            input_ids.flatten(0, 1) if input_ids is not None else None,
            attention_mask=attention_mask.flatten(0, 1) if attention_mask is not None else None,
            position_ids=position_ids.flatten(0, 1) if position_ids is not None else None,
            inputs_embeds=inputs_embeds.flatten(0, 1) if inputs_embeds is not None else None,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
            **kwargs,
        )
        logits = self.classifier(outputs.last_hidden_state[:, 0]).view(-1, num_choices)  # [B, C]
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        output = MultipleChoiceModelOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


Norbert4Config.register_for_auto_class()
Norbert4Model.register_for_auto_class("AutoModel")
Norbert4ForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
Norbert4ForCausalLM.register_for_auto_class("AutoModelForCausalLM")
Norbert4ForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
Norbert4ForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")
Norbert4ForQuestionAnswering.register_for_auto_class("AutoModelForQuestionAnswering")
Norbert4ForMultipleChoice.register_for_auto_class("AutoModelForMultipleChoice")
