"""LTG-BERT: the Language Technology Group's masked language model, with every head."""

from .configuration_ltg_bert import LtgBertConfig
from .modeling_ltg_bert import (
    LtgBertForCausalLM,
    LtgBertForMaskedLM,
    LtgBertForMultipleChoice,
    LtgBertForQuestionAnswering,
    LtgBertForSequenceClassification,
    LtgBertForTokenClassification,
    LtgBertModel,
    LtgBertPreTrainedModel,
)

AUTO_MODEL_CLASSES = {
    "AutoModel": LtgBertModel,
    "AutoModelForMaskedLM": LtgBertForMaskedLM,
    "AutoModelForCausalLM": LtgBertForCausalLM,
    "AutoModelForSequenceClassification": LtgBertForSequenceClassification,
    "AutoModelForTokenClassification": LtgBertForTokenClassification,
    "AutoModelForQuestionAnswering": LtgBertForQuestionAnswering,
    "AutoModelForMultipleChoice": LtgBertForMultipleChoice,
}

# The fused query/key projection and the value projection of every attention layer.
LORA_TARGET_MODULES = ["in_proj_qk", "in_proj_v"]

__all__ = [
    "AUTO_MODEL_CLASSES",
    "LORA_TARGET_MODULES",
    "LtgBertConfig",
    "LtgBertForCausalLM",
    "LtgBertForMaskedLM",
    "LtgBertForMultipleChoice",
    "LtgBertForQuestionAnswering",
    "LtgBertForSequenceClassification",
    "LtgBertForTokenClassification",
    "LtgBertModel",
    "LtgBertPreTrainedModel",
]
