"""Tokenizers: train a byte-level BPE (GPT) or WordPiece (LTG-BERT) tokenizer, or load GPT-2's.

Every function returns a `transformers.PreTrainedTokenizerFast` (on transformers 5 the class is
`TokenizersBackend`). `save_tokenizer` writes it as `tokenizer.json` + a `tokenizer_config.json`
naming `PreTrainedTokenizerFast`, a class of transformers 4.x and 5.x alike (5.x itself would write
`TokenizersBackend`, which 4.x lacks), so that `AutoTokenizer.from_pretrained` loads it on either
without any code of ours.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .progress import progress_enabled

ENDOFTEXT = "<|endoftext|>"
WORDPIECE_SPECIAL_TOKENS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
KINDS = ("bpe", "wordpiece")
# The tokenizer class written into tokenizer_config.json: transformers 4.x has it, 5.x maps it to
# TokenizersBackend. Both load tokenizer.json with it, without remote code.
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
# What the tokenizers return: neither family has token types, and transformers 4.x's default
# (with `token_type_ids`) would hand generate() an argument that GPT-2 takes but the models ignore.
MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]
# Loading arguments that transformers 5 records in the saved config; they describe one load, not the tokenizer.
_LOAD_ONLY_KEYS = ("is_local", "local_files_only")


def train_tokenizer(
    files: Iterable[str | os.PathLike] | None = None,
    iterator: Iterable[str] | None = None,
    vocab_size: int = 8000,
    special_tokens: list[str] | None = None,
    kind: str = "bpe",
    min_frequency: int = 2,
    model_max_length: int | None = None,
    lowercase: bool = False,
):
    """Train a tokenizer on text `files` or on an `iterator` of strings.

    kind="bpe": byte-level BPE as GPT-2 (no unknown tokens), special tokens `[<|endoftext|>]` by
    default; that token is bos, eos, unk and pad, as in GPT-2.
    kind="wordpiece": BERT-style WordPiece with `[UNK] [CLS] [SEP] [PAD] [MASK]` by default and a
    `[CLS] ... [SEP]` template, for LTG-BERT's masked-language-model pretraining.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if kind not in KINDS:
        raise ValueError(f"Unknown tokenizer kind {kind!r}; use one of {KINDS}.")
    texts = _training_texts(files, iterator)
    if kind == "bpe":
        special_tokens = list(special_tokens or [ENDOFTEXT])
        # The byte alphabet (256) and the special tokens are always in the vocabulary.
        minimum = 256 + len(special_tokens)
        if vocab_size < minimum:
            raise ValueError(
                f"vocab_size {vocab_size} is too small for byte-level BPE: it needs at least {minimum} "
                f"(256 bytes + {len(special_tokens)} special tokens)."
            )
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=progress_enabled(),
        )
    else:
        special_tokens = list(special_tokens or WORDPIECE_SPECIAL_TOKENS)
        missing = [t for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]") if t not in special_tokens]
        if missing:
            raise ValueError(f"A WordPiece tokenizer needs the special tokens {missing}; add them to special_tokens.")
        if vocab_size <= len(special_tokens):
            raise ValueError(f"vocab_size {vocab_size} must exceed the {len(special_tokens)} special tokens.")
        tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase, clean_text=True)
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special_tokens, show_progress=progress_enabled()
        )

    tokenizer.train_from_iterator(texts, trainer)
    if kind == "wordpiece":
        cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
    return _wrap(tokenizer, kind, special_tokens, model_max_length)


def _training_texts(files, iterator) -> Iterator[str]:
    if (files is None) == (iterator is None):
        raise ValueError("Pass exactly one of `files` (text files) or `iterator` (strings) to train a tokenizer.")
    if files is not None:
        paths = [Path(f) for f in ([files] if isinstance(files, (str, os.PathLike)) else files)]
        if not paths:
            raise ValueError("No training files given for the tokenizer.")
        for path in paths:
            if not path.is_file():
                raise FileNotFoundError(f"Tokenizer training file {path} does not exist.")
        if all(path.stat().st_size == 0 or not path.read_text(encoding="utf-8").strip() for path in paths):
            raise ValueError(f"The tokenizer training corpus {[str(p) for p in paths]} is empty; give files with text.")
        return (line for path in paths for line in path.read_text(encoding="utf-8").splitlines(keepends=True))
    texts = [text for text in iterator if text and text.strip()]
    if not texts:
        raise ValueError("The tokenizer training corpus is empty: the iterator gave no non-blank text.")
    return iter(texts)


def _wrap(tokenizer, kind: str, special_tokens: list[str], model_max_length: int | None):
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":
        eos = ENDOFTEXT if ENDOFTEXT in special_tokens else special_tokens[0]
        tokens = dict(bos_token=eos, eos_token=eos, unk_token=eos, pad_token=eos)
    else:
        # bos/eos are [CLS]/[SEP], the ids LtgBertConfig's bos/eos_token_id default to; generate needs them.
        tokens = dict(unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]",
                      bos_token="[CLS]", eos_token="[SEP]")
    extra = [t for t in special_tokens if t not in tokens.values()]
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **tokens)
    if extra:
        wrapped.add_special_tokens({"additional_special_tokens": extra})
    if model_max_length is not None:
        wrapped.model_max_length = model_max_length
    return wrapped


