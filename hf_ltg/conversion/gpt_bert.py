"""GPT-BERT checkpoints (ltgoslo/gpt-bert, `pretraining/model.py` and `model_extra.py`) -> `ltg_bert` folders.

GPT-BERT is LTG-BERT trained on masked and causal next-token prediction at once. Read against
`hf_ltg/ltg_bert`, its math is LTG-BERT's (embedding, one shared table of logarithmic relative-
position buckets projected by each layer's `in_proj_qk` and split in halves as in the BabyLM code,
scale 1/sqrt(3 * head_size), the masked softmax, the bias-free GEGLU feed-forward with its inner
LayerNorm, the classifier, the initialisation) except for:

- the attention output is normalised before `out_proj` by a LayerNorm without parameters
  (LTG-BERT: after `out_proj`, with weight and bias): `attention_output_norm="before_out_proj"`;
- `model_extra.py`, the model of the paper and the one `train_multi_gpu.py` trains, adds a GELU gate
  on the merged heads (`in_proj_vg`: `attention_gate`) and DenseFormer's depth-weighted average of
  every earlier residual state (`dwa_modules`: `layer_weighting`);
- training shifts the targets: hidden state i predicts token i + 1 in both modes ("masked next-token
  prediction"): `masked_next_token` makes the masked-LM head apply that shift inside.

Each difference is a few lines in one place of the same forward, and everything a family owns
(tokenizer handling, KV cache, padding, heads, adapters, export, doctor) is shared, so GPT-BERT is
`ltg_bert` with these four config fields rather than a second family; a reader of
`modeling_ltg_bert.py` finds each one where it applies.

Besides the pretraining code's own state dicts, the converter reads the key layout of the
Hugging Face wrapper published with the BabyLM 2025 GPT-BERT baselines (`GPTBERTForMaskedLM` /
`GPTBERTForCausalLM`: `model.embedding`, `model.attention_layers`, `model.mlp_layers`,
`model.dwa_modules`, `lm_head.nonlinearity`; the same modules one level up), read from that
modeling file; its config may name the depth `num_layers`.

The converted folder holds `LtgBertForMaskedLM` weights with the full `auto_map`: the user picks the
mode at load time, `AutoModelForMaskedLM` (bidirectional, shifted prediction at `[MASK]`) or
`AutoModelForCausalLM` (causal mask, generation with a KV cache), on the same weights.
"""

import re
from pathlib import Path

import torch

from ..checkpoint import atomic_directory, load_state_dict
from ..ltg_bert import LtgBertConfig, LtgBertForMaskedLM
from .common import ltg_bert_config, read_json_config, require_keys
from .ltg_bert import check_position_buffers

CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
               "max_position_embeddings", "position_bucket_size", "layer_norm_eps")
# GPT-BERT's tokenizers (tokenizer_creation/create_tokenizer.py) use <s>-style names; its BLiMP code
# also knows [CLS]-style ones. The first of each role found in the vocabulary is used.
SPECIAL_TOKENS = {
    "unk": ("<unk>", "[UNK]"),
    "cls": ("<s>", "[CLS]"),
    "sep": ("</s>", "[SEP]"),
    "pad": ("<pad>", "[PAD]"),
    "mask": ("<mask>", "[MASK]"),
}
POSITION_BUFFER = re.compile(r"^transformer\.attention_layers\.(\d+)\.position_indices$")
TIED_DECODER = "classifier.nonlinearity.5.weight"
WORD_EMBEDDING = "embedding.word_embedding.weight"


def convert_gpt_bert(src, out, config_path, tokenizer=None) -> Path:
    """Convert a GPT-BERT state dict (file or folder; safetensors or a weights-only pickle) and its
    config JSON into an `ltg_bert` checkpoint folder written atomically. `tokenizer`: a
    `tokenizer.json` (or a folder holding one); by default the one beside SRC, if any."""
    src = Path(src)
    original = read_json_config(config_path)
    tokenizer_path = _tokenizer_path(src, tokenizer)
    hf_tokenizer = _read_tokenizer(tokenizer_path) if tokenizer_path else None
    token_ids = _special_token_ids(hf_tokenizer) if hf_tokenizer is not None else {}
    model, extra, _ = gpt_bert_model(load_state_dict(src), original, token_ids, src, f"GPT-BERT config {config_path}")

    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        if hf_tokenizer is not None:
            from ..tokenization import save_tokenizer

            save_tokenizer(hf_tokenizer, tmp, model.config)
        (tmp / "README.md").write_text(model_card(model.config, Path(out).name, extra, hf_tokenizer is not None))
    return Path(out)


