"""Original LTG-BERT checkpoints (ltgoslo/ltg-bert: `training/model.py`, `babylm/train/model.py`).

The config is the original JSON (vocab_size, hidden_size, num_hidden_layers,
num_attention_heads, intermediate_size, max_position_embeddings, position_bucket_size,
layer_norm_eps, hidden_dropout_prob, attention_probs_dropout_prob); its keys are ours too.
`layout` says which code trained the weights: "babylm" (ltgoslo/ltg-bert babylm/train) or "bnc"
(the original BNC model) -- see `POSITION_LAYOUTS` in the configuration file. LTG's Hugging Face
release folders (NorBERT3, whose Hub file is "bnc") go through `releases.py`, which reads the layout
from the folder's modeling file.

The persistent `position_indices` buffers are optional; when present they must be the bucket
table our config computes, which catches a wrong `max_position_embeddings` or
`position_bucket_size`. The result is an `LtgBertForMaskedLM` folder whose `auto_map` serves
every head. A `tokenizer.json` beside SRC (or inside a SRC folder) is carried over, wrapped so
that `AutoTokenizer` loads it, and its special-token ids go into the config.
"""

import re
from pathlib import Path

import torch

from ..checkpoint import atomic_directory, load_state_dict
from ..ltg_bert import LtgBertConfig, LtgBertForMaskedLM
from ..ltg_bert.configuration_ltg_bert import POSITION_LAYOUTS
from ..ltg_bert.modeling_ltg_bert import relative_position_buckets
from .common import copy_tokenizer_files, load_into, ltg_bert_config, read_json_config, require_keys

CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
SPECIAL_TOKENS = {"unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "mask": "[MASK]"}

TOP_MAP = [
    ("embedding.word_embedding.weight", "ltg_bert.embedding.word_embedding.weight"),
    ("embedding.relative_embedding", "ltg_bert.embedding.relative_embedding"),
    ("embedding.relative_layer_norm.weight", "ltg_bert.embedding.relative_layer_norm.weight"),
    ("embedding.relative_layer_norm.bias", "ltg_bert.embedding.relative_layer_norm.bias"),
    ("classifier.nonlinearity.1.weight", "lm_head.dense.weight"),
    ("classifier.nonlinearity.1.bias", "lm_head.dense.bias"),
    ("classifier.nonlinearity.5.bias", "lm_head.decoder.bias"),
]
LAYER_MAP = [
    (f"attention.{name}.{kind}", f"attention.{name}.{kind}")
    for name in ("in_proj_qk", "in_proj_v", "out_proj", "post_layer_norm")
    for kind in ("weight", "bias")
] + [("mlp.mlp.1.weight", "mlp.up_proj.weight"), ("mlp.mlp.4.weight", "mlp.down_proj.weight")]
POSITION_BUFFER = re.compile(r"^transformer\.layers\.(\d+)\.attention\.position_indices$")
TIED_DECODER = "classifier.nonlinearity.5.weight"


def convert_ltg_bert(src, out, config_path, layout: str = "babylm") -> Path:
    """Convert an original LTG-BERT state dict (file or folder) into an hf_ltg checkpoint folder."""
    src = Path(src)
    if layout not in POSITION_LAYOUTS:
        raise ValueError(f"Unknown LTG-BERT layout {layout!r}; use one of {POSITION_LAYOUTS}.")
    original = read_json_config(config_path)
    require_keys(original, CONFIG_KEYS, f"Config {config_path}")
    tokenizer_folder = src if src.is_dir() else src.parent
    tokenizer = _read_tokenizer(tokenizer_folder)
    token_ids = {}
    if tokenizer is not None:
        token_ids = {f"{role}_token_id": tokenizer.convert_tokens_to_ids(token)
                     for role, token in SPECIAL_TOKENS.items() if token in tokenizer.get_vocab()}
        token_ids.update(bos_token_id=token_ids.get("cls_token_id"), eos_token_id=token_ids.get("sep_token_id"))
    config, _ = ltg_bert_config(original, **token_ids, position_layout=layout)
    model = ltg_bert_model(load_state_dict(src), config, src)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            from ..tokenization import save_tokenizer

            save_tokenizer(tokenizer, tmp, model.config)
        else:
            copy_tokenizer_files(tokenizer_folder, tmp)
    return Path(out)


def ltg_bert_model(tensors: dict, config: LtgBertConfig, src) -> LtgBertForMaskedLM:
    """`LtgBertForMaskedLM` holding an original LTG-BERT state dict (training code or a Hugging Face
    release: the same names), every tensor checked against `config`; `src` names the file in errors."""
    tensors = {name.removeprefix("module."): tensor for name, tensor in tensors.items()}
    if "embedding.word_embedding.weight" not in tensors:
        raise ValueError(
            f"{src} is not an original LTG-BERT state dict: it has no 'embedding.word_embedding.weight' "
            f"(found e.g. {sorted(tensors)[:5]})."
        )
    check_position_buffers(tensors, config, src)
    _check_tied_decoder(tensors, src)

    mapped, source, consumed = {}, {}, set()

    def put(src_name, dst_name):
        if src_name not in tensors:
            raise ValueError(
                f"{src} lacks the tensor {src_name!r} that the config ({config.num_hidden_layers} layers) needs."
            )
        mapped[dst_name], source[dst_name] = tensors[src_name], src_name
        consumed.add(src_name)

    for src_name, dst_name in TOP_MAP:
        put(src_name, dst_name)
    for i in range(config.num_hidden_layers):
        for src_name, dst_name in LAYER_MAP:
            put(f"transformer.layers.{i}.{src_name}", f"ltg_bert.layers.{i}.{dst_name}")
    leftover = sorted(
        name for name in set(tensors) - consumed
        if not POSITION_BUFFER.match(name) and name != TIED_DECODER
        and not name.startswith("next_sentence_classifier.")  # BNC's optional NSP head has no HF counterpart
    )
    if leftover:
        raise ValueError(
            f"{src} holds tensors the config does not account for, e.g. {leftover[:5]}; "
            f"the config says num_hidden_layers={config.num_hidden_layers}."
        )
    return load_into(LtgBertForMaskedLM(config), mapped, source).eval()


def check_position_buffers(tensors, config: LtgBertConfig, src, pattern=POSITION_BUFFER, named=str) -> None:
    """The stored bucket tables (names matching `pattern`) must be the ones the config computes (a wrong
    max_position_embeddings or position_bucket_size would otherwise convert silently); `named` gives the
    name to show for a tensor. Shared by the LTG-BERT and GPT-BERT converters."""
    expected = {}
    for name, table in tensors.items():
        if not pattern.match(name):
            continue
        size = table.shape[0]
        if table.dim() != 2 or table.shape[1] != size:
            raise ValueError(f"Tensor {named(name)!r} in {src} has shape {tuple(table.shape)}; expected a square "
                             f"bucket table.")
        if size not in expected:
            positions = torch.arange(size)
            expected[size] = relative_position_buckets(
                positions, positions, config.position_bucket_size, config.max_position_embeddings
            )
        if not torch.equal(table.long(), expected[size]):
            raise ValueError(
                f"Tensor {named(name)!r} in {src} is not the relative-position table of max_position_embeddings="
                f"{config.max_position_embeddings}, position_bucket_size={config.position_bucket_size}; "
                f"set those two config keys to the values the model was trained with."
            )


def _check_tied_decoder(tensors, src) -> None:
    decoder = tensors.get(TIED_DECODER)
    if decoder is not None and not torch.equal(decoder, tensors["embedding.word_embedding.weight"]):
        raise ValueError(
            f"Tensor {TIED_DECODER!r} in {src} differs from 'embedding.word_embedding.weight', but LTG-BERT ties "
            f"them; this is not an original LTG-BERT checkpoint."
        )


def _read_tokenizer(folder: Path):
    """The tokenizer beside the weights, wrapped for AutoTokenizer, or None when there is none."""
    if not (folder / "tokenizer.json").is_file():
        return None
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if (folder / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(folder)
    try:
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    except Exception as error:
        raise ValueError(f"{folder / 'tokenizer.json'} is not a readable tokenizers file: {error}") from error
    vocab = tokenizer.get_vocab()
    tokenizer.add_special_tokens(
        {f"{role}_token": token for role, token in SPECIAL_TOKENS.items() if token in vocab}
    )
    return tokenizer
