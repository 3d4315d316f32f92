"""Configuration of NorBERT4, LTG's GPT-BERT of 2025 (ltg/norbert4-xs ... -xlarge).

This file is copied into every checkpoint next to `modeling_norbert4.py`: it imports nothing
from hf_ltg.
"""

import sys

from transformers import PretrainedConfig

# Where a sliding window ends. The release's two attention paths disagree by one position:
# "flash": |i - j| <= w - 1, what its flash-attn path computes (`window_size=(w - 1, w - 1)`,
# causal `(w - 1, 0)`), the path NorBERT4 was trained with; "padded": |i - j| <= w, what its
# padded path (`tril(w).triu(-w)`, used where flash-attn is missing) computes.
WINDOW_EDGES = ("flash", "padded")

# Every head of the family, so that one checkpoint folder serves every Auto class whatever
# head class saved it (transformers alone records only the saving class).
AUTO_MAP = {
    "AutoConfig": "configuration_norbert4.Norbert4Config",
    "AutoModel": "modeling_norbert4.Norbert4Model",
    "AutoModelForMaskedLM": "modeling_norbert4.Norbert4ForMaskedLM",
    "AutoModelForCausalLM": "modeling_norbert4.Norbert4ForCausalLM",
    "AutoModelForSequenceClassification": "modeling_norbert4.Norbert4ForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_norbert4.Norbert4ForTokenClassification",
    "AutoModelForQuestionAnswering": "modeling_norbert4.Norbert4ForQuestionAnswering",
    "AutoModelForMultipleChoice": "modeling_norbert4.Norbert4ForMultipleChoice",
}

# The release's field names and the canonical ones this config stores (transformers' caches,
# generation and peft read the canonical ones). Both are accepted and both can be read.
RELEASE_FIELD_NAMES = {"num_layers": "num_hidden_layers", "max_sequence_length": "max_position_embeddings"}

# peft's default target modules for a peft config that names none (`LoraConfig(task_type=...)`).
# peft looks them up by `model.config.model_type` in the mappings of `peft.utils.constants`, which
# know only transformers' own models, so this file adds the family's entries (see
# `register_peft_target_modules`). LoRA, and every method whose defaults peft copies from LoRA's,
# adapts the fused query/key projection and the value projection (peft's BERT choice, `query` and
# `value`); the other methods get peft's BERT choices under this model's module names. No
# LayerNorm of the model has parameters, so LN tuning gets no default (peft then asks for
# `target_modules`).
LORA_TARGET_MODULES = ["qk_proj", "v_proj"]
PEFT_TARGET_MODULES = {
    "IA3_TARGET_MODULES": ["qk_proj", "v_proj", "mlp.down_proj"],
    "IA3_FEEDFORWARD_MODULES": ["mlp.down_proj"],
    "BEFT_TARGET_MODULES": ["v_proj"],
    "POLY_TARGET_MODULES": ["v_proj"],
    "OSF_TARGET_MODULES": ["qk_proj", "v_proj", "out_proj", "up_proj", "down_proj"],
}