def gpt_bert_model(tensors: dict, original: dict, token_ids: dict, src, config_name="GPT-BERT config",
                   **fields) -> tuple[LtgBertForMaskedLM, bool, list[str]]:
    """`LtgBertForMaskedLM` holding a GPT-BERT state dict (pretraining code, its Hugging Face wrapper or
    the BabyLM release: `transformer.attention_layers`, ...), its config read from `original` (the keys
    `LtgBertConfig` shares) plus `token_ids` and `fields`. Returns the model, whether it is the
    `model_extra.py` variant (gate and layer weighting), and the keys of `original` left unread."""
    original = dict(original)
    if "num_hidden_layers" not in original and "num_layers" in original:  # the Hugging Face wrapper's name
        original["num_hidden_layers"] = original.pop("num_layers")
    require_keys(original, CONFIG_KEYS, config_name)
    tensors, wrapper = _pretraining_names(tensors)

    def named(name):  # a tensor as the user's file names it
        return _wrapper_name(name) if wrapper else name
    if WORD_EMBEDDING not in tensors or not any(k.startswith("transformer.attention_layers.") for k in tensors):
        raise ValueError(
            f"{src} is not a GPT-BERT state dict: it lacks {WORD_EMBEDDING!r} or 'transformer.attention_layers.*' "
            f"(or the Hugging Face wrapper's 'model.embedding...', 'model.attention_layers.*'); found e.g. "
            f"{sorted(tensors)[:3]}."
        )
    extra = any(".in_proj_vg." in k or k.startswith("transformer.dwa_modules.") for k in tensors)
    config, dropped = ltg_bert_config(original, **{
        **token_ids,
        "position_layout": "babylm",  # halves first, then heads; dropout after the classifier's second norm
        "attention_output_norm": "before_out_proj",
        "attention_gate": extra,
        "layer_weighting": extra,
        "masked_next_token": True,
        **fields,
    })

    mapping = _key_mapping(config, extra)
    _check_keys(tensors, mapping, config, src, named)
    check_position_buffers(tensors, config, src, POSITION_BUFFER, named)
    if TIED_DECODER in tensors and not torch.equal(tensors[TIED_DECODER], tensors[WORD_EMBEDDING]):
        raise ValueError(f"Tensor {named(TIED_DECODER)!r} in {src} differs from {named(WORD_EMBEDDING)!r}, but "
                         f"GPT-BERT ties them; this is not a GPT-BERT state dict.")

    model = LtgBertForMaskedLM(config)
    expected = model.state_dict()
    unmapped = set(expected) - set(mapping) - set(model._tied_weights_keys)
    assert not unmapped, f"no GPT-BERT tensor maps to {sorted(unmapped)}"  # would stay random: a converter bug
    for ours, theirs in mapping.items():
        if tuple(tensors[theirs].shape) != tuple(expected[ours].shape):
            raise ValueError(
                f"Tensor {named(theirs)!r} in {src} has shape {tuple(tensors[theirs].shape)} but the config expects "
                f"{tuple(expected[ours].shape)}; the config does not describe these weights."
            )
    model.load_state_dict({ours: tensors[theirs].to(expected[ours].dtype) for ours, theirs in mapping.items()},
                          strict=False)
    model.tie_weights()
    return model.eval(), extra, dropped


# The Hugging Face wrapper's prefixes -> the pretraining code's (Bert.embedding / .transformer / .classifier).
WRAPPER_PREFIXES = {
    "model.embedding.": "embedding.",
    "model.attention_layers.": "transformer.attention_layers.",
    "model.mlp_layers.": "transformer.mlp_layers.",
    "model.dwa_modules.": "transformer.dwa_modules.",
    "lm_head.nonlinearity.": "classifier.nonlinearity.",
}


