"""Registration of hf_ltg's model families with transformers' Auto classes and with peft."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

AUTO_CLASSES = {
    "AutoModel": AutoModel,
    "AutoModelForCausalLM": AutoModelForCausalLM,
    "AutoModelForMaskedLM": AutoModelForMaskedLM,
    "AutoModelForSequenceClassification": AutoModelForSequenceClassification,
    "AutoModelForTokenClassification": AutoModelForTokenClassification,
    "AutoModelForQuestionAnswering": AutoModelForQuestionAnswering,
    "AutoModelForMultipleChoice": AutoModelForMultipleChoice,
}


def _families():
    """(config class, {auto class name: model class}, default LoRA targets) per family."""
    from . import gpt

    families = [(gpt.LtgGptConfig, gpt.AUTO_MODEL_CLASSES, gpt.LORA_TARGET_MODULES)]
    try:
        from . import ltg_bert
    except ImportError:  # the family is optional until it lands
        return families
    families.append((ltg_bert.LtgBertConfig, ltg_bert.AUTO_MODEL_CLASSES, ltg_bert.LORA_TARGET_MODULES))
    return families


def register_all() -> None:
    """Register every family with the Auto classes and peft; safe to call more than once."""
    for config_class, model_classes, lora_targets in _families():
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        for auto_name, model_class in model_classes.items():
            AUTO_CLASSES[auto_name].register(config_class, model_class, exist_ok=True)
        _register_peft_targets(config_class.model_type, lora_targets)


def _register_peft_targets(model_type: str, targets: list[str]) -> None:
    try:
        from peft.utils import constants
    except ImportError:  # peft is a dependency, but registration must never break `import hf_ltg`
        return
    constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.setdefault(model_type, list(targets))
