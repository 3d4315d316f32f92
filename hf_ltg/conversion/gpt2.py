"""Hugging Face `gpt2` checkpoints <-> LTG GPT.

GPT-2's `c_attn`, `c_proj`, `c_fc` are `Conv1D` layers whose weights are stored `[in, out]`;
ours are `nn.Linear` (`[out, in]`), so those weights are transposed both ways. Everything else
maps one to one.
"""

import re
from pathlib import Path

import torch

from ..checkpoint import atomic_directory, load_state_dict
from ..gpt import LtgGptConfig, LtgGptForCausalLM, LtgGptForSequenceClassification
from .common import copy_tokenizer_files, load_into, read_json_config

# GPT-2 head width is 64 at every published size; used only when no config.json is available.
GPT2_HEAD_DIM = 64

# (gpt2 name inside a block, our name inside a block, transposed?)
BLOCK_MAP = [
    ("ln_1.weight", "ln_1.weight", False),
    ("ln_1.bias", "ln_1.bias", False),
    ("attn.c_attn.weight", "attn.qkv_proj.weight", True),
    ("attn.c_attn.bias", "attn.qkv_proj.bias", False),
    ("attn.c_proj.weight", "attn.out_proj.weight", True),
    ("attn.c_proj.bias", "attn.out_proj.bias", False),
    ("ln_2.weight", "ln_2.weight", False),
    ("ln_2.bias", "ln_2.bias", False),
    ("mlp.c_fc.weight", "mlp.fc_in.weight", True),
    ("mlp.c_fc.bias", "mlp.fc_in.bias", False),
    ("mlp.c_proj.weight", "mlp.fc_out.weight", True),
    ("mlp.c_proj.bias", "mlp.fc_out.bias", False),
]
TOP_MAP = [("wte.weight", "wte.weight"), ("wpe.weight", "wpe.weight"),
           ("ln_f.weight", "ln_f.weight"), ("ln_f.bias", "ln_f.bias")]
BUFFERS = re.compile(r"(^|\.)attn\.(bias|masked_bias)$")
UNSUPPORTED_GPT2_OPTIONS = {"scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
                            "scale_attn_weights": True, "add_cross_attention": False}


def config_from_gpt2(gpt2: dict, **overrides) -> LtgGptConfig:
    """Our config from a `gpt2` config.json dict, refusing options our model does not implement."""
    for key, supported in UNSUPPORTED_GPT2_OPTIONS.items():
        if gpt2.get(key, supported) != supported:
            raise ValueError(f"The GPT-2 config sets {key}={gpt2[key]!r}; hf_ltg supports only {supported!r}.")
    embd = gpt2.get("n_embd", gpt2.get("hidden_size", 768))
    vocab = gpt2.get("vocab_size", 50257)
    default_eos = 50256 if vocab == 50257 else None  # GPT-2's <|endoftext|>, only in its own vocabulary
    values = dict(
        vocab_size=vocab,
        max_position_embeddings=gpt2.get("n_positions", gpt2.get("max_position_embeddings", 1024)),
        hidden_size=embd,
        num_hidden_layers=gpt2.get("n_layer", gpt2.get("num_hidden_layers", 12)),
        num_attention_heads=gpt2.get("n_head", gpt2.get("num_attention_heads", 12)),
        intermediate_size=gpt2.get("n_inner") or 4 * embd,
        activation=gpt2.get("activation_function", "gelu_new"),
        embedding_dropout=gpt2.get("embd_pdrop", 0.1),
        attention_dropout=gpt2.get("attn_pdrop", 0.1),
        hidden_dropout=gpt2.get("resid_pdrop", 0.1),
        layer_norm_eps=gpt2.get("layer_norm_epsilon", 1e-5),
        initializer_range=gpt2.get("initializer_range", 0.02),
        tie_word_embeddings=gpt2.get("tie_word_embeddings", True),
        bos_token_id=gpt2.get("bos_token_id", default_eos),
        eos_token_id=gpt2.get("eos_token_id", default_eos),
        pad_token_id=gpt2.get("pad_token_id"),
        token_type_embeddings=True,  # GPT-2 adds wte(token_type_ids) when a caller passes them
    )
    for key in ("id2label", "label2id", "problem_type"):
        if gpt2.get(key) is not None:
            values[key] = gpt2[key]
    values.update(overrides)
    return LtgGptConfig(**values)


