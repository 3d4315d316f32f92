"""What every converter shares: strict shape-checked loading, tokenizer carry-over, config reading."""

import json
import shutil
from pathlib import Path

import torch

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "added_tokens.json",
    "chat_template.jinja",  # finetune-instruct's Alpaca template (transformers saves it apart)
)


def load_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source_names: dict[str, str] | None = None):
    """Load `tensors` into `model` strictly, with errors that name the tensor and both shapes.

    `source_names` maps our parameter names back to the names in the user's file, so that a
    message speaks of the tensor the user knows. Tied parameters may be absent from `tensors`.
    """
    source_names = source_names or {}
    expected = model.state_dict()
    tied = set(getattr(model, "_tied_weights_keys", None) or {}) if model.config.tie_word_embeddings else set()
    for name, tensor in tensors.items():
        if name not in expected:
            raise ValueError(
                f"Tensor {source_names.get(name, name)!r} has no place in {type(model).__name__} "
                f"(mapped to {name!r}); is the file of the format you named?"
            )
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"Tensor {source_names.get(name, name)!r} has shape {tuple(tensor.shape)} but the config expects "
                f"{tuple(expected[name].shape)} for {name!r}; the config does not match the weights."
            )
    missing = sorted(set(expected) - set(tensors) - tied)
    if missing:
        raise ValueError(
            f"The weights lack {len(missing)} tensor(s) the config needs, e.g. {missing[:5]}; "
            "the config does not match the weights (number of layers? tied embeddings?)."
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()}, strict=False)
    if tied:
        model.tie_weights()
    return model


def read_json_config(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def copy_tokenizer_files(src_folder: Path, out_folder: Path) -> list[str]:
    """Copy whichever tokenizer files sit in `src_folder` into `out_folder`, with a tokenizer_config.json
    that transformers 4.x and 5.x load without remote code (see `make_tokenizer_config_portable`)."""
    from ..tokenization import make_tokenizer_config_portable, name_model_inputs

    copied = []
    for name in TOKENIZER_FILES:
        if (src_folder / name).is_file():
            shutil.copy2(src_folder / name, out_folder / name)
            copied.append(name)
    make_tokenizer_config_portable(out_folder)
    name_model_inputs(out_folder)
    return copied


def require_keys(config: dict, keys: tuple[str, ...], where) -> None:
    missing = [k for k in keys if k not in config]
    if missing:
        raise ValueError(f"{where} lacks the key(s) {missing}; expected {list(keys)}.")


# The keys of a foreign LTG config that mean what `LtgBertConfig`'s keys of the same name mean; a
# converted config is built from these alone (plus what the converter decides), never copied whole,
# so that a release's `auto_map`, `architectures` and training-only fields do not survive.
LTG_BERT_READ_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                      "max_position_embeddings", "position_bucket_size", "layer_norm_eps", "hidden_dropout_prob",
                      "attention_probs_dropout_prob", "classifier_dropout")
# Keys that say nothing about the weights (transformers' bookkeeping): dropped without a word.
BOOKKEEPING_KEYS = ("architectures", "auto_map", "model_type", "torch_dtype", "dtype", "transformers_version",
                    "_name_or_path", "return_dict", "output_hidden_states", "output_attentions", "use_return_dict")


def ltg_bert_config(original: dict, **fields):
    """An `LtgBertConfig` written from scratch: the keys of `original` that it reads (`LTG_BERT_READ_KEYS`)
    and `fields` (layout flags, token ids). Returns the config and the keys of `original` it dropped,
    apart from transformers' bookkeeping, so that the caller can report them."""
    from ..ltg_bert import LtgBertConfig

    read = {key: original[key] for key in LTG_BERT_READ_KEYS if key in original}
    dropped = sorted(key for key in original
                     if key not in LTG_BERT_READ_KEYS and key not in BOOKKEEPING_KEYS and key not in fields)
    config = LtgBertConfig(**{**read, **fields})
    config.architectures = ["LtgBertForMaskedLM"]
    return config, dropped
