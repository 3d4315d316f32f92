"""NorBERT4 release folders (ltg/norbert4-*: `modeling_gptbert.py`, `GptBert*`) -> `ltg_norbert4` folders.

The release's state dict (keys as its `GptBertFor*` classes name them: `embedding.*`,
`encoder.layers.N.*`, `classifier.*`) maps onto `hf_ltg.norbert4` one to one, except that the
release's linear layers hold a weight and a per-input-feature `scale` and multiply them at every
forward, `W * (scale + 1)`: here that product is taken once, in fp32 (the release's own
operation, so the effective weights are equal), and stored as a plain `nn.Linear` weight. The
tied output projection (`classifier.emb2vocab`) keeps its scale as `lm_head.decoder_scale`.

The release's rotary bases are fixed in its code (160,000 on global layers, 10,000 on the
others), whatever its config's `rope_theta` says; the converted config states them.
The converted folder is fp32 (load it with `dtype=torch.bfloat16` for 16-bit use).
"""

import copy
from pathlib import Path

import torch

from ..norbert4 import (
    Norbert4Config,
    Norbert4ForMaskedLM,
    Norbert4ForQuestionAnswering,
    Norbert4ForSequenceClassification,
    Norbert4ForTokenClassification,
    Norbert4Model,
)
from .common import load_into

# The release's config fields that this family reads, under the release's names.
CONFIG_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_attention_heads",
               "query_key_head_size", "value_head_size", "local_global_ratio", "global_window_length",
               "local_window_length", "layer_norm_eps")
OPTIONAL_KEYS = ("max_sequence_length", "attention_dropout", "hidden_dropout", "embedding_dropout",
                 "classifier_dropout", "deterministic_flash_attn", "pad_token_id", "unk_token_id", "bos_token_id",
                 "eos_token_id", "mask_token_id", "id2label", "label2id", "num_labels", "problem_type")
# Fields the conversion replaces or that mean nothing here (the release's own class names, its
# `use_cache: false`, which only said that it had no cache).
IGNORED_KEYS = ("architectures", "auto_map", "model_type", "use_cache", "rope_theta", "model", "transformers_version",
                "torch_dtype", "dtype", "is_decoder")
RELEASE_ROPE_THETA = (160_000.0, 10_000.0)  # global, local: fixed in modeling_gptbert.py

# release architecture -> our class
HEADS = {
    "GptBertForMaskedLM": Norbert4ForMaskedLM,
    "GptBertForCausalLM": Norbert4ForMaskedLM,  # same weights; the folder serves both modes
    "GptBertModel": Norbert4Model,
    "GptBertForSequenceClassification": Norbert4ForSequenceClassification,
    "GptBertForTokenClassification": Norbert4ForTokenClassification,
    "GptBertForQuestionAnswering": Norbert4ForQuestionAnswering,
}


def norbert4_config(release_config: dict, token_ids: dict | None = None, where="NorBERT4 config.json"):
    """The family config of a release config.json (token ids from the config, else from `token_ids`),
    and the names of the fields it drops."""
    missing = [k for k in CONFIG_KEYS if k not in release_config]
    if missing:
        raise ValueError(f"{where} lacks the key(s) {missing}; a NorBERT4 release config.json has "
                         f"{list(CONFIG_KEYS)}.")
    fields = {k: release_config[k] for k in CONFIG_KEYS + OPTIONAL_KEYS if k in release_config}
    for role, value in (token_ids or {}).items():
        if role in ("pad_token_id", "unk_token_id", "bos_token_id", "eos_token_id", "mask_token_id"):
            fields.setdefault(role, value)
    if isinstance(fields.get("id2label"), dict):
        fields["id2label"] = {int(k): v for k, v in fields["id2label"].items()}
    global_theta, local_theta = RELEASE_ROPE_THETA
    config = Norbert4Config(**fields, rope_theta=global_theta, local_rope_theta=local_theta)
    dropped = sorted(k for k in release_config if k not in CONFIG_KEYS + OPTIONAL_KEYS + IGNORED_KEYS)
    return config, dropped


def _folded(tensors: dict, prefix: str, weight_names: list[str], named) -> torch.Tensor:
    """W * (scale + 1) in fp32, the release's per-input-feature scaled weight (several weights: concatenated)."""
    weights = [named(f"{prefix}.{name}") for name in weight_names]
    scale = named(f"{prefix}.scale")
    return torch.cat([w.float() for w in weights], dim=0) * (scale.float() + 1.0).unsqueeze(0)


