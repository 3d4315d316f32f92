"""Configuration of LTG GPT, a GPT-2 style decoder.

This file is copied into every checkpoint next to `modeling_ltg_gpt.py`: it imports nothing
from hf_ltg.
"""

import sys

from transformers import PretrainedConfig

ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_new", "gelu", "relu", "silu", "quick_gelu")

# Every head of the family, so that one checkpoint folder serves every Auto class whatever
# head class saved it (transformers alone records only the saving class).
AUTO_MAP = {
    "AutoConfig": "configuration_ltg_gpt.LtgGptConfig",
    "AutoModel": "modeling_ltg_gpt.LtgGptModel",
    "AutoModelForCausalLM": "modeling_ltg_gpt.LtgGptForCausalLM",
    "AutoModelForSequenceClassification": "modeling_ltg_gpt.LtgGptForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_ltg_gpt.LtgGptForTokenClassification",
}

# The published GPT-2 sizes (OpenAI, 2019); vocabulary and context are shared.
PRESETS = {
    "gpt2-small": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12),
    "gpt2-medium": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16),
    "gpt2-large": dict(hidden_size=1280, num_hidden_layers=36, num_attention_heads=20),
    "gpt2-xl": dict(hidden_size=1600, num_hidden_layers=48, num_attention_heads=25),
}
PRESET_ALIASES = {"gpt2": "gpt2-small", "small": "gpt2-small", "medium": "gpt2-medium",
                  "large": "gpt2-large", "xl": "gpt2-xl"}

# peft's default target modules for a peft config that names none (`LoraConfig(task_type=...)`).
# peft looks them up by `model.config.model_type` in the mappings of `peft.utils.constants`, which
# know only transformers' own models, so this file adds the family's entries (see
# `register_peft_target_modules`). LoRA, and every method whose defaults peft copies from LoRA's,
# adapts the fused q/k/v projection, as peft does for GPT-2 (`c_attn`); the other methods get
# peft's GPT-2 choices under this model's module names.
LORA_TARGET_MODULES = ["qkv_proj"]
PEFT_TARGET_MODULES = {
    "IA3_TARGET_MODULES": ["qkv_proj", "mlp.fc_out"],
    "IA3_FEEDFORWARD_MODULES": ["mlp.fc_out"],
    "LNTUNING_TARGET_MODULES": ["ln_1", "ln_2", "ln_f"],
    "OSF_TARGET_MODULES": ["qkv_proj", "out_proj", "fc_in", "fc_out"],
    "C3A_TARGET_MODULES": ["mlp.fc_out"],
    "FOURIERFT_TARGET_MODULES": ["mlp.fc_out"],
    "WAVEFT_TARGET_MODULES": ["mlp.fc_out"],
}


