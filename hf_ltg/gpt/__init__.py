"""The GPT family: a GPT-2 style decoder with causal-LM, sequence- and token-classification heads."""

from .configuration_ltg_gpt import PRESETS, LtgGptConfig
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

# peft's default LoRA targets when `target_modules` is not given (GPT-2's own default in peft
# is the fused attention projection).
LORA_TARGET_MODULES = ["qkv_proj"]

__all__ = [
    "AUTO_MODEL_CLASSES",
    "LORA_TARGET_MODULES",
    "PRESETS",
    "LtgGptConfig",
    "LtgGptForCausalLM",
    "LtgGptForSequenceClassification",
    "LtgGptForTokenClassification",
    "LtgGptModel",
    "LtgGptPreTrainedModel",
]
