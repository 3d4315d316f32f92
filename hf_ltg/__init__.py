"""hf_ltg: research transformers as first-class Hugging Face models.

Importing the package registers every model family with the transformers Auto classes and
its default LoRA target modules with peft, so in-process code can use
``AutoModelForCausalLM.from_config(LtgGptConfig(...))`` and ``LoraConfig(task_type=...)``
without further setup. Checkpoints never need this package: they carry their own code.

The `hf-ltg` command defers that work (torch, transformers and peft take seconds to import) until
a command runs, so that `--help` answers at once: its console script, `hf_ltg_cli`, asks for it
before this package is imported, and `hf_ltg.cli` calls `load()` once the arguments are parsed.
"""

import sys

_EXPORTS = {
    "gpt": ["LtgGptConfig", "LtgGptForCausalLM", "LtgGptForSequenceClassification",
            "LtgGptForTokenClassification", "LtgGptModel", "LtgGptPreTrainedModel"],
    "ltg_bert": ["LtgBertConfig", "LtgBertForCausalLM", "LtgBertForMaskedLM", "LtgBertForMultipleChoice",
                 "LtgBertForQuestionAnswering", "LtgBertForSequenceClassification",
                 "LtgBertForTokenClassification", "LtgBertModel", "LtgBertPreTrainedModel"],
    "norbert4": ["Norbert4Config", "Norbert4ForCausalLM", "Norbert4ForMaskedLM", "Norbert4ForMultipleChoice",
                 "Norbert4ForQuestionAnswering", "Norbert4ForSequenceClassification",
                 "Norbert4ForTokenClassification", "Norbert4Model", "Norbert4PreTrainedModel"],
    "registration": ["register_all"],
}


def load() -> None:
    """Import the model families and register them with transformers and peft (idempotent)."""
    import importlib

    for module, names in _EXPORTS.items():
        family = importlib.import_module(f".{module}", __name__)
        globals().update({name: getattr(family, name) for name in names})
    globals()["register_all"]()


def __getattr__(name):
    # Reached only while `hf-ltg` defers the imports (or for names that do not exist).
    if any(name in names for names in _EXPORTS.values()):
        load()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if not getattr(sys.modules.get("hf_ltg_cli"), "DEFER_IMPORTS", False):
    load()

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
    "Norbert4Config",
    "Norbert4ForCausalLM",
    "Norbert4ForMaskedLM",
    "Norbert4ForMultipleChoice",
    "Norbert4ForQuestionAnswering",
    "Norbert4ForSequenceClassification",
    "Norbert4ForTokenClassification",
    "Norbert4Model",
    "Norbert4PreTrainedModel",
    "register_all",
]
