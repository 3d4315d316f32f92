"""LTG GPT: a GPT-2 style decoder as a native Hugging Face model.

Pre-norm blocks `x + attn(LN(x))`, `x + mlp(LN(x))`, learned absolute positions, a final
LayerNorm and an LM head tied to the token embedding: GPT-2 exactly, with a fused q/k/v
`nn.Linear` instead of GPT-2's transposed `Conv1D`.

The file reads as the model: attention, MLP, block, model, heads. Its CPU speed paths (oneDNN
products, 16-bit dropout masks, the chunked loss) live in `kernels_ltg_gpt.py`, each probed on the
machine before use and with the plain op as its fallback; int8 layers live in `int8_ltg_gpt.py`.
The linear layers are plain `nn.Linear` modules, which quantizers (bitsandbytes, quanto,
llm-compressor) and adapters find by type; the model calls them as `linear(layer, x)`, which is
`layer(x)` with the CPU fast path for an unwrapped, unhooked layer.
The three files are copied into every checkpoint next to `configuration_ltg_gpt.py`: they import
only torch, transformers and each other, never hf_ltg.
"""

import importlib
import inspect
import math
import types

import torch
import torch.nn.functional as F
from torch import nn
from transformers import cache_utils
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
from .int8_ltg_gpt import quantize_linear_layers_
from .kernels_ltg_gpt import (
    Dropout,
    attention_in_fp32,
    chunked_causal_lm_loss,
    fast_dropout,
    linear,
    pack_cpu_weights,
    plain_ops_required,
)

# int8_ltg_gpt's own sibling, imported here too: transformers 4.x and 5.0 copy only the model file's
# relative imports into their module cache, not those of its siblings.
from .weight_only_ltg_gpt import WEIGHT_ONLY_LAYERS  # noqa: F401

try:  # transformers >= 5: initialisers that skip tensors loaded from a checkpoint
    from transformers import initialization as init
except ImportError:  # transformers 4.x: torch.nn.init, skipping tensors the loader marked as loaded
    def _skip_loaded(initialise):
        def wrapped(tensor, *args, **kwargs):
            return tensor if getattr(tensor, "_is_hf_initialized", False) else initialise(tensor, *args, **kwargs)
        return wrapped

    init = types.SimpleNamespace(**{name: _skip_loaded(getattr(nn.init, name)) for name in ("normal_", "zeros_", "ones_")})

# generate's preallocated KV cache (`cache_implementation="static"`); every supported release has it
STATIC_CACHE = getattr(cache_utils, "StaticCache", None)

# transformers <= 5.0 build the causal mask from explicit cache positions; later releases derive
# them from the cache.
MASK_TAKES_CACHE_POSITION = "cache_position" in inspect.signature(create_causal_mask).parameters

# transformers 5.24 renamed the KV cache from `past_key_values` to `cache` (forward arguments,
# output fields, generate). This file runs on both sides of the rename: forwards take either
# name and outputs use the field the installed version declares.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _gathered_column_style() -> str:
    """transformers' tensor-parallel style for a column-split linear whose output is gathered on every
    rank (what a tied LM head needs): `colwise_gather_output`, which older releases call `colwise_rep`."""
    for name in ("transformers.distributed.tensor_parallel", "transformers.integrations.tensor_parallel"):
        try:
            styles = importlib.import_module(name).ALL_PARALLEL_STYLES
            return "colwise_gather_output" if "colwise_gather_output" in styles else "colwise_rep"
        except (ImportError, AttributeError, TypeError):
            continue
    return "colwise_rep"


def resolve_cache(past_key_values: Cache | None, cache: Cache | None) -> Cache | None:
    """The KV cache passed under either name (transformers >= 5.24 `cache`, earlier ones and peft
    `past_key_values`)."""
    if past_key_values is not None and cache is not None and past_key_values is not cache:
        raise ValueError(
            "Got two different KV caches, `cache` and `past_key_values`: pass one of them (peft <= 0.21's "
            "prefix tuning passes its prefix as `past_key_values`)."
        )
    return cache if cache is not None else past_key_values


def preallocated_cache_on_cpu(model, kwargs: dict) -> dict:
    """`generate`'s keyword arguments with `cache_implementation="static"` for a model on CPU, where
    the caller passed no cache, no cache choice (argument or generation config), `use_cache=False`,
    beam search or an assistant model, and no wrapper replaced the step inputs (peft's prompt
    learning sets its own `prepare_inputs_for_generation` on the instance and builds the cache
    itself); otherwise `kwargs` unchanged."""
    config = kwargs.get("generation_config") or model.generation_config
    chosen = ("past_key_values", "cache", "cache_implementation", "assistant_model", "prompt_lookup_num_tokens")
    if (
        model.device.type != "cpu"
        or "prepare_inputs_for_generation" in vars(model)
        or STATIC_CACHE is None
        or any(kwargs.get(name) is not None for name in chosen)
        or getattr(config, "cache_implementation", None) is not None
        or kwargs.get("use_cache", getattr(config, "use_cache", True)) is False
        or (kwargs.get("num_beams") or getattr(config, "num_beams", 1) or 1) != 1
    ):
        return kwargs
    return {**kwargs, "cache_implementation": "static"}


