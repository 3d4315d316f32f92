"""LTG-BERT: the Language Technology Group's masked language model, with every head."""

from .configuration_ltg_bert import LORA_TARGET_MODULES, LtgBertConfig, register_peft_target_modules
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
    "register_peft_target_modules",
]
