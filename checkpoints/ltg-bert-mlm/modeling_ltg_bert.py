"""LTG-BERT (Samuel et al., 2023): a pre-norm BERT with disentangled relative attention and GEGLU.

A faithful port of the Language Technology Group's model (ltgoslo/ltg-bert), batch-first and
with every Hugging Face head. Each layer normalises its input; there is no final LayerNorm, so
every head normalises what it reads. Positions enter only through one shared table of
logarithmic relative-position buckets, projected by each layer's query/key projection.

GPT-BERT (Charpentier & Samuel, 2024; ltgoslo/gpt-bert) is this model with four config fields:
the attention output normalised before `out_proj` (`attention_output_norm`), a gate on the merged
heads (`attention_gate`), a learned weighted sum of earlier residual states after each sub-layer
(`layer_weighting`), and the masked-LM head reading the position before each token
(`masked_next_token`). The same weights serve `LtgBertForMaskedLM` and `LtgBertForCausalLM`.

This file is copied into every checkpoint: it imports only torch, transformers and its
sibling configuration file.
"""

import functools
import inspect
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

from .configuration_ltg_bert import LtgBertConfig

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


def resolve_cache(past_key_values: Cache | None, cache: Cache | None) -> Cache | None:
    """The KV cache passed under either name (transformers >= 5.24 `cache`, earlier ones and peft
    `past_key_values`)."""
    if past_key_values is not None and cache is not None and past_key_values is not cache:
        raise ValueError(
            "Got two different KV caches, `cache` and `past_key_values`: pass one of them (peft <= 0.21's "
            "prefix tuning passes its prefix as `past_key_values`)."
        )
    return cache if cache is not None else past_key_values


def relative_position_buckets(query_positions, key_positions, bucket_size: int, max_position: int):
    """Row of the relative embedding table for every (query, key) pair: [Tq, Tk] int64 in 0..2b-2
    (positions [Tq] and [Tk]), or [B, Tq, Tk] for positions per row ([B, Tq] and [B, Tk]).

    Distances below `bucket_size // 2` are exact; longer ones fall into logarithmically wider
    buckets, and every distance >= `max_position - 1` into the outermost one. Computed from
    absolute positions, so it holds for any length and for queries offset by a cache.
    """
    relative = query_positions[..., :, None] - key_positions[..., None, :]
    mid = bucket_size // 2
    distance = relative.abs().clamp(max=max_position - 1)
    # The same float32 operations as the original table, so that rounding at bucket edges agrees.
    log_distance = torch.ceil(
        torch.log(distance.clamp(min=mid) / mid) / math.log((max_position - 1) / mid) * (mid - 1)
    ).long() + mid
    bucket = torch.where(distance < mid, relative, torch.sign(relative) * log_distance)
    return bucket + bucket_size - 1


def eager_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                            position_bias=None, **kwargs):
    """Softmax attention; `attention_mask` is a boolean keep-mask [B, 1, Tq, Tk] (or None).

    Masked keys get -inf before the softmax and exactly 0 after it, so a row with no visible key
    (e.g. a left-padding query under a causal mask) is all zeros, as in the original.
    """
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # [B, H, Tq, Tk]
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if attention_mask is not None:
        probs = probs.masked_fill(~attention_mask, 0.0)
    probs = F.dropout(probs, p=dropout, training=module.training)
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()  # [B, Tq, H, hd]
    return output, probs


def sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                           position_bias=None, **kwargs):
    """SDPA with the position bias folded into a float mask, as transformers >= 5.23's own SDPA
    function does; used where the installed one takes no `position_bias`."""
    mask = position_bias
    if attention_mask is not None:
        mask = torch.where(attention_mask, position_bias, torch.finfo(query.dtype).min)
    output = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling)
    return output.transpose(1, 2).contiguous(), None  # [B, Tq, H, hd]


def attention_function(name: str):
    """The attention function registered as `name` (eager: ours), one that takes `position_bias`."""
    if name == "eager":
        return eager_attention_forward
    if hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):
        function = ALL_ATTENTION_FUNCTIONS.get_interface(name, eager_attention_forward)
    else:  # older releases (4.x, 5.0): a plain mapping
        function = ALL_ATTENTION_FUNCTIONS.get(name, eager_attention_forward)
    if name == "sdpa" and not _takes_position_bias(function):
        return sdpa_attention_forward
    return function