def norbert4_state_dict(tensors: dict, config: Norbert4Config, head: str, src="the weights") -> tuple[dict, bool]:
    """Our state dict (fp32) for `head` ("lm", "base", "classifier", "qa") from the release's tensors,
    and whether the output projection equals the word embedding (tied)."""
    tensors = {k.removeprefix("_orig_mod."): v for k, v in tensors.items()}
    prefix = "norbert4." if head != "base" else ""

    def named(name):
        if name not in tensors:
            raise ValueError(f"{src} lacks the tensor {name!r} that a NorBERT4 release with {config.num_hidden_layers} "
                             f"layers has; is the folder complete, and does config.json match the weights?")
        return tensors[name]

    if any(".attention.lambdas" in k or k.endswith(".lambdas") for k in tensors):
        raise ValueError(f"{src} holds the pre-release NorBERT4 layout (a single `lambdas` vector per layer and "
                         "value residuals); only the released layout (lambdas_v, lambdas_qk, lambdas_mlp, "
                         "lambdas_out) is supported.")
    ours = {
        f"{prefix}embedding.word_embedding.weight": named("embedding.word_embedding.weight").float(),
        f"{prefix}embedding.word_scale": named("embedding.word_scale").float(),
    }
    for i in range(config.num_hidden_layers):
        theirs, mine = f"encoder.layers.{i}", f"{prefix}layers.{i}"
        ours[f"{mine}.attention.qk_proj.weight"] = _folded(tensors, f"{theirs}.attention.qk_proj", ["weights.0", "weights.1"], named)
        ours[f"{mine}.attention.v_proj.weight"] = _folded(tensors, f"{theirs}.attention.v_proj", ["weight"], named)
        ours[f"{mine}.attention.out_proj.weight"] = _folded(tensors, f"{theirs}.attention.out_proj", ["weight"], named)
        ours[f"{mine}.mlp.up_proj.weight"] = _folded(tensors, f"{theirs}.mlp.up_proj", ["weights.0", "weights.1"], named)
        ours[f"{mine}.mlp.down_proj.weight"] = _folded(tensors, f"{theirs}.mlp.down_proj", ["weight"], named)
        for name in ("attention.q_scale", "attention.k_scale", "lambdas_v", "lambdas_qk", "lambdas_mlp", "lambdas_out"):
            ours[f"{mine}.{name}"] = named(f"{theirs}.{name}").float()
    tied = True
    if head == "lm":
        ours["lm_head.projection.weight"] = _folded(tensors, "classifier.projection", ["weight"], named)
        ours["lm_head.decoder_scale"] = named("classifier.emb2vocab.scale").float()
        ours["lm_head.decoder.bias"] = named("classifier.emb2vocab.bias").float()
        decoder = tensors.get("classifier.emb2vocab.weight")
        if decoder is not None and not torch.equal(decoder.float(), ours["norbert4.embedding.word_embedding.weight"]):
            tied = False
            ours["lm_head.decoder.weight"] = decoder.float()
    elif head in ("classifier", "qa"):
        mine = "classifier" if head == "classifier" else "qa_outputs"
        ours[f"{mine}.projection.weight"] = _folded(tensors, "classifier.projection", ["weight"], named)
        ours[f"{mine}.out_proj.weight"] = _folded(tensors, "classifier.output_projection", ["weight"], named)
        ours[f"{mine}.out_proj.bias"] = named("classifier.output_projection.bias").float()
    return ours, tied


def norbert4_model(tensors: dict, release_config: dict, token_ids: dict | None = None, src="the weights"):
    """The converted model (fp32, eval mode) and the config fields it dropped."""
    config, dropped = norbert4_config(release_config, token_ids)
    architectures = [a for a in release_config.get("architectures") or () if a in HEADS]
    if release_config.get("architectures") and not architectures:
        raise ValueError(
            f"{src}: the release's architectures {release_config['architectures']} name no head this converter "
            f"knows ({sorted(HEADS)}); GptBertForMultipleChoice's head mixes tokens and choices and is not converted.")
    has_lm = "classifier.emb2vocab.bias" in tensors or "classifier.emb2vocab.scale" in tensors
    model_class = HEADS[architectures[0]] if architectures else (Norbert4ForMaskedLM if has_lm else Norbert4Model)
    if model_class is Norbert4ForMaskedLM and not has_lm:
        model_class = Norbert4Model  # a base-model folder saved as a masked LM's: no head to convert
    head = {Norbert4ForMaskedLM: "lm", Norbert4Model: "base", Norbert4ForQuestionAnswering: "qa"}.get(model_class,
                                                                                                    "classifier")
    if head == "qa":
        config.num_labels = 2
    state, tied = norbert4_state_dict(tensors, config, head, src)
    config.tie_word_embeddings = tied
    model = model_class(config)
    load_into(model, state)
    return model.eval(), dropped


