"""hf_ltg: research transformers as first-class Hugging Face models.

Importing the package registers every model family with the transformers Auto classes and
its default LoRA target modules with peft, so in-process code can use
``AutoModelForCausalLM.from_config(LtgGptConfig(...))`` and ``LoraConfig(task_type=...)``
without further setup. Checkpoints never need this package: they carry their own code.
"""

from .gpt import (
    LtgGptConfig,
    LtgGptForCausalLM,
    LtgGptForSequenceClassification,
    LtgGptForTokenClassification,
    LtgGptModel,
    LtgGptPreTrainedModel,
)
from .ltg_bert import (
    LtgBertConfig,
    LtgBertForCausalLM,
    LtgBertForMaskedLM,
    LtgBertForMultipleChoice,
    LtgBertForQuestionAnswering,
    LtgBertForSequenceClassification,
    LtgBertForTokenClassification,
    LtgBertModel,
    LtgBertPreTrainedModel,
)
from .registration import register_all

register_all()

__version__ = "0.1.0"

__all__ = [
    "LtgGptConfig",
    "LtgGptForCausalLM",
    "LtgGptForSequenceClassification",
    "LtgGptForTokenClassification",
    "LtgGptModel",
    "LtgGptPreTrainedModel",
    "LtgBertConfig",
    "LtgBertForCausalLM",
    "LtgBertForMaskedLM",
    "LtgBertForMultipleChoice",
    "LtgBertForQuestionAnswering",
    "LtgBertForSequenceClassification",
    "LtgBertForTokenClassification",
    "LtgBertModel",
    "LtgBertPreTrainedModel",
    "register_all",
]