class LtgGptConfig(PretrainedConfig):
    r"""Configuration of [`LtgGptModel`] and its heads.

    Args:
        vocab_size: number of token ids.
        max_position_embeddings: longest sequence (learned absolute positions).
        hidden_size: width of the residual stream.
        num_hidden_layers: number of decoder blocks.
        num_attention_heads: heads per attention layer; must divide `hidden_size`.
        intermediate_size: width of the MLP; `None` means `4 * hidden_size`.
        activation: MLP activation, one of `ACTIVATIONS` (transformers' names).
        embedding_dropout, attention_dropout, hidden_dropout: dropout probabilities of the
            embeddings, the attention probabilities and the residual branches.
        classifier_dropout: dropout before the token-classification head; `None` means
            `hidden_dropout`.
        layer_norm_eps: epsilon of every LayerNorm.
        qkv_bias: whether the fused query/key/value projection has a bias.
        score_bias: whether the sequence-classification head `score` has a bias (GPT-2's has
            none; classifiers converted from "GPT from scratch" models do).
        token_type_embeddings: whether `token_type_ids`, when a forward gets them, add
            `wte(token_type_ids)` to the input embeddings, as GPT-2 does. Off by default: the ids
            are then accepted and ignored (the family's tokenizers return none, but a tokenizer
            saved for transformers 4.x may, and `generate(**tokenizer(text))` passes them on).
        initializer_range: standard deviation of the normal initialisation.
        tie_word_embeddings: share the LM head with the token embedding.
        use_cache: return the key/value cache by default.
        bos_token_id, eos_token_id, pad_token_id: special ids, each `None` or inside the
            vocabulary (the GPT-2 presets use 50256, `<|endoftext|>`, for bos and eos).
    """

    model_type = "ltg_gpt"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]  # the cache output before and after transformers 5.24
    # Tensor parallelism, for vLLM's Transformers backend. q, k and v are packed one after the other
    # in `qkv_proj`, which no plain column split shards by heads: vLLM's packed-QKV fusion, which
    # recognises the attention's `split((D, D, D))`, shards it by heads, and out_proj then takes
    # this rank's heads ("rowwise"). Where nothing re-packs it (transformers' own tp_plan="auto",
    # older vLLM), "colwise_rep" keeps q/k/v whole, and the shapes disagree loudly rather than
    # mixing heads silently. No pipeline plan: the position embedding is added inside the base
    # model's forward, so a later stage would need the positions, not the embeddings.
    base_model_tp_plan = {
        "h.*.attn.qkv_proj": "colwise_rep",
        "h.*.attn.out_proj": "rowwise",
        "h.*.mlp.fc_in": "colwise",
        "h.*.mlp.fc_out": "rowwise",
    }

    def __init__(
        self,
        vocab_size: int = 50257,
        max_position_embeddings: int = 1024,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int | None = None,
        activation: str = "gelu_pytorch_tanh",
        embedding_dropout: float = 0.1,
        attention_dropout: float = 0.1,
        hidden_dropout: float = 0.1,
        classifier_dropout: float | None = None,
        layer_norm_eps: float = 1e-5,
        qkv_bias: bool = True,
        score_bias: bool = False,
        token_type_embeddings: bool = False,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        if intermediate_size is None and _is_int(hidden_size):  # other hidden sizes: refused by _validate
            intermediate_size = 4 * hidden_size
        self.intermediate_size = intermediate_size
        self.activation = activation
        self.embedding_dropout = embedding_dropout
        self.attention_dropout = attention_dropout
        self.hidden_dropout = hidden_dropout
        self.classifier_dropout = classifier_dropout
        self.layer_norm_eps = layer_norm_eps
        self.qkv_bias = qkv_bias
        self.score_bias = score_bias
        self.token_type_embeddings = token_type_embeddings
        self.initializer_range = initializer_range
        self.tie_word_embeddings = tie_word_embeddings
        self.use_cache = use_cache
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        self._validate()  # before transformers' own validators (5.x), whose errors name no field
        # transformers 4.x's PretrainedConfig.__init__ sets these from its own defaults: set them again
        own = {name: getattr(self, name)
               for name in ("tie_word_embeddings", "use_cache", "bos_token_id", "eos_token_id", "pad_token_id")}
        super().__init__(**kwargs)
        for name, value in own.items():
            setattr(self, name, value)

    def _validate(self) -> None:
        for name in ("vocab_size", "max_position_embeddings", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "intermediate_size"):
            value = getattr(self, name)
            if not _is_int(value) or not 0 < value < 2**63:
                raise ValueError(f"LtgGptConfig.{name} must be a positive integer, got {value!r}; "
                                 "sizes are below 2**63 and must fit in memory.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"LtgGptConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}); choose a head count that divides it."
            )
        if not isinstance(self.activation, str) or self.activation not in ACTIVATIONS:
            raise ValueError(f"LtgGptConfig.activation {self.activation!r} is unknown; use one of {ACTIVATIONS}.")
        for name in ("embedding_dropout", "attention_dropout", "hidden_dropout", "classifier_dropout"):
            value = getattr(self, name)
            if (value is not None or name != "classifier_dropout") and not (_is_real(value) and 0.0 <= value < 1.0):
                raise ValueError(f"LtgGptConfig.{name} must be a number in [0, 1), got {value!r}.")
        if not (_is_real(self.layer_norm_eps) and 0 < self.layer_norm_eps < float("inf")):
            raise ValueError(f"LtgGptConfig.layer_norm_eps must be a positive finite number, got {self.layer_norm_eps!r}.")
        if not (_is_real(self.initializer_range) and 0 <= self.initializer_range < float("inf")):
            raise ValueError(
                f"LtgGptConfig.initializer_range must be a finite number >= 0, got {self.initializer_range!r}."
            )
        for name in ("qkv_bias", "score_bias", "token_type_embeddings", "tie_word_embeddings", "use_cache"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"LtgGptConfig.{name} must be true or false, got {getattr(self, name)!r}.")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            ids = value if isinstance(value, list) and value and name == "eos_token_id" else [value]
            if not all(i is None or _is_int(i) for i in ids):
                raise ValueError(f"LtgGptConfig.{name} must be an integer token id or None, got {value!r}.")
            if any(i is not None and not 0 <= i < self.vocab_size for i in ids):
                raise ValueError(
                    f"LtgGptConfig.{name} = {value} is outside the vocabulary [0, {self.vocab_size}); "
                    f"set it to a valid id or None."
                )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "LtgGptConfig":
        """A published GPT-2 size: `gpt2-small` (alias `gpt2`, `small`), `-medium`, `-large`, `-xl`."""
        key = PRESET_ALIASES.get(name, name)
        if key not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)} or {sorted(PRESET_ALIASES)}.")
        gpt2_ids = dict(bos_token_id=50256, eos_token_id=50256)
        return cls(**{**PRESETS[key], **gpt2_ids, **overrides})

    def to_dict(self):
        # peft reads the config through `to_dict()` before it looks up default target modules,
        # so peft imported after this file still finds them.
        register_peft_target_modules()
        return super().to_dict()


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # NaN != NaN


def register_peft_target_modules(constants=None) -> None:
    """Add the family's entries to peft's default-target mappings, keeping any entry already there.

    `constants` is `peft.utils.constants`; by default the one already imported, if any: importing
    peft here would add about a second to every load of this file.
    """
    constants = constants or sys.modules.get("peft.utils.constants")
    if constants is None:
        return
    for name in dir(constants):
        mapping = getattr(constants, name)
        if not (name.startswith("TRANSFORMERS_MODELS_TO_") and name.endswith("_MODULES_MAPPING")
                and isinstance(mapping, dict)):
            continue
        targets = PEFT_TARGET_MODULES.get(name[len("TRANSFORMERS_MODELS_TO_"):-len("_MAPPING")], LORA_TARGET_MODULES)
        mapping.setdefault(LtgGptConfig.model_type, list(targets))


register_peft_target_modules()
