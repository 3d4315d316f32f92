"""Configuration of LTG-BERT, the Language Technology Group's masked language model.

This file is copied into every checkpoint next to `modeling_ltg_bert.py`: it imports nothing
from hf_ltg.
"""

import sys

from transformers import PretrainedConfig

# How the projected relative-position table splits into its query-position and key-position
# halves. "babylm": halves of the whole width, then heads (babylm/train/model.py, the BabyLM and
# GPT-BERT wrappers, the 2023-03 NorBERT3 modeling_norbert.py); "bnc": heads first, then halves
# within each head (the original BNC LTG-BERT, training/model.py, and the modeling_norbert.py the
# ltg/norbert3-* Hub models ship). Checkpoints of one layout give wrong outputs under the other;
# `hf-ltg convert` reads a release's layout from its modeling file.
POSITION_LAYOUTS = ("babylm", "bnc")

# Where the attention output is normalised. "after_out_proj": LTG-BERT (out_proj, then a LayerNorm
# with weight and bias); "before_out_proj": GPT-BERT (ltgoslo/gpt-bert, pretraining/model.py and
# model_extra.py: a LayerNorm without parameters on the merged heads, then out_proj).
ATTENTION_OUTPUT_NORMS = ("after_out_proj", "before_out_proj")

# Every head of the family, so that one checkpoint folder serves every Auto class whatever
# head class saved it (transformers alone records only the saving class).
AUTO_MAP = {
    "AutoConfig": "configuration_ltg_bert.LtgBertConfig",
    "AutoModel": "modeling_ltg_bert.LtgBertModel",
    "AutoModelForMaskedLM": "modeling_ltg_bert.LtgBertForMaskedLM",
    "AutoModelForSequenceClassification": "modeling_ltg_bert.LtgBertForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_ltg_bert.LtgBertForTokenClassification",
    "AutoModelForQuestionAnswering": "modeling_ltg_bert.LtgBertForQuestionAnswering",
    "AutoModelForMultipleChoice": "modeling_ltg_bert.LtgBertForMultipleChoice",
    "AutoModelForCausalLM": "modeling_ltg_bert.LtgBertForCausalLM",
}

# The published BabyLM sizes (ltgoslo/ltg-bert, babylm/configs); vocabulary, context and
# position buckets are shared.
PRESETS = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048),
    "small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1024),
    "xs": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=512),
}

# peft's default target modules for a peft config that names none (`LoraConfig(task_type=...)`).
# peft looks them up by `model.config.model_type` in the mappings of `peft.utils.constants`, which
# know only transformers' own models, so this file adds the family's entries (see
# `register_peft_target_modules`). LoRA, and every method whose defaults peft copies from LoRA's,
# adapts the fused query/key projection and the value projection, as peft does for BERT (`query`,
# `value`); the other methods get peft's BERT (or, where it has none, GPT-2) choices under this
# model's module names. LN tuning takes the LayerNorms that have parameters (GPT-BERT's
# parameter-free attention norm is `attention.pre_out_proj_norm`, which it does not match).
# Poly leaves out `in_proj_qk`, which also projects the 2-D relative-position table (Poly's layers
# take 3-D input).
LORA_TARGET_MODULES = ["in_proj_qk", "in_proj_v"]
PEFT_TARGET_MODULES = {
    "IA3_TARGET_MODULES": ["in_proj_qk", "in_proj_v", "mlp.down_proj"],
    "IA3_FEEDFORWARD_MODULES": ["mlp.down_proj"],
    "BEFT_TARGET_MODULES": ["in_proj_v"],
    "POLY_TARGET_MODULES": ["in_proj_v"],
    "LNTUNING_TARGET_MODULES": ["relative_layer_norm", "attention.post_layer_norm"],
    "OSF_TARGET_MODULES": ["in_proj_qk", "in_proj_v", "out_proj", "up_proj", "down_proj"],
}