class Norbert4Config(PretrainedConfig):
    r"""Configuration of [`Norbert4Model`] and its heads. Defaults are NorBERT4-base's.

    The release's `config.json` loads as it is: `num_layers` and `max_sequence_length` are
    accepted (and readable) as aliases of `num_hidden_layers` and `max_position_embeddings`.

    Args:
        vocab_size: number of token ids.
        hidden_size: width of the residual stream.
        intermediate_size: width of the GeGLU feed-forward (its input projection is twice this).
        num_hidden_layers (alias `num_layers`): number of layers.
        num_attention_heads: heads per attention layer (keys and values have as many).
        query_key_head_size: width of each query/key head; `value_head_size`: of each value head.
            (Neither needs to divide `hidden_size`.)
        max_position_embeddings (alias `max_sequence_length`): the longest sequence the model was
            trained for. Rotary positions have no table, so longer inputs run; they are not checked.
        local_global_ratio: every `local_global_ratio`-th layer (layer i with (i + 1) % ratio == 0)
            is global: window `global_window_length`, rotary base `rope_theta`; the others are
            local: window `local_window_length`, rotary base `local_rope_theta` (the release fixes
            the bases at 160,000 and 10,000).
        global_window_length, local_window_length: sliding-window lengths w. Masked mode sees
            |i - j| within the window on both sides, causal mode only j <= i.
        window_edge: `"flash"` (default: |i - j| <= w - 1, the release's flash-attn path, which
            trained the model) or `"padded"` (|i - j| <= w, the release's padded path); see
            `WINDOW_EDGES`. The two give different outputs only on inputs longer than a window.
        rope_theta, local_rope_theta: rotary bases of the global and local layers.
        is_decoder: the default attention mode of the heads other than the causal LM (which is
            always causal): False = bidirectional (masked mode), True = causal. Each forward of
            [`Norbert4Model`] can override it with `is_causal`.
        layer_norm_eps: epsilon of every LayerNorm (none has parameters).
        embedding_dropout, attention_dropout, hidden_dropout, classifier_dropout: dropout of the
            embedding output, the attention probabilities, the attention and feed-forward
            outputs, and inside the task heads.
        deterministic_flash_attn: the release's flag, passed to flash attention as `deterministic`.
        tie_word_embeddings: share the LM head's output projection with the word embedding (the
            head keeps its bias and its per-feature input scale).
        use_cache: return the key/value cache by default (causal-LM head only).
        pad_token_id, bos_token_id, eos_token_id, unk_token_id, mask_token_id: special token ids;
            defaults are those of the NorBERT4 tokenizer. `bos_token_id` also fills the masked
            LM's first logits column (see `Norbert4ForMaskedLM`).
    """

    model_type = "ltg_norbert4"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]  # the cache output before and after transformers 5.24
    attribute_map = dict(RELEASE_FIELD_NAMES)

    def __init__(
        self,
        vocab_size: int = 51200,
        hidden_size: int = 640,
        intermediate_size: int = 1664,
        num_hidden_layers: int = 24,
        num_attention_heads: int = 10,
        query_key_head_size: int = 64,
        value_head_size: int = 64,
        max_position_embeddings: int = 16384,
        local_global_ratio: int = 4,
        global_window_length: int = 8192,
        local_window_length: int = 256,
        window_edge: str = "flash",
        rope_theta: float = 160_000.0,
        local_rope_theta: float = 10_000.0,
        is_decoder: bool = False,
        layer_norm_eps: float = 1e-7,
        embedding_dropout: float = 0.1,
        attention_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        classifier_dropout: float = 0.2,
        deterministic_flash_attn: bool = False,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        pad_token_id: int | None = 0,
        unk_token_id: int | None = 1,
        bos_token_id: int | None = 2,
        eos_token_id: int | None = 3,
        mask_token_id: int | None = 4,
        **kwargs,
    ):
        # The release's names; with both given, the canonical one wins.
        for release_name, name in RELEASE_FIELD_NAMES.items():
            if release_name in kwargs:
                value = kwargs.pop(release_name)
                if name == "num_hidden_layers":
                    num_hidden_layers = value
                else:
                    max_position_embeddings = value
        kwargs.pop("model", None)  # the release's config class sets `model = "norbert4"`
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.query_key_head_size = query_key_head_size
        self.value_head_size = value_head_size
        self.max_position_embeddings = max_position_embeddings
        self.local_global_ratio = local_global_ratio
        self.global_window_length = global_window_length
        self.local_window_length = local_window_length
        self.window_edge = window_edge
        self.rope_theta = rope_theta
        self.local_rope_theta = local_rope_theta
        self.is_decoder = is_decoder
        self.layer_norm_eps = layer_norm_eps
        self.embedding_dropout = embedding_dropout
        self.attention_dropout = attention_dropout
        self.hidden_dropout = hidden_dropout
        self.classifier_dropout = classifier_dropout
        self.deterministic_flash_attn = deterministic_flash_attn
        self.tie_word_embeddings = tie_word_embeddings
        self.use_cache = use_cache
        self.pad_token_id = pad_token_id
        self.unk_token_id = unk_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.mask_token_id = mask_token_id
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        self._validate()  # before transformers' own validators (5.x), whose errors name no field
        # transformers 4.x's PretrainedConfig.__init__ sets these from its own defaults: set them again
        own = {name: getattr(self, name) for name in ("is_decoder", "tie_word_embeddings", "use_cache", "pad_token_id",
                                                       "bos_token_id", "eos_token_id")}
        super().__init__(**kwargs)
        for name, value in own.items():
            setattr(self, name, value)

    def is_global_layer(self, layer_idx: int) -> bool:
        """Whether layer `layer_idx` (from 0) is a global layer (long window, rotary base `rope_theta`)."""
        return (layer_idx + 1) % self.local_global_ratio == 0

    def _validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "query_key_head_size", "value_head_size", "max_position_embeddings", "local_global_ratio",
                     "global_window_length", "local_window_length"):
            value = getattr(self, name)
            if not _is_int(value) or not 0 < value < 2**63:
                raise ValueError(f"Norbert4Config.{name} must be a positive integer, got {value!r}.")
        if self.query_key_head_size % 2:
            raise ValueError(
                f"Norbert4Config.query_key_head_size must be even (rotary positions rotate pairs of features), "
                f"got {self.query_key_head_size}."
            )
        if not isinstance(self.window_edge, str) or self.window_edge not in WINDOW_EDGES:
            raise ValueError(
                f"Norbert4Config.window_edge {self.window_edge!r} is unknown; use one of {WINDOW_EDGES} "
                "('flash': |i - j| <= w - 1, as NorBERT4 was trained; 'padded': |i - j| <= w)."
            )
        for name in ("rope_theta", "local_rope_theta", "layer_norm_eps"):
            value = getattr(self, name)
            if not (_is_real(value) and 0 < value < float("inf")):
                raise ValueError(f"Norbert4Config.{name} must be a positive finite number, got {value!r}.")
        for name in ("embedding_dropout", "attention_dropout", "hidden_dropout", "classifier_dropout"):
            value = getattr(self, name)
            if not (_is_real(value) and 0.0 <= value < 1.0):
                raise ValueError(f"Norbert4Config.{name} must be a number in [0, 1), got {value!r}.")
        for name in ("is_decoder", "deterministic_flash_attn", "tie_word_embeddings", "use_cache"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Norbert4Config.{name} must be true or false, got {getattr(self, name)!r}.")
        for name in ("pad_token_id", "unk_token_id", "bos_token_id", "eos_token_id", "mask_token_id"):
            value = getattr(self, name)
            if value is not None and not _is_int(value):
                raise ValueError(f"Norbert4Config.{name} must be an integer token id or None, got {value!r}.")
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"Norbert4Config.{name} = {value} is outside the vocabulary [0, {self.vocab_size}); "
                    "set it to a valid id or None."
                )

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
        key = name[len("TRANSFORMERS_MODELS_TO_"):-len("_MAPPING")]
        if key == "LNTUNING_TARGET_MODULES":
            continue  # no LayerNorm has parameters: LN tuning has nothing to adapt
        mapping.setdefault(Norbert4Config.model_type, list(PEFT_TARGET_MODULES.get(key, LORA_TARGET_MODULES)))


register_peft_target_modules()