def load_gpt2_tokenizer(path: str | os.PathLike, model_max_length: int | None = None):
    """GPT-2's tokenizer from a `tokenizer.json` file, or a folder with it or `vocab.json` + `merges.txt`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    path = Path(path)
    if path.is_file() and path.suffix == ".json" and path.name != "vocab.json":
        tokenizer_json, vocab, merges = path, None, None
    elif path.is_dir():
        tokenizer_json, vocab, merges = path / "tokenizer.json", path / "vocab.json", path / "merges.txt"
    elif path.name == "vocab.json":
        tokenizer_json, vocab, merges = path.with_name("tokenizer.json"), path, path.with_name("merges.txt")
    else:
        raise FileNotFoundError(
            f"No GPT-2 tokenizer at {path}: give a tokenizer.json file or a folder with tokenizer.json "
            f"or vocab.json + merges.txt."
        )
    if tokenizer_json.is_file():
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_json))
        except Exception as error:
            raise ValueError(f"{tokenizer_json} is not a readable tokenizers file: {error}") from error
    elif vocab is not None and vocab.is_file() and merges.is_file():
        try:
            tokenizer = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
        except Exception as error:
            raise ValueError(f"Could not read the BPE files {vocab} and {merges}: {error}") from error
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        raise FileNotFoundError(
            f"No GPT-2 tokenizer files in {path}: expected tokenizer.json, or vocab.json and merges.txt."
        )
    if tokenizer.token_to_id(ENDOFTEXT) is None:
        raise ValueError(f"The tokenizer at {path} has no {ENDOFTEXT} token; it is not a GPT-2 tokenizer.")
    return _wrap(tokenizer, "bpe", [ENDOFTEXT], model_max_length)


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a checkpoint folder (tokenizer_config.json) or GPT-2 tokenizer files."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No tokenizer at {path}: the path does not exist.")
    if path.is_dir() and (path / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    return load_gpt2_tokenizer(path)


def save_tokenizer(tokenizer, folder: str | os.PathLike, config=None) -> None:
    """`tokenizer.save_pretrained(folder)`, loadable by `AutoTokenizer` on transformers 4.57 and 5.x.

    With a model `config`, a tokenizer without bos/eos tokens gets the config's (e.g. [CLS]/[SEP]
    for LTG-BERT), so that generate and pipelines see the same ids as the model. The saved config
    names `MODEL_INPUT_NAMES`, so that no release's tokenizer returns `token_type_ids`.
    """
    tokenizer.model_input_names = list(MODEL_INPUT_NAMES)
    if config is not None:
        for kind in ("bos", "eos"):
            token_id = getattr(config, f"{kind}_token_id", None)
            if getattr(tokenizer, f"{kind}_token", None) is None and isinstance(token_id, int) and 0 <= token_id < len(tokenizer):
                setattr(tokenizer, f"{kind}_token", tokenizer.convert_ids_to_tokens(token_id))
    tokenizer.save_pretrained(folder)
    make_tokenizer_config_portable(folder)
    name_model_inputs(folder)


def name_model_inputs(folder: str | os.PathLike) -> None:
    """Make `folder/tokenizer_config.json` name `MODEL_INPUT_NAMES` (no `token_type_ids`, which 4.x
    tokenizers otherwise return and our models do not use)."""
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("model_input_names") != MODEL_INPUT_NAMES:
        config["model_input_names"] = list(MODEL_INPUT_NAMES)
        path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def make_tokenizer_config_portable(folder: str | os.PathLike) -> bool:
    """Rewrite `folder/tokenizer_config.json` to name `PORTABLE_TOKENIZER_CLASS` and no tokenizer code.

    Only for a folder with `tokenizer.json` (which that class loads) whose config names no class, a
    class transformers 4.x lacks (`TokenizersBackend`) or remote tokenizer code (`auto_map`). Other
    configs (e.g. `GPT2Tokenizer` over vocab.json + merges.txt) are left as they are. Returns
    whether the file changed.
    """
    folder = Path(folder)
    path = folder / "tokenizer_config.json"
    if not (path.is_file() and (folder / "tokenizer.json").is_file()):
        return False
    config = json.loads(path.read_text(encoding="utf-8"))
    before = dict(config)
    if config.get("tokenizer_class") in (None, "TokenizersBackend") or "auto_map" in config:
        config["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
    config.pop("auto_map", None)
    for key in _LOAD_ONLY_KEYS:
        config.pop(key, None)
    if config == before:
        return False
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return True


def check_tokenizer_fits(tokenizer, config) -> None:
    """Raise if the tokenizer can produce ids the model has no embedding for."""
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}: "
            f"ids >= {config.vocab_size} would have no embedding. Use the model's own tokenizer, or resize the "
            f"model with model.resize_token_embeddings({len(tokenizer)})."
        )