def positions_from_mask(attention_mask, past_length: int, length: int, device) -> torch.LongTensor:
    """Positions of the new tokens, (B, T) or (1, T): where a 2-D attention mask covers the cached
    and new tokens, the count of real tokens before each one (as `generate` computes them), so that
    padding takes no positions; otherwise past_length, past_length + 1, ...

    A left-padded row is thus positioned as it would be alone, also when peft's prompt tuning and
    p-tuning drop `position_ids` and prepend their virtual tokens (and ones to the mask).
    """
    if attention_mask is not None and attention_mask.ndim == 2:
        attention_mask = attention_mask.to(device)
        positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        return positions[:, -length:]
    return torch.arange(past_length, past_length + length, device=device)[None]


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


def filled_part(key, value, attention_mask, cache_position):
    """The keys and values up to the last position written, with the mask's matching columns.

    A static cache is as long as the longest generation; attending over its unwritten tail costs
    time (the mask zeroes its weights). A query at position p sees positions <= p only, so cutting
    the cache after the newest position leaves every output as it was. Other caches are returned
    as they are; the mask is cut only when it is a tensor with one column per cached position."""
    filled = int(cache_position[-1]) + 1
    if key.shape[2] <= filled:
        return key, value, attention_mask
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape[-1] != key.shape[2]:
            return key, value, attention_mask
        attention_mask = attention_mask[..., :filled]
    return key[:, :, :filled], value[:, :, :filled], attention_mask


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
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.resid_dropout = Dropout(config.hidden_dropout)

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, output_attentions=False, **kwargs):
        batch, length, _ = hidden_states.shape
        # Heads as -1 and the split as a literal triple: under tensor parallelism (transformers'
        # tp_plan, vLLM's packed-QKV fusion) this rank holds only some heads of each projection.
        width = self.config.hidden_size
        query, key, value = linear(self.qkv_proj, hidden_states).split((width, width, width), dim=-1)
        query, key, value = (x.view(batch, length, -1, self.head_dim).transpose(1, 2) for x in (query, key, value))
        # each (B, nh, T, hs)
        if past_key_values is not None:
            # a static cache of releases before 5.x writes at the cache positions it is given (later ones count)
            position = kwargs.get("cache_position")
            cache_kwargs = {"cache_position": position} if position is not None else None
            key, value = past_key_values.update(key, value, self.layer_idx, cache_kwargs)  # (B, nh, S, hs)
            if position is not None and query.device.type == "cpu" and not plain_ops_required():
                key, value, attention_mask = filled_part(key, value, attention_mask, position)

        attention_dropout = self.config.attention_dropout if self.training else 0.0
        attention_interface = eager_attention_forward
        # Only the eager path computes the weights. On CPU, SDPA with dropout falls back to an
        # unfused kernel with slow dropout: the eager path with `fast_dropout` beats it.
        cpu_dropout = attention_dropout > 0 and query.device.type == "cpu"
        if not output_attentions and not (cpu_dropout and self.config._attn_implementation == "sdpa"):
            if hasattr(ALL_ATTENTION_FUNCTIONS, "get_interface"):
                attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                    self.config._attn_implementation, eager_attention_forward
                )
            else:  # older releases (4.x, 5.0): a plain mapping
                attention_interface = ALL_ATTENTION_FUNCTIONS.get(self.config._attn_implementation, eager_attention_forward)
        if attention_in_fp32(query):
            # a CPU that emulates 16-bit products, or one decoded 16-bit token on CPU: the same
            # products in fp32 on the 16-bit q, k, v (see attention_in_fp32)
            if isinstance(attention_mask, torch.Tensor) and attention_mask.is_floating_point():
                attention_mask = attention_mask.float()
            with torch.autocast("cpu", enabled=False):
                output, weights = attention_interface(
                    self, query.float(), key.float(), value.float(), attention_mask,
                    dropout=attention_dropout, scaling=self.scaling, **kwargs,
                )
            output = output.to(query.dtype)
            weights = weights.to(query.dtype) if weights is not None else None
        else:
            output, weights = attention_interface(
                self, query, key, value, attention_mask, dropout=attention_dropout, scaling=self.scaling, **kwargs
            )
        output = self.resid_dropout(linear(self.out_proj, output.reshape(batch, length, -1)))
        return output, weights


