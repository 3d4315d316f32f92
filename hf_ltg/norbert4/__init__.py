"""NorBERT4: LTG's GPT-BERT of 2025 (masked and causal modes, one set of weights), with every head."""

from .configuration_norbert4 import LORA_TARGET_MODULES, Norbert4Config, register_peft_target_modules
from .modeling_norbert4 import (
    Norbert4ForCausalLM,
    Norbert4ForMaskedLM,
    Norbert4ForMultipleChoice,
    Norbert4ForQuestionAnswering,
    Norbert4ForSequenceClassification,
    Norbert4ForTokenClassification,
    Norbert4Model,
    Norbert4PreTrainedModel,
)

AUTO_MODEL_CLASSES = {
    "AutoModel": Norbert4Model,
    "AutoModelForMaskedLM": Norbert4ForMaskedLM,
    "AutoModelForCausalLM": Norbert4ForCausalLM,
    "AutoModelForSequenceClassification": Norbert4ForSequenceClassification,
    "AutoModelForTokenClassification": Norbert4ForTokenClassification,
    "AutoModelForQuestionAnswering": Norbert4ForQuestionAnswering,
    "AutoModelForMultipleChoice": Norbert4ForMultipleChoice,
}

__all__ = [
    "AUTO_MODEL_CLASSES",
    "LORA_TARGET_MODULES",
    "Norbert4Config",
    "Norbert4ForCausalLM",
    "Norbert4ForMaskedLM",
    "Norbert4ForMultipleChoice",
    "Norbert4ForQuestionAnswering",
    "Norbert4ForSequenceClassification",
    "Norbert4ForTokenClassification",
    "Norbert4Model",
    "Norbert4PreTrainedModel",
    "register_peft_target_modules",
]