def convert_norbert4_release(release, out, options) -> Path:
    """`hf-ltg convert` of a NorBERT4 release folder (a `conversion.releases.Release`)."""
    from .releases import _token_ids, checked, read_tokenizer, read_weights

    tensors, weights_name = read_weights(release.folder)
    tokenizer = read_tokenizer(release.folder)
    model, dropped = norbert4_model(tensors, release.config, _token_ids(tokenizer), release.folder / weights_name)
    check = checked(release, tokenizer, dropped, options,
                    lambda: verify_norbert4(release.folder, release.config, tensors, model))
    return write_folder(model, tokenizer, out, release.folder.name, check)


def write_folder(model, tokenizer, out, source_name: str, check: str) -> Path:
    from .releases import write_converted

    return write_converted(model, tokenizer, out, model_card(model.config, source_name, Path(out).name, check))


def verify_norbert4(folder: Path, release_config: dict, tensors: dict, model) -> float:
    """Largest |logit difference| between the converted model and the release's own code (its masked LM,
    on CPU its padded path, so compared with `window_edge="padded"`) at real tokens of a right-padded batch."""
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    auto_map = release_config.get("auto_map") or {}
    try:
        their_config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        their_class = get_class_from_dynamic_module(auto_map["AutoModelForMaskedLM"], folder)
        theirs = their_class(their_config)
    except Exception as error:
        raise ValueError(f"--verify could not load the release's own code from {folder}: "
                         f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from error
    tensors = dict(tensors)
    if "classifier.emb2vocab.weight" not in tensors:  # tied to the word embedding; safetensors keeps one of the two
        tensors["classifier.emb2vocab.weight"] = tensors["embedding.word_embedding.weight"]
    theirs.load_state_dict(tensors, strict=False)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (2, 12), generator=generator)
    keep = torch.ones(2, 12, dtype=torch.bool)
    keep[1, 8:] = False
    # the release's code without flash-attn runs its padded path: windows |i - j| <= w
    padded = type(model)(copy.deepcopy(model.config))
    padded.config.window_edge = "padded"
    padded.load_state_dict(model.state_dict())
    with torch.no_grad():
        ours = padded.eval()(input_ids=ids, attention_mask=keep.long()).logits.float()
        reference = theirs.eval()(input_ids=ids, attention_mask=keep.long(), return_dict=True).logits.float()
    return (ours[keep] - reference[keep]).abs().max().item()


def model_card(config, source_name: str, name: str, check: str) -> str:
    return f"""---
library_name: transformers
pipeline_tag: fill-mask
tags:
- hf_ltg
- ltg_norbert4
- custom_code
---

# {name}

Converted by `hf-ltg convert` from the NorBERT4 release folder `{source_name}` (Hub ids ltg/norbert4-*,
`modeling_gptbert.py`) into an `ltg_norbert4` checkpoint: {config.num_hidden_layers} layers, hidden size
{config.hidden_size}, {config.num_attention_heads} heads, vocabulary {config.vocab_size}. Every Auto class loads
with `trust_remote_code=True` from this folder's own `configuration_norbert4.py` / `modeling_norbert4.py`:
`AutoModelForMaskedLM` (masked mode) and `AutoModelForCausalLM` (causal mode, `generate` with a KV cache) on the
same weights.

Check against the release: {check}.

## Differences from the release's code

- Sliding windows: the release's flash-attn path (which trained the model) keeps |i - j| <= w - 1, its padded
  path |i - j| <= w. This folder follows the flash path (`window_edge: "flash"`); set `window_edge: "padded"`
  for the other. They differ only on inputs longer than a window ({config.local_window_length} tokens on local
  layers).
- Positions count real tokens (as the flash path): a left-padded row gets what it gets alone.
- No dtype casts of its own (the release runs fp32 inputs in bf16 on CUDA): the model runs in the dtype you load.
- The masked LM's logits are the release's (shifted, BOS column first); the multiple-choice head pools the first
  token (the release's multiple-choice head is ill-formed).

## Security: remote code

`trust_remote_code=True` runs this folder's `configuration_norbert4.py` and `modeling_norbert4.py`, which import
only `torch` and `transformers`; read them, and pin the revision you reviewed. The weights are safetensors.
"""
