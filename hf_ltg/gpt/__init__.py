"""The GPT family: a GPT-2 style decoder with causal-LM, sequence- and token-classification heads."""

from .configuration_ltg_gpt import LORA_TARGET_MODULES, PRESETS, LtgGptConfig, register_peft_target_modules
from .modeling_ltg_gpt import (
    LtgGptForCausalLM,
    LtgGptForSequenceClassification,
    LtgGptForTokenClassification,
    LtgGptModel,
    LtgGptPreTrainedModel,
)

AUTO_MODEL_CLASSES = {
    "AutoModel": LtgGptModel,
    "AutoModelForCausalLM": LtgGptForCausalLM,
    "AutoModelForSequenceClassification": LtgGptForSequenceClassification,
    "AutoModelForTokenClassification": LtgGptForTokenClassification,
}

__all__ = [
    "AUTO_MODEL_CLASSES",
    "LORA_TARGET_MODULES",
    "PRESETS",
    "register_peft_target_modules",
    "LtgGptConfig",
    "LtgGptForCausalLM",
    "LtgGptForSequenceClassification",
    "LtgGptForTokenClassification",
    "LtgGptModel",
    "LtgGptPreTrainedModel",
]