def _pretraining_names(tensors: dict) -> tuple[dict, bool]:
    """The state dict under the pretraining code's names (DDP's `module.` dropped, the Hugging Face
    wrapper's layout renamed), and whether the file was in the wrapper's layout."""
    tensors = {name.removeprefix("module."): tensor for name, tensor in tensors.items()}
    if "model.embedding.word_embedding.weight" not in tensors:
        return tensors, False
    renamed = {}
    for name, tensor in tensors.items():
        prefix = next((p for p in WRAPPER_PREFIXES if name.startswith(p)), None)
        renamed[WRAPPER_PREFIXES[prefix] + name[len(prefix):] if prefix else name] = tensor
    return renamed, True


def _wrapper_name(name: str) -> str:
    for wrapper, pretraining in WRAPPER_PREFIXES.items():
        if name.startswith(pretraining):
            return wrapper + name[len(pretraining):]
    return name


def _key_mapping(config: LtgBertConfig, extra: bool) -> dict[str, str]:
    """Our parameter name -> GPT-BERT's, for every tensor the converted model needs."""
    mapping = {
        "ltg_bert.embedding.word_embedding.weight": WORD_EMBEDDING,
        "ltg_bert.embedding.relative_embedding": "embedding.relative_embedding",
        "ltg_bert.embedding.relative_layer_norm.weight": "embedding.relative_layer_norm.weight",
        "ltg_bert.embedding.relative_layer_norm.bias": "embedding.relative_layer_norm.bias",
    }
    value = "in_proj_vg" if extra else "in_proj_v"
    for i in range(config.num_hidden_layers):
        ours, theirs = f"ltg_bert.layers.{i}", f"transformer.attention_layers.{i}"
        for name, original in (("in_proj_qk", "in_proj_qk"), ("in_proj_v", value), ("out_proj", "out_proj")):
            for kind in ("weight", "bias"):
                mapping[f"{ours}.attention.{name}.{kind}"] = f"{theirs}.{original}.{kind}"
        mapping[f"{ours}.mlp.up_proj.weight"] = f"transformer.mlp_layers.{i}.mlp.1.weight"
        mapping[f"{ours}.mlp.down_proj.weight"] = f"transformer.mlp_layers.{i}.mlp.4.weight"
        if extra:  # one weight vector per sub-layer, attention first
            mapping[f"{ours}.attention_depth_weights"] = f"transformer.dwa_modules.alphas.{2 * i}"
            mapping[f"{ours}.mlp_depth_weights"] = f"transformer.dwa_modules.alphas.{2 * i + 1}"
    mapping.update({
        "lm_head.dense.weight": "classifier.nonlinearity.1.weight",
        "lm_head.dense.bias": "classifier.nonlinearity.1.bias",
        "lm_head.decoder.bias": "classifier.nonlinearity.5.bias",
    })
    return mapping


def _check_keys(tensors, mapping, config, src, named) -> None:
    """The first tensor the config needs that is missing, or the first one it has no place for."""
    needed = set(mapping.values())
    missing = [name for name in mapping.values() if name not in tensors]
    if missing:
        raise ValueError(
            f"{src} lacks the tensor {named(missing[0])!r} that the config ({config.num_hidden_layers} layers, "
            f"{'model_extra.py' if config.layer_weighting else 'model.py'} layout) needs; "
            f"the config does not describe these weights."
        )
    unknown = [name for name in tensors
               if name not in needed and name != TIED_DECODER and not POSITION_BUFFER.match(name)]
    if unknown:
        raise ValueError(
            f"{src} holds the tensor {named(unknown[0])!r} that the config ({config.num_hidden_layers} layers) has no "
            f"place for; set num_hidden_layers to the number the model was trained with."
        )