@functools.cache
def _takes_position_bias(function) -> bool:
    return "position_bias" in inspect.signature(function).parameters


class LtgBertEmbedding(nn.Module):
    """Word embeddings (normalised, no positions) and the normalised relative-position table."""

    def __init__(self, config: LtgBertConfig):
        super().__init__()
        self.word_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.word_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.relative_embedding = nn.Parameter(torch.empty(2 * config.position_bucket_size - 1, config.hidden_size))
        self.relative_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, inputs_embeds):
        """`inputs_embeds` are raw word embeddings [B, T, D]; returns them normalised and the [2b-1, D] table."""
        return self.dropout(self.word_layer_norm(inputs_embeds)), self.relative_layer_norm(self.relative_embedding)


class LtgBertAttention(nn.Module):
    """Pre-norm disentangled self-attention: content-content, content-position, position-content."""

    def __init__(self, config: LtgBertConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.is_causal = False
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        # Three score terms share the softmax, hence sqrt(3 * head_size).
        self.scaling = 1.0 / math.sqrt(3 * self.head_size)
        self.pre_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.in_proj_qk = nn.Linear(config.hidden_size, 2 * config.hidden_size)
        # GPT-BERT's gated attention: the second half of the value projection is the gate.
        self.gated = config.attention_gate
        self.in_proj_v = nn.Linear(config.hidden_size, (2 if self.gated else 1) * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        # LTG-BERT normalises after out_proj with an affine norm, GPT-BERT before it without parameters.
        # The parameter-free norm has a name of its own, so that peft's LN-tuning defaults
        # (`attention.post_layer_norm`) only ever meet norms with parameters.
        self.norm_before_out_proj = config.attention_output_norm == "before_out_proj"
        if self.norm_before_out_proj:
            self.pre_out_proj_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        else:
            self.post_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        # One dropout for the relative table, the probabilities and the output, as in the original.
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def forward(self, hidden_states, relative_embedding, position_buckets, attention_mask=None,
                past_key_values: Cache | None = None, output_attentions: bool = False, **kwargs):
        batch, length, _ = hidden_states.shape
        hidden_states = self.pre_layer_norm(hidden_states)
        query, key = self.in_proj_qk(hidden_states).chunk(2, dim=-1)
        value = self.in_proj_v(hidden_states)
        if self.gated:
            value, gate = value.chunk(2, dim=-1)
        query, key, value = (
            x.view(batch, length, self.num_heads, self.head_size).transpose(1, 2) for x in (query, key, value)
        )  # [B, H, T, hd]
        if past_key_values is not None:
            key, value = past_key_values.update(key, value, self.layer_idx)

        position_bias = self._position_bias(query, key, relative_embedding, position_buckets)
        attention_interface = attention_function("eager" if output_attentions else self.config._attn_implementation)
        output, probs = attention_interface(
            self, query, key, value, attention_mask,
            dropout=self.dropout.p if self.training else 0.0,
            scaling=self.scaling, position_bias=position_bias, is_causal=False, **kwargs,
        )
        output = output.reshape(batch, length, -1)
        if self.gated:
            output = output * F.gelu(gate)
        if self.norm_before_out_proj:
            output = self.out_proj(self.pre_out_proj_norm(output))
        else:
            output = self.post_layer_norm(self.out_proj(output))
        return self.dropout(output), probs

    def _position_bias(self, query, key, relative_embedding, position_buckets):
        """scaling * (q_i . key_pos[d] + k_j . query_pos[d]) with d = bucket(i, j): [B, H, Tq, Tk]."""
        table = self.in_proj_qk(self.dropout(relative_embedding))  # [2b-1, 2D]
        rows = table.size(0)
        if self.config.position_layout == "bnc":
            query_pos, key_pos = table.view(rows, self.num_heads, 2 * self.head_size).chunk(2, dim=-1)
        else:
            query_pos, key_pos = (x.view(rows, self.num_heads, self.head_size) for x in table.chunk(2, dim=-1))
        query_pos, key_pos = query_pos.transpose(0, 1), key_pos.transpose(0, 1)  # [H, 2b-1, hd]

        batch, heads, query_length, _ = query.shape
        key_length = key.size(2)
        # Project onto the 2b-1 table rows once, then pick the row of each pair.
        content_to_position = torch.matmul(query, key_pos.transpose(-1, -2))  # [B, H, Tq, 2b-1]
        position_to_content = torch.matmul(key, query_pos.transpose(-1, -2))  # [B, H, Tk, 2b-1]
        if position_buckets.dim() == 3:  # positions per row: [B, Tq, Tk] -> [B, 1, Tq, Tk]
            position_buckets = position_buckets[:, None]
        content_to_position = content_to_position.gather(
            -1, position_buckets.expand(batch, heads, query_length, key_length)
        )
        position_to_content = position_to_content.gather(
            -1, position_buckets.transpose(-1, -2).expand(batch, heads, key_length, query_length)
        ).transpose(-1, -2)
        return (content_to_position + position_to_content) * self.scaling


class LtgBertFeedForward(nn.Module):
    """Pre-norm GEGLU feed-forward without biases, normalised before its output projection."""

    def __init__(self, config: LtgBertConfig, layer_idx: int):
        super().__init__()
        self.pre_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.mid_layer_norm = nn.LayerNorm(
            config.intermediate_size, eps=config.layer_norm_eps, elementwise_affine=False
        )
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        # Read by `_init_weights`: LTG shrinks the feed-forward weights of deeper layers.
        for linear in (self.up_proj, self.down_proj):
            linear.init_scale = math.sqrt(1.0 / (2.0 * (layer_idx + 1)))

    def forward(self, hidden_states):
        value, gate = self.up_proj(self.pre_layer_norm(hidden_states)).chunk(2, dim=-1)
        hidden_states = value * F.gelu(gate, approximate="tanh")
        return self.dropout(self.down_proj(self.mid_layer_norm(hidden_states)))


class LtgBertLayer(GradientCheckpointingLayer):
    def __init__(self, config: LtgBertConfig, layer_idx: int):
        super().__init__()
        self.attention = LtgBertAttention(config, layer_idx)
        self.mlp = LtgBertFeedForward(config, layer_idx)
        if config.layer_weighting:
            # GPT-BERT's layer weighting: one weight per earlier residual state (the embedding output
            # and each sub-layer output) plus the new one; `_init_weights` starts them at (0, .., 0, 1).
            self.attention_depth_weights = nn.Parameter(torch.zeros(2 * layer_idx + 2))
            self.mlp_depth_weights = nn.Parameter(torch.zeros(2 * layer_idx + 3))

    def forward(self, hidden_states, relative_embedding, position_buckets, *depth_history, attention_mask=None,
                past_key_values: Cache | None = None, output_attentions: bool = False, **kwargs):
        """`depth_history`: with layer weighting, the residual states of the embedding and of every
        earlier sub-layer, [B, T, D] each (positional, so that gradient checkpointing sees them).
        Returns the new hidden states, the attention probabilities and, with layer weighting, this
        layer's two sub-layer states for the history: a flat tuple, as reentrant gradient
        checkpointing gives gradients only to tensors at its top level."""
        attention_output, probs = self.attention(
            hidden_states, relative_embedding, position_buckets, attention_mask,
            past_key_values=past_key_values, output_attentions=output_attentions, **kwargs,
        )
        hidden_states = hidden_states + attention_output
        if not depth_history:
            return hidden_states + self.mlp(hidden_states), probs
        after_attention = hidden_states
        hidden_states = _depth_average(self.attention_depth_weights, depth_history + (after_attention,))
        after_mlp = hidden_states + self.mlp(hidden_states)
        hidden_states = _depth_average(self.mlp_depth_weights, depth_history + (after_attention, after_mlp))
        return hidden_states, probs, after_attention, after_mlp


def _depth_average(weights, states):
    """sum_k weights[k] * states[k], accumulated without stacking (autograd keeps no copies)."""
    total = weights[0] * states[0]
    for weight, state in zip(weights[1:], states[1:]):
        total = total + weight * state
    return total


class LtgBertLMHead(nn.Module):
    """Token prediction from the last hidden state; the decoder weight is the word embedding."""

    def __init__(self, config: LtgBertConfig):
        super().__init__()
        self.pre_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.post_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        # The BNC code drops out before the second LayerNorm, the BabyLM code after it.
        self.dropout_before_norm = config.position_layout == "bnc"

    def forward(self, hidden_states):
        hidden_states = F.gelu(self.dense(self.pre_layer_norm(hidden_states)))
        if self.dropout_before_norm:
            hidden_states = self.post_layer_norm(self.dropout(hidden_states))
        else:
            hidden_states = self.dropout(self.post_layer_norm(hidden_states))
        return self.decoder(hidden_states)


class LtgBertClassificationHead(nn.Module):
    """The LM head's shape with `num_outputs` outputs: norm, dense, GELU, norm, dropout, projection."""

    def __init__(self, config: LtgBertConfig, num_outputs: int):
        super().__init__()
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.pre_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.post_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(config.hidden_size, num_outputs)

    def forward(self, hidden_states):
        hidden_states = F.gelu(self.dense(self.pre_layer_norm(hidden_states)))
        return self.out_proj(self.dropout(self.post_layer_norm(hidden_states)))


class LtgBertPreTrainedModel(PreTrainedModel):
    config_class = LtgBertConfig
    base_model_prefix = "ltg_bert"
    main_input_name = "input_ids"
    _no_split_modules = ["LtgBertLayer"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    # The position terms are a dense additive bias: only eager and sdpa can take it.
    _supports_flash_attn = False
    _supports_flex_attn = False
    # Every forward hands its **kwargs down to the attention function (with `position_bias`), so a
    # registered function that applies the bias works. vLLM's does not: its paged kernels take no
    # additive bias and its attention function drops `position_bias`, so serving would silently
    # give other numbers. False makes vLLM's automatic Transformers backend pass this model over.
    _supports_attention_backend = False

    @torch.no_grad()
    def _init_weights(self, module):
        """LTG's initialisation: truncated normal, std sqrt(2 / (5 * hidden)) cut at 2 std, zero biases,
        feed-forward weights of layer i scaled by sqrt(1 / (2 * (i + 1)))."""
        std = math.sqrt(2.0 / (5.0 * self.config.hidden_size))
        if isinstance(module, nn.Linear):
            # A scaled truncated normal is a truncated normal with scaled std and cut-offs.
            scaled = std * getattr(module, "init_scale", 1.0)
            init.trunc_normal_(module.weight, mean=0.0, std=scaled, a=-2 * scaled, b=2 * scaled)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.trunc_normal_(module.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
        elif isinstance(module, nn.LayerNorm):
            if module.weight is not None:
                init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, LtgBertEmbedding):
            init.trunc_normal_(module.relative_embedding, mean=0.0, std=std, a=-2 * std, b=2 * std)
        elif isinstance(module, LtgBertLayer) and hasattr(module, "mlp_depth_weights"):
            for weights in (module.attention_depth_weights, module.mlp_depth_weights):
                if not getattr(weights, "_is_hf_initialized", False):  # keep weights loaded from a checkpoint
                    weights.zero_()
                    weights[-1] = 1.0


class LtgBertModel(LtgBertPreTrainedModel):
    """The encoder: last hidden state [B, T, D] (not normalised), optional cumulative hidden states."""

    def __init__(self, config: LtgBertConfig):
        super().__init__(config)
        self.embedding = LtgBertEmbedding(config)
        self.layers = nn.ModuleList([LtgBertLayer(config, i) for i in range(config.num_hidden_layers)])
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
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        is_causal: bool = False,
        cache: Cache | None = None,
        **kwargs,
    ):
        r"""
        token_type_ids: accepted for BERT-style tokenizers and ignored (LTG-BERT has no segment embeddings).
        past_key_values: a cache of earlier keys and values; new tokens attend to them and are
            positioned after them. Used whenever given; created only for causal use with `use_cache`.
        is_causal: apply a causal mask (the causal-LM head sets it).
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        # a call and an if statement, not conditional expressions: llm-compressor's tracer (GPTQ) wraps
        # those into opaque functions, which hand the output back as a dict
        return_dict = _given_or(return_dict, self.config.return_dict)
        use_cache = is_causal and (use_cache if use_cache is not None else self.config.use_cache and not self.training)
        past_key_values = resolve_cache(past_key_values, cache)
        if getattr(past_key_values, "is_compileable", False):  # StaticCache and kin: keys padded to a fixed length
            raise ValueError(
                f"LTG-BERT takes a DynamicCache, got {type(past_key_values).__name__}: its relative position "
                "terms and masks assume the cache holds exactly the tokens seen so far; drop "
                "cache_implementation='static' (generate's default dynamic cache works)."
            )

        inputs_embeds = self._embed(input_ids, inputs_embeds)
        batch, length = inputs_embeds.shape[:2]
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        past_length = past_key_values.get_seq_length() if past_key_values is not None else 0
        keep = _keep_mask(attention_mask, batch, length, past_length, is_causal, inputs_embeds.device)

        positions = _positions(attention_mask, past_length + length, is_causal, inputs_embeds.device)
        position_buckets = relative_position_buckets(
            positions[..., past_length:], positions, self.config.position_bucket_size,
            self.config.max_position_embeddings,
        )
        hidden_states, relative_embedding = self.embedding(inputs_embeds)

        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        depth_history = (hidden_states,) if self.config.layer_weighting else ()
        for layer in self.layers:
            # No starred assignment targets, and starred arguments only with layer weighting:
            # llm-compressor's source tracer (GPTQ) wraps starred tuples and calls into opaque
            # functions, and a wrapped assignment target is a SyntaxError ("cannot assign to
            # function call"); under torch.fx the layer's output is a proxy, indexed, never unpacked.
            options = dict(attention_mask=keep, past_key_values=past_key_values, output_attentions=output_attentions)
            if self.config.layer_weighting:
                outputs = layer(hidden_states, relative_embedding, position_buckets, *depth_history, **options, **kwargs)
                depth_history += (outputs[2], outputs[3])
            else:
                outputs = layer(hidden_states, relative_embedding, position_buckets, **options, **kwargs)
            hidden_states, probs = outputs[0], outputs[1]
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
        if not return_dict:
            return output.to_tuple()
        return output

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
                    f"check that the tokenizer matches this model."
                )
            return self.embedding.word_embedding(input_ids)
        if inputs_embeds.dim() != 3 or inputs_embeds.size(1) == 0 or inputs_embeds.size(2) != self.config.hidden_size:
            raise ValueError(
                f"inputs_embeds must have shape [batch, length >= 1, {self.config.hidden_size}], "
                f"got {tuple(inputs_embeds.shape)}."
            )
        return inputs_embeds


def _positions(attention_mask, key_length: int, is_causal: bool, device):
    """Positions of the cached and new tokens: [Tk], or [B, Tk] for a causal input whose mask has
    padding, where they count the real tokens before each one (as `generate` does for absolute
    positions). Relative distances then skip padding: the distance to virtual tokens that peft's
    prompt tuning and p-tuning prepend before a left-padded prompt is the one the prompt has alone.
    (Bidirectional inputs keep plain positions: their padding is usually one block on the right,
    which changes no distance between real tokens, and per-row buckets cost B x T x T.)
    """
    # Compiled graphs cannot branch on values: they take per-row positions, the same numbers for
    # rows without padding.
    if is_causal and attention_mask is not None and (torch.compiler.is_compiling() or not bool(attention_mask.all())):
        attention_mask = attention_mask.to(device)
        return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    return torch.arange(key_length, device=device)


def _given_or(value, default):
    return default if value is None else value


def _keep_mask(attention_mask, batch: int, length: int, past_length: int, is_causal: bool, device):
    """Boolean [B, 1, Tq, Tk] mask of the keys each query may see, or None when it sees all.

    `attention_mask` follows the Hugging Face convention (1 = real token, 0 = padding) and
    covers the cached tokens too: shape [batch, past_length + length].
    """
    key_length = past_length + length
    keep = None
    if attention_mask is not None:
        expected = (batch, key_length)
        # (not while compiling or tracing: llm-compressor's tracer sets the compiling flag, and its
        # proxies' shapes cannot be iterated)
        if not torch.compiler.is_compiling() and tuple(attention_mask.shape) != expected:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but the input needs {expected} "
                f"([batch, cached + new tokens], 1 = keep, 0 = padding)."
            )
        keep = attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]  # [B, 1, 1, Tk]
        if not is_causal and not torch.compiler.is_compiling() and bool(keep.all()):  # an all-True mask masks nothing
            keep = None
    if is_causal:
        query_positions = torch.arange(past_length, key_length, device=device)
        causal = query_positions[:, None] >= torch.arange(key_length, device=device)[None, :]  # [Tq, Tk]
        keep = causal if keep is None else keep & causal
    return None if keep is None else keep.expand(batch, 1, length, key_length)


class LtgBertForMaskedLM(LtgBertPreTrainedModel):
    _tied_weights_keys = {"lm_head.decoder.weight": "ltg_bert.embedding.word_embedding.weight"}

    def __init__(self, config: LtgBertConfig):
        super().__init__(config)
        self.ltg_bert = LtgBertModel(config)
        self.lm_head = LtgBertLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        r"""labels: [B, T] token ids to predict, -100 where there is nothing to predict."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.ltg_bert(
            input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
            **kwargs,
        )
        if self.config.masked_next_token:
            # GPT-BERT's hidden state i predicts token i + 1, so position i's logits come from i - 1 and
            # position 0, with nothing before it, gets zeros: [MASK] positions and labels stay BERT's.
            logits = F.pad(self.lm_head(outputs.last_hidden_state[:, :-1]), (0, 0, 1, 0))
        else:
            logits = self.lm_head(outputs.last_hidden_state)
        suppressed = getattr(self.config, "masked_lm_suppressed_token_ids", None)
        if suppressed:  # LTG's releases never predict their special and unused ids
            logits = logits.index_fill(-1, torch.tensor(suppressed, device=logits.device), float("-inf"))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        output = MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


class LtgBertForCausalLM(LtgBertPreTrainedModel, GenerationMixin):
    """The encoder under a causal mask predicting the next token, as in LTG's GPT-BERT."""

    _tied_weights_keys = {"lm_head.decoder.weight": "ltg_bert.embedding.word_embedding.weight"}

    def __init__(self, config: LtgBertConfig):
        super().__init__(config)
        self.ltg_bert = LtgBertModel(config)
        self.lm_head = LtgBertLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings

    def prepare_inputs_for_generation(self, *args, **kwargs):
        """GenerationMixin's step inputs, with the KV cache under `past_key_values` (forward takes
        both names). peft's prompt learning (<= 0.21) wraps this method and looks for the cache
        there: on transformers >= 5.24, which passes it as `cache`, it would find none and prepend
        its virtual tokens (or inject a second, prefix cache) at every step, giving other tokens
        with the cache than without."""
        inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        if inputs.get("cache") is not None and inputs.get("past_key_values") is None:
            inputs["past_key_values"] = inputs.pop("cache")
        return inputs

    def generate(self, inputs=None, *args, **kwargs):
        """GenerationMixin.generate, continuing the prompt as it was shaped in training.

        GPT-BERT's causal windows are `[CLS] tokens`, with [SEP] only where a document ends, but
        the tokenizer ends every text with [SEP]: the text-generation pipeline and
        `generate(**tokenizer(text))` would continue after the end of a document. A [SEP] that ends
        every prompt row (a real token in each) is therefore not given to the model. The returned
        sequences still begin with the prompt as passed, so slicing it off works as usual; an
        explicit `max_length`/`min_length` still counts it. Start prompts with [CLS] (the tokenizer does).
        """
        prompt = inputs if inputs is not None else kwargs.get("input_ids")
        if not self._ends_with_closing_token(prompt, kwargs.get("attention_mask")) or "inputs_embeds" in kwargs:
            return super().generate(inputs, *args, **kwargs)
        length = prompt.shape[1]
        kwargs = {name: value[..., :-1] if torch.is_tensor(value) and value.ndim == 2 and value.shape[1] == length
                  and name in ("attention_mask", "token_type_ids", "position_ids") else value
                  for name, value in kwargs.items()}
        for name in ("max_length", "min_length"):
            if isinstance(kwargs.get(name), int):
                kwargs[name] -= 1
        if inputs is not None:
            inputs = prompt[:, :-1]
        else:
            kwargs["input_ids"] = prompt[:, :-1]
        output = super().generate(inputs, *args, **kwargs)
        sequences = output if torch.is_tensor(output) else getattr(output, "sequences", None)
        if sequences is None:
            return output
        closing = prompt[:, -1:].repeat_interleave(sequences.shape[0] // prompt.shape[0], dim=0)  # beams, samples
        sequences = torch.cat([sequences[:, :length - 1], closing.to(sequences.device), sequences[:, length - 1:]], 1)
        if torch.is_tensor(output):
            return sequences
        output.sequences = sequences
        return output

    def _ends_with_closing_token(self, input_ids, attention_mask) -> bool:
        # transformers 4.x's PretrainedConfig.__init__ resets sep_token_id (and bos/eos/pad) to None;
        # the generation config, read from generation_config.json, still has the end-of-text id
        sep = self.config.sep_token_id
        if sep is None:
            sep = getattr(getattr(self, "generation_config", None), "eos_token_id", None)
            sep = sep if isinstance(sep, int) else None
        return (
            torch.is_tensor(input_ids) and input_ids.ndim == 2 and input_ids.shape[1] >= 2 and sep is not None
            and not input_ids.is_floating_point() and bool((input_ids[:, -1] == sep).all())
            and (attention_mask is None or attention_mask.ndim != 2 or bool(attention_mask[:, -1].bool().all()))
        )

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None,
                past_key_values=None, use_cache=None, labels=None, logits_to_keep: int | torch.Tensor = 0,
                output_attentions=None, output_hidden_states=None, return_dict=None, cache=None, **kwargs):
        r"""
        labels: [B, T] token ids; position t is predicted from tokens < t (the shift happens inside),
            -100 where there is nothing to predict.
        logits_to_keep: an int k > 0 computes logits for the last k positions only; a 1-D tensor
            of positions computes them there.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.ltg_bert(
            input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
            past_key_values=past_key_values, cache=cache, use_cache=use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True, is_causal=True, **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        output = CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )
        return output if return_dict else output.to_tuple()


class LtgBertForSequenceClassification(LtgBertPreTrainedModel):
    """Classification or regression from the first token's hidden state."""

    def __init__(self, config: LtgBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.ltg_bert = LtgBertModel(config)
        self.classifier = LtgBertClassificationHead(config, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, labels=None,
                past_key_values=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                cache=None, **kwargs):
        r"""labels: [B] class ids (or floats for regression / [B, num_labels] for multi-label)."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.ltg_bert(
            input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, past_key_values=past_key_values,
            cache=cache, output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
            **kwargs,
        )
        logits = self.classifier(outputs.last_hidden_state[:, 0])
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


class LtgBertForTokenClassification(LtgBertPreTrainedModel):
    def __init__(self, config: LtgBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.ltg_bert = LtgBertModel(config)
        self.classifier = LtgBertClassificationHead(config, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        r"""labels: [B, T] class ids, -100 where there is nothing to predict."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.ltg_bert(
            input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
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


class LtgBertForQuestionAnswering(LtgBertPreTrainedModel):
    """Extractive QA: a start and an end logit per token."""

    def __init__(self, config: LtgBertConfig):
        super().__init__(config)
        self.ltg_bert = LtgBertModel(config)
        self.qa_outputs = LtgBertClassificationHead(config, 2)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None,
                start_positions=None, end_positions=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        r"""start_positions, end_positions: [B] token indices of the answer span."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.ltg_bert(
            input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
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


class LtgBertForMultipleChoice(LtgBertPreTrainedModel):
    """One score per choice from each choice's first token: inputs [B, C, T], logits [B, C]."""

    accepts_loss_kwargs = False  # plain mean cross-entropy; nothing to gain from num_items_in_batch

    def __init__(self, config: LtgBertConfig):
        super().__init__(config)
        self.ltg_bert = LtgBertModel(config)
        self.classifier = LtgBertClassificationHead(config, 1)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        r"""input_ids / attention_mask: [B, C, T]; inputs_embeds: [B, C, T, D]; labels: [B] choice index."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        first = input_ids if input_ids is not None else inputs_embeds
        if first is None or first.dim() != (3 if input_ids is not None else 4):
            raise ValueError(
                "LtgBertForMultipleChoice takes input_ids [batch, choices, length] or inputs_embeds "
                f"[batch, choices, length, hidden], got {None if first is None else tuple(first.shape)}."
            )
        num_choices = first.size(1)
        outputs = self.ltg_bert(
            input_ids.flatten(0, 1) if input_ids is not None else None,
            attention_mask=attention_mask.flatten(0, 1) if attention_mask is not None else None,
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


LtgBertConfig.register_for_auto_class()
LtgBertModel.register_for_auto_class("AutoModel")
LtgBertForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
LtgBertForCausalLM.register_for_auto_class("AutoModelForCausalLM")
LtgBertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
LtgBertForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")
LtgBertForQuestionAnswering.register_for_auto_class("AutoModelForQuestionAnswering")
LtgBertForMultipleChoice.register_for_auto_class("AutoModelForMultipleChoice")
