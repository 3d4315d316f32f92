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
    """(config class, {auto class name: model class}, peft registration function) per family."""
    from . import gpt

    families = [(gpt.LtgGptConfig, gpt.AUTO_MODEL_CLASSES, gpt.register_peft_target_modules)]
    try:
        from . import ltg_bert
    except ImportError:  # the family is optional until it lands
        return families
    families.append((ltg_bert.LtgBertConfig, ltg_bert.AUTO_MODEL_CLASSES, ltg_bert.register_peft_target_modules))
    from . import norbert4

    families.append((norbert4.Norbert4Config, norbert4.AUTO_MODEL_CLASSES, norbert4.register_peft_target_modules))
    return families


def register_all() -> None:
    """Register every family with the Auto classes and its default target modules with peft (every
    peft method that has defaults); safe to call more than once."""
    try:
        # The configuration files register their defaults themselves once peft is imported; importing
        # it here makes them visible at once, e.g. to code that reads peft's mappings directly.
        from peft.utils import constants as peft_constants
    except ImportError:  # peft is a dependency, but registration must never break `import hf_ltg`
        peft_constants = None
    for config_class, model_classes, register_peft_target_modules in _families():
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        for auto_name, model_class in model_classes.items():
            AUTO_CLASSES[auto_name].register(config_class, model_class, exist_ok=True)
        if peft_constants is not None:
            register_peft_target_modules(peft_constants)