def _infer_gpt2_config(tensors: dict[str, torch.Tensor]) -> dict:
    """A gpt2 config dict from tensor shapes alone (heads assume GPT-2's width of 64)."""
    vocab, embd = tensors["wte.weight"].shape
    layers = 1 + max(int(m.group(1)) for k in tensors if (m := re.match(r"h\.(\d+)\.", k)))
    return dict(vocab_size=vocab, n_positions=tensors["wpe.weight"].shape[0], n_embd=embd, n_layer=layers,
                n_head=max(1, embd // GPT2_HEAD_DIM), n_inner=tensors["h.0.mlp.c_fc.weight"].shape[1])


def _strip_prefix(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `transformer.` prefix (present in GPT2LMHeadModel files, absent in GPT2Model ones)
    and GPT-2's non-persistent mask buffers that older files carry."""
    out = {}
    for name, tensor in tensors.items():
        name = name.removeprefix("transformer.")
        if not BUFFERS.search(name):
            out[name] = tensor
    return out


def gpt2_to_ltg_state_dict(gpt2: dict[str, torch.Tensor], num_layers: int) -> tuple[dict, dict]:
    """(our state dict, {our name: gpt2 name}) for a prefix-free gpt2 state dict."""
    ours, source = {}, {}

    def put(src, dst, transpose=False):
        if src not in gpt2:
            raise ValueError(f"The GPT-2 weights lack the tensor {src!r}; is this a Hugging Face gpt2 file?")
        tensor = gpt2[src]
        if transpose and tensor.ndim != 2:
            raise ValueError(f"Tensor {src!r} has shape {tuple(tensor.shape)}; a Conv1D weight must be 2-D.")
        ours[dst] = tensor.t().contiguous() if transpose else tensor
        source[dst] = src

    for src, dst in TOP_MAP:
        put(src, f"transformer.{dst}")
    for i in range(num_layers):
        for src, dst, transpose in BLOCK_MAP:
            put(f"h.{i}.{src}", f"transformer.h.{i}.{dst}", transpose)
    known = set(source.values()) | {"lm_head.weight", "score.weight"}
    extra = sorted(set(gpt2) - known)
    if extra:
        raise ValueError(
            f"The GPT-2 weights hold tensors the config does not account for, e.g. {extra[:5]}; "
            f"the config says {num_layers} layers."
        )
    return ours, source


def convert_from_hf_gpt2(src, out, config_path=None) -> Path:
    """Convert a Hugging Face `gpt2` folder or weights file into an hf_ltg checkpoint folder.

    The config comes from `config_path`, else `config.json` beside the weights, else the
    tensor shapes. A `score.weight` (GPT2ForSequenceClassification) gives a classifier;
    otherwise a causal LM, untied when the file's `lm_head.weight` differs from `wte`.
    """
    src = Path(src)
    folder = src if src.is_dir() else src.parent
    tensors = _strip_prefix(load_state_dict(src))
    if "wte.weight" not in tensors:
        raise ValueError(
            f"{src} is not a Hugging Face gpt2 checkpoint: it has no 'wte.weight' "
            f"(found e.g. {sorted(tensors)[:5]})."
        )
    if config_path is not None:
        gpt2_config = read_json_config(config_path)
    elif (folder / "config.json").is_file():
        gpt2_config = read_json_config(folder / "config.json")
    else:
        gpt2_config = _infer_gpt2_config(tensors)

    overrides = {}
    lm_head = tensors.get("lm_head.weight")
    if lm_head is not None and lm_head.shape == tensors["wte.weight"].shape and not torch.equal(lm_head, tensors["wte.weight"]):
        overrides["tie_word_embeddings"] = False
    if "score.weight" in tensors:
        overrides["num_labels"] = tensors["score.weight"].shape[0]
    config = config_from_gpt2(gpt2_config, **overrides)

    mapped, source = gpt2_to_ltg_state_dict(tensors, config.num_hidden_layers)
    if "score.weight" in tensors:
        model_class = LtgGptForSequenceClassification
        mapped["score.weight"], source["score.weight"] = tensors["score.weight"], "score.weight"
    else:
        model_class = LtgGptForCausalLM
        if not config.tie_word_embeddings:
            mapped["lm_head.weight"], source["lm_head.weight"] = lm_head, "lm_head.weight"
    model = load_into(model_class(config), mapped, source)
    return _save(model, out, folder)


def convert_to_hf_gpt2(src, out) -> Path:
    """Convert an hf_ltg GPT checkpoint folder into a stock `gpt2` folder (no remote code).

    Everything LTG GPT expresses has a GPT-2 equivalent; a model without q/k/v biases gets
    zero biases, which computes the same function. Causal LMs, sequence classifiers and token
    classifiers become GPT2LMHeadModel, GPT2ForSequenceClassification, GPT2ForTokenClassification.
    """
    from transformers import (
        GPT2Config,
        GPT2ForSequenceClassification,
        GPT2ForTokenClassification,
        GPT2LMHeadModel,
    )

    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a checkpoint folder.")
    raw = read_json_config(src / "config.json")
    if raw.get("model_type") != LtgGptConfig.model_type:
        raise ValueError(
            f"{src} holds a {raw.get('model_type')!r} model; only {LtgGptConfig.model_type!r} checkpoints "
            "can be written as stock GPT-2."
        )
    if raw.get("quantization"):
        raise ValueError(f"{src} is quantized; stock GPT-2 cannot express int8 weights. Convert the fp32 source.")
    config = LtgGptConfig.from_pretrained(src)
    ours = load_state_dict(src)
    is_classifier = "score.weight" in ours
    is_tagger = "classifier.weight" in ours
    if is_classifier and config.score_bias:
        raise ValueError("The classifier's `score` layer has a bias; GPT-2's `score` has none, so it cannot be expressed.")
    if "transformer.wte.weight" not in ours:
        raise ValueError(
            f"{src} is not a causal-LM, sequence- or token-classification checkpoint of LTG GPT "
            "(a bare LtgGptModel has no `transformer.` prefix); save one of those heads."
        )

    gpt2_config = GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.max_position_embeddings, n_embd=config.hidden_size,
        n_layer=config.num_hidden_layers, n_head=config.num_attention_heads, n_inner=config.intermediate_size,
        activation_function=config.activation, resid_pdrop=config.hidden_dropout,
        embd_pdrop=config.embedding_dropout, attn_pdrop=config.attention_dropout,
        layer_norm_epsilon=config.layer_norm_eps, initializer_range=config.initializer_range,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
        id2label=config.id2label, label2id=config.label2id, problem_type=config.problem_type,
    )
    gpt2 = {}
    for src_name, dst_name in TOP_MAP:
        gpt2[f"transformer.{src_name}"] = ours[f"transformer.{dst_name}"]
    for i in range(config.num_hidden_layers):
        for gpt2_name, our_name, transpose in BLOCK_MAP:
            key = f"transformer.h.{i}.{our_name}"
            if key not in ours and our_name == "attn.qkv_proj.bias":
                tensor = torch.zeros(3 * config.hidden_size, dtype=ours[f"transformer.h.{i}.attn.qkv_proj.weight"].dtype)
            else:
                tensor = ours[key]
            gpt2[f"transformer.h.{i}.{gpt2_name}"] = tensor.t().contiguous() if transpose else tensor
    if is_classifier:
        model = GPT2ForSequenceClassification(gpt2_config)
        gpt2["score.weight"] = ours["score.weight"]
    elif is_tagger:
        gpt2_config.classifier_dropout = config.classifier_dropout
        model = GPT2ForTokenClassification(gpt2_config)
        gpt2["classifier.weight"], gpt2["classifier.bias"] = ours["classifier.weight"], ours["classifier.bias"]
    else:
        model = GPT2LMHeadModel(gpt2_config)
        if not config.tie_word_embeddings:
            gpt2["lm_head.weight"] = ours["lm_head.weight"]
    model = load_into(model, gpt2)
    return _save(model, out, src)


def _save(model, out, tokenizer_folder: Path) -> Path:
    if model.can_generate():  # classifiers have no generation config
        model.generation_config.bos_token_id = model.config.bos_token_id
        model.generation_config.eos_token_id = model.config.eos_token_id
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        copy_tokenizer_files(tokenizer_folder, tmp)
    return Path(out)