def _tokenizer_path(src: Path, tokenizer) -> Path | None:
    if tokenizer is not None:
        path = Path(tokenizer)
        path = path / "tokenizer.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"--tokenizer {tokenizer}: no tokenizer.json there; give the tokenizer.json "
                                    f"GPT-BERT was trained with (or the folder holding it).")
        return path
    beside = (src if src.is_dir() else src.parent) / "tokenizer.json"
    return beside if beside.is_file() else None


def _read_tokenizer(path: Path):
    from transformers import PreTrainedTokenizerFast

    try:
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(path))
    except Exception as error:
        raise ValueError(f"{path} is not a readable tokenizers file: {error}") from error
    vocab = tokenizer.get_vocab()
    roles = {}
    for role, names in SPECIAL_TOKENS.items():
        found = next((name for name in names if name in vocab), None)
        if found is not None:
            roles[f"{role}_token"] = found
    if "cls_token" in roles:
        roles["bos_token"] = roles["cls_token"]
    if "sep_token" in roles:
        roles["eos_token"] = roles["sep_token"]
    tokenizer.add_special_tokens(roles)
    return tokenizer


def _special_token_ids(tokenizer) -> dict:
    ids = {}
    for role in ("unk", "cls", "sep", "pad", "mask", "bos", "eos"):
        token = getattr(tokenizer, f"{role}_token", None)
        if token is not None:
            ids[f"{role}_token_id"] = tokenizer.convert_tokens_to_ids(token)
    return ids


def model_card(config: LtgBertConfig, name: str, extra: bool, has_tokenizer: bool) -> str:
    """README.md of a converted folder: both modes, chosen by the Auto class at load time."""
    variant = ("`model_extra.py` (gated attention and layer weighting, the model of the paper)" if extra
               else "`model.py`")
    card = f"""---
library_name: transformers
pipeline_tag: fill-mask
tags:
- hf_ltg
- ltg_bert
- gpt-bert
- custom_code
---

# {name}

A GPT-BERT model (Charpentier & Samuel, "GPT or BERT: why not both?", BabyLM 2024) converted from a
state dict of ltgoslo/gpt-bert's {variant} by `hf-ltg convert --from gpt-bert`, as an `ltg_bert`
checkpoint: {config.num_hidden_layers} layers, hidden size {config.hidden_size}, {config.num_attention_heads} heads,
vocabulary {config.vocab_size}.

## Two modes, one set of weights

GPT-BERT was trained as a masked and as a causal language model at once. Choose the mode when you load it:

```python
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer, pipeline

repo = "PATH_OR_REPO"
tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=True)  # the config it reads is the folder's code

# Masked mode: bidirectional attention, fill in the mask token.
unmasker = pipeline("fill-mask", model=AutoModelForMaskedLM.from_pretrained(repo, trust_remote_code=True),
                    tokenizer=tokenizer)
print(unmasker(f"The capital of Norway is {{tokenizer.mask_token}}."))

# Causal mode: a causal mask, generation with a KV cache (left padding for batches).
model = AutoModelForCausalLM.from_pretrained(repo, trust_remote_code=True)
inputs = tokenizer(["Once upon a time"], return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20)[0]))
```

## Masked next-token prediction

GPT-BERT trains hidden state i to predict token i + 1 in both modes, so the prediction for a masked
token comes from the position before it. The config's `masked_next_token: true` makes the masked-LM
head apply that shift inside: the logits it returns at a mask position are the prediction for that
token, and `labels` follow the usual BERT convention (the token id at the masked position, -100
elsewhere). Inputs must start with the `<s>`/`[CLS]` token, as in training (the tokenizer adds it):
position 0 has nothing before it and gets zero logits. The causal-LM head is the usual one: logits at
position i predict token i + 1.
"""
    if not has_tokenizer:
        card += ("\nNo tokenizer was given to the converter: add GPT-BERT's `tokenizer.json` (e.g. `hf-ltg convert "
                 "--from gpt-bert ... --tokenizer tokenizer.json`).\n")
    card += """
## Security: remote code

`trust_remote_code=True` runs this folder's `configuration_ltg_bert.py` and `modeling_ltg_bert.py`, which
import only `torch` and `transformers`; read them, and pin the revision you reviewed. The weights are
safetensors.
"""
    return card