class LtgGptMLP(nn.Module):
    def __init__(self, config: LtgGptConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size)
        # GPT-2's "gelu_new" is the tanh approximation of GELU: the fused kernel computes the same
        # function in one pass (transformers' NewGELUActivation takes eight, and saves their outputs).
        self.act = ACT2FN["gelu_pytorch_tanh" if config.activation == "gelu_new" else config.activation]
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = Dropout(config.hidden_dropout)

    def forward(self, hidden_states):
        return self.dropout(linear(self.fc_out, self.act(linear(self.fc_in, hidden_states))))


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
        weight on each call. One row (batch-1 decoding) avoids that without copies (ATen's
        matrix-vector product, see `kernels_ltg_gpt.aten_one_row_linear_works`); for several rows
        (batched decoding) packed copies make bf16 `generate` about 1.3x faster on CPUs with native
        bf16 (fp32 gains little; where the probe finds no working oneDNN path, nothing changes).
        The price is a second copy of the linear weights (and of the tied embedding) in memory while
        enabled. Copies are made on first use and remade when a weight
        changes; training, autocast and compiled graphs never use them. Returns the model.
        """
        pack_cpu_weights(self, enabled)
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
        if getattr(self.config, "quantization", None):  # an int8 checkpoint (int8_ltg_gpt.py)
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
        token_type_ids: torch.LongTensor | None = None,
        **kwargs,
    ):
        """`token_type_ids` (B, T) add `wte(token_type_ids)` to the embeddings, as in GPT-2, when
        `config.token_type_embeddings` is set; otherwise they are accepted and ignored."""
        past_key_values = resolve_cache(past_key_values, cache)
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        # unasked, a training forward builds no cache (it would copy every key and value)
        use_cache = use_cache if use_cache is not None else self.config.use_cache and not self.training
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
            self._check_positions(past_length + length)
        elif not torch.compiler.is_compiling() and position_ids.numel():
            # vLLM packs many sequences into one row: the positions, not the row length, must fit
            self._check_positions(int(position_ids.max()) + 1)
        if attention_mask is not None and attention_mask.ndim == 2:
            expected = (batch, past_length + length)
            if tuple(attention_mask.shape) != expected:
                raise ValueError(
                    f"attention_mask has shape {tuple(attention_mask.shape)} but the input needs {expected} "
                    f"(batch, cached + new tokens)."
                )
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask, past_length, length, inputs_embeds.device)

        hidden_states = inputs_embeds + self.wpe(position_ids)  # (B, T, D)
        if token_type_ids is not None and self.config.token_type_embeddings:
            self._check_token_ids(token_type_ids, "token_type_ids")
            hidden_states = hidden_states + self.wte(token_type_ids.view(-1, length))
        hidden_states = self.drop(hidden_states)
        # the cache goes by position: its keyword is `past_key_values` before transformers 5.24, `cache` after
        cache_position = torch.arange(past_length, past_length + length, device=inputs_embeds.device)
        if past_key_values is not None and kwargs.get("cache_position") is None:
            # generate passes no positions from 5.24 on; the attention cuts a static cache after the last one
            kwargs["cache_position"] = cache_position
        if MASK_TAKES_CACHE_POSITION:
            causal_mask = create_causal_mask(
                self.config, inputs_embeds, attention_mask, cache_position, past_key_values, position_ids
            )
        else:
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

    def _check_token_ids(self, input_ids, name="input_ids"):
        # An out-of-range id would otherwise be an opaque IndexError (or a device assert on GPU).
        if torch.compiler.is_compiling() or input_ids.numel() == 0:
            return
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= self.config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"{name} contains token id {bad}, outside the vocabulary [0, {self.config.vocab_size}); "
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

    Positions: without `position_ids`, a 2-D `attention_mask` decides them (each token's position
    is the number of real tokens before it), so a left-padded row gets the logits and greedy tokens
    it gets alone, in a plain forward as in `generate`, and with peft's prompt tuning and p-tuning,
    which drop `position_ids`. (transformers' GPT-2 counts padding in a forward without
    `position_ids`; pass `position_ids` to reproduce that.)
    """

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}
    # The head shares the embedding's weight but is a linear of its own: under the config's
    # base_model_tp_plan (tp_plan="auto") it needs its own entry, as Llama's head has,
    # or F.linear would meet a replicated input and a sharded weight.
    _tp_plan = {"lm_head": _gathered_column_style()}

    def __init__(self, config: LtgGptConfig):
        super().__init__(config)
        self.transformer = LtgGptModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def generate(self, *args, **kwargs):
        """`GenerationMixin.generate`; on CPU, unless the caller chose a cache, with a preallocated
        (static) KV cache: the default dynamic cache concatenates, so copies the whole cache, at every
        token (13 % of a GPT-2 small decoding step on 2 cores). Same tokens, still the Cache API."""
        return super().generate(*args, **preallocated_cache_on_cpu(self, kwargs))

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
        token_type_ids: torch.LongTensor | None = None,
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
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
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
            logits = linear(self.lm_head, hidden_states)
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
            and type(head) is nn.Linear
            and head.bias is None
            and not (head._forward_hooks or head._forward_pre_hooks or "forward" in head.__dict__)
        )

    def _chunked_loss(self, hidden_states, labels, num_items_in_batch=None, shift_labels=None, **kwargs):
        """The causal-LM loss of `self.loss_function`, from hidden states (B, T, D) in chunks of rows."""
        return chunked_causal_lm_loss(hidden_states, self.lm_head.weight, labels, num_items_in_batch, shift_labels)


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
        token_type_ids: torch.LongTensor | None = None,
        **kwargs,
    ):
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            cache=cache,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
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
        token_type_ids: torch.LongTensor | None = None,
        **kwargs,
    ):
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            **kwargs,
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