class LtgBertConfig(PretrainedConfig):
    r"""Configuration of [`LtgBertModel`] and its heads. Defaults are the BabyLM "base" model.

    Args:
        vocab_size: number of token ids.
        hidden_size: width of the residual stream.
        num_hidden_layers: number of encoder layers.
        num_attention_heads: heads per attention layer; must divide `hidden_size`.
        intermediate_size: width of the GEGLU feed-forward (its input projection is twice this).
        max_position_embeddings: horizon M of the logarithmic relative-position buckets:
            distances up to `position_bucket_size // 2` are exact, longer ones share
            logarithmically wider buckets up to M - 1, and every distance >= M - 1 shares the
            outermost bucket. There are no absolute positions, so this is not a length limit:
            longer inputs are accepted (as the original rebuilds its table for them) and see
            all far-away tokens in that outermost bucket.
        position_bucket_size: b; the relative embedding table has 2b - 1 rows.
        position_layout: `"babylm"` or `"bnc"`, see `POSITION_LAYOUTS`.
        attention_output_norm: `"after_out_proj"` (LTG-BERT) or `"before_out_proj"` (GPT-BERT), see
            `ATTENTION_OUTPUT_NORMS`.
        attention_gate: GPT-BERT's gated attention (ltgoslo/gpt-bert `model_extra.py`, the model of the
            paper): `in_proj_v` is twice as wide and its second half, through an exact GELU, gates the
            merged heads before the output norm.
        layer_weighting: GPT-BERT's layer weighting (`model_extra.py`, DenseFormer's depth-weighted
            average): after every attention and feed-forward sub-layer the residual stream becomes a
            learned weighted sum of the embedding output and of every sub-layer output so far
            (weights `layers.N.attention_depth_weights` [2N+2] and `layers.N.mlp_depth_weights`
            [2N+3], initialised to pass the newest output through unchanged).
        masked_next_token: GPT-BERT's masked next-token prediction (MNTP). GPT-BERT trains hidden
            state i to predict token i + 1 in both modes, so the prediction for a masked token comes
            from the position before it. With this flag `LtgBertForMaskedLM` applies that shift
            inside: its logits at position i are the head applied to hidden state i - 1, so
            `labels` and `[MASK]` positions keep the usual BERT convention (label the masked
            position itself; the fill-mask pipeline reads the logits at `[MASK]`). Position 0 has
            nothing before it: its logits are zeros, so label it -100 (it holds `[CLS]`). The
            causal-LM head is the same with or without the flag (hidden state i predicts token
            i + 1; the loss shifts the labels).
        masked_lm_suppressed_token_ids: token ids whose masked-LM logits are set to -inf, so that
            fill-mask never answers them. LTG's Hub releases (NorBERT3, the BabyLM LTG-BERT) do this
            for their special and unused ids; `hf-ltg convert` reads the range from the release's
            modeling file. Empty (the default) leaves the logits as the head computes them; the
            causal-LM and task heads never apply it.
        layer_norm_eps: epsilon of every LayerNorm.
        hidden_dropout_prob: dropout of the embeddings and of every residual branch.
        attention_probs_dropout_prob: dropout of the attention probabilities and of the
            relative embedding before its projection.
        classifier_dropout: dropout inside the task heads; `None` means `hidden_dropout_prob`.
        tie_word_embeddings: share the masked-LM / causal-LM decoder weight with the word
            embedding (the decoder keeps its own bias).
        use_cache: return the key/value cache by default (causal-LM head only).
        pad_token_id, bos_token_id, eos_token_id, unk_token_id, cls_token_id, sep_token_id,
            mask_token_id: special token ids; defaults are those of the BabyLM tokenizer.
    """

    model_type = "ltg_bert"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]  # the cache output before and after transformers 5.24

    def __init__(
        self,
        vocab_size: int = 16384,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 2048,
        max_position_embeddings: int = 512,
        position_bucket_size: int = 32,
        position_layout: str = "babylm",
        attention_output_norm: str = "after_out_proj",
        attention_gate: bool = False,
        layer_weighting: bool = False,
        masked_next_token: bool = False,
        masked_lm_suppressed_token_ids: list[int] | tuple[int, ...] = (),
        layer_norm_eps: float = 1e-7,
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        classifier_dropout: float | None = None,
        tie_word_embeddings: bool = True,
        use_cache: bool = True,
        pad_token_id: int | None = 3,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        unk_token_id: int | None = 0,
        cls_token_id: int | None = 1,
        sep_token_id: int | None = 2,
        mask_token_id: int | None = 4,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.position_bucket_size = position_bucket_size
        self.position_layout = position_layout
        self.attention_output_norm = attention_output_norm
        self.attention_gate = attention_gate
        self.layer_weighting = layer_weighting
        self.masked_next_token = masked_next_token
        self.masked_lm_suppressed_token_ids = list(masked_lm_suppressed_token_ids or ())
        self.layer_norm_eps = layer_norm_eps
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.classifier_dropout = classifier_dropout
        self.tie_word_embeddings = tie_word_embeddings
        self.use_cache = use_cache
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.unk_token_id = unk_token_id
        self.cls_token_id = cls_token_id
        self.sep_token_id = sep_token_id
        self.mask_token_id = mask_token_id
        kwargs.setdefault("auto_map", dict(AUTO_MAP))
        self._validate()  # before transformers' own validators (5.x), whose errors name no field
        # transformers 4.x's PretrainedConfig.__init__ sets these from its own defaults: set them again
        own = {name: getattr(self, name) for name in ("tie_word_embeddings", "use_cache", "pad_token_id", "bos_token_id",
                                                       "eos_token_id", "sep_token_id")}
        super().__init__(**kwargs)
        for name, value in own.items():
            setattr(self, name, value)

    def _validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "position_bucket_size"):
            value = getattr(self, name)
            if not _is_int(value) or not 0 < value < 2**63:
                raise ValueError(f"LtgBertConfig.{name} must be a positive integer, got {value!r}; "
                                 "sizes are below 2**63 and must fit in memory.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"LtgBertConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}); choose a head count that divides it."
            )
        if self.position_bucket_size < 4:
            raise ValueError(
                f"LtgBertConfig.position_bucket_size must be at least 4 (exact and logarithmic buckets), "
                f"got {self.position_bucket_size}."
            )
        if self.max_position_embeddings <= self.position_bucket_size // 2 + 1:
            raise ValueError(
                f"LtgBertConfig.max_position_embeddings ({self.max_position_embeddings}) must exceed "
                f"position_bucket_size // 2 + 1 ({self.position_bucket_size // 2 + 1}), the end of the exact "
                f"buckets; the published models use 512."
            )
        if not isinstance(self.position_layout, str) or self.position_layout not in POSITION_LAYOUTS:
            raise ValueError(
                f"LtgBertConfig.position_layout {self.position_layout!r} is unknown; use one of {POSITION_LAYOUTS} "
                f"('babylm': halves first, as in BabyLM code; 'bnc': heads first, as in the BNC code and the "
                f"ltg/norbert3-* Hub file)."
            )
        if not isinstance(self.attention_output_norm, str) or self.attention_output_norm not in ATTENTION_OUTPUT_NORMS:
            raise ValueError(
                f"LtgBertConfig.attention_output_norm {self.attention_output_norm!r} is unknown; use one of "
                f"{ATTENTION_OUTPUT_NORMS} ('after_out_proj' for LTG-BERT, 'before_out_proj' for GPT-BERT)."
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            value = getattr(self, name)
            if (value is not None or name != "classifier_dropout") and not (_is_real(value) and 0.0 <= value < 1.0):
                raise ValueError(f"LtgBertConfig.{name} must be a number in [0, 1), got {value!r}.")
        if not (_is_real(self.layer_norm_eps) and 0 < self.layer_norm_eps < float("inf")):
            raise ValueError(f"LtgBertConfig.layer_norm_eps must be a positive finite number, got {self.layer_norm_eps!r}.")
        for name in ("tie_word_embeddings", "use_cache", "attention_gate", "layer_weighting", "masked_next_token"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"LtgBertConfig.{name} must be true or false, got {getattr(self, name)!r}.")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id", "cls_token_id",
                     "sep_token_id", "mask_token_id"):
            value = getattr(self, name)
            if value is not None and not _is_int(value):
                raise ValueError(f"LtgBertConfig.{name} must be an integer token id or None, got {value!r}.")
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(
                    f"LtgBertConfig.{name} = {value} is outside the vocabulary [0, {self.vocab_size}); "
                    f"set it to a valid id or None."
                )

        ids = self.masked_lm_suppressed_token_ids
        if not all(_is_int(i) and 0 <= i < self.vocab_size for i in ids):
            raise ValueError(
                f"LtgBertConfig.masked_lm_suppressed_token_ids must list token ids in [0, {self.vocab_size}), got "
                f"{ids!r}; list the ids fill-mask must never answer, or leave it empty."
            )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "LtgBertConfig":
        """A published BabyLM size: `base`, `small` or `xs`."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})

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
        mapping.setdefault(LtgBertConfig.model_type, list(targets))


register_peft_target_modules()
