""""GPT from scratch" checkpoints (the GPTModel of *Build a Large Language Model (From Scratch)*).

Config keys: vocab_size, context_length, emb_dim, n_heads, n_layers, drop_rate, qkv_bias.
Separate `W_query`/`W_key`/`W_value` (nn.Linear) are concatenated into our fused `qkv_proj`;
LayerNorm `scale`/`shift` become `weight`/`bias`; the persistent causal-mask buffers are
dropped. `out_head` is untied from `tok_emb` in that model, so the converted causal LM is
untied too. A classifier variant (`out_head` of `num_classes` rows, with bias) becomes
`LtgGptForSequenceClassification` with a biased `score`.
"""

import re
from pathlib import Path

from ..checkpoint import atomic_directory, load_state_dict
from ..gpt import LtgGptConfig, LtgGptForCausalLM, LtgGptForSequenceClassification
from .common import copy_tokenizer_files, load_into, read_json_config, require_keys

CONFIG_KEYS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers")
MASK_BUFFER = re.compile(r"^trf_blocks\.\d+\.att\.mask$")
BLOCK_MAP = [
    ("att.out_proj.weight", "attn.out_proj.weight"),
    ("att.out_proj.bias", "attn.out_proj.bias"),
    ("ff.layers.0.weight", "mlp.fc_in.weight"),
    ("ff.layers.0.bias", "mlp.fc_in.bias"),
    ("ff.layers.2.weight", "mlp.fc_out.weight"),
    ("ff.layers.2.bias", "mlp.fc_out.bias"),
    ("norm1.scale", "ln_1.weight"),
    ("norm1.shift", "ln_1.bias"),
    ("norm2.scale", "ln_2.weight"),
    ("norm2.shift", "ln_2.bias"),
]
TOP_MAP = [("tok_emb.weight", "transformer.wte.weight"), ("pos_emb.weight", "transformer.wpe.weight"),
           ("final_norm.scale", "transformer.ln_f.weight"), ("final_norm.shift", "transformer.ln_f.bias")]


def convert_from_scratch(src, out, config_path) -> Path:
    """Convert a "GPT from scratch" state dict (`.pth`/`.bin`/`.safetensors`) into a checkpoint folder."""
    import torch

    src = Path(src)
    book = read_json_config(config_path)
    require_keys(book, CONFIG_KEYS, f"Config {config_path}")
    tensors = {k: v for k, v in load_state_dict(src).items() if not MASK_BUFFER.match(k)}
    if "tok_emb.weight" not in tensors or "out_head.weight" not in tensors:
        raise ValueError(
            f"{src} is not a 'GPT from scratch' state dict: it needs 'tok_emb.weight' and 'out_head.weight' "
            f"(found e.g. {sorted(tensors)[:5]})."
        )
    qkv_bias = bool(book.get("qkv_bias", False))
    drop = float(book.get("drop_rate", 0.0))
    out_rows = tensors["out_head.weight"].shape[0]
    is_classifier = out_rows != book["vocab_size"]
    config = LtgGptConfig(
        vocab_size=book["vocab_size"], max_position_embeddings=book["context_length"], hidden_size=book["emb_dim"],
        num_hidden_layers=book["n_layers"], num_attention_heads=book["n_heads"], intermediate_size=4 * book["emb_dim"],
        activation="gelu_pytorch_tanh", embedding_dropout=drop, attention_dropout=drop, hidden_dropout=drop,
        layer_norm_eps=1e-5, qkv_bias=qkv_bias, tie_word_embeddings=False,
        bos_token_id=book.get("bos_token_id", 50256 if book["vocab_size"] == 50257 else None),
        eos_token_id=book.get("eos_token_id", 50256 if book["vocab_size"] == 50257 else None),
        pad_token_id=book.get("pad_token_id"),
        num_labels=out_rows if is_classifier else 2, score_bias="out_head.bias" in tensors,
    )

    mapped, source, consumed = {}, {}, set()

    def take(name):
        if name not in tensors:
            raise ValueError(f"{src} lacks the tensor {name!r} that the config ({book['n_layers']} layers) needs.")
        consumed.add(name)
        return tensors[name]

    def put(src_name, dst_name):
        mapped[dst_name], source[dst_name] = take(src_name), src_name

    def put_fused(names, dst_name, shape):
        for name in names:  # check each part: a fused shape error would name no real tensor
            if tuple(take(name).shape) != shape:
                raise ValueError(
                    f"Tensor {name!r} has shape {tuple(tensors[name].shape)} but the config expects {shape} "
                    f"(emb_dim={config.hidden_size})."
                )
        mapped[dst_name], source[dst_name] = torch.cat([tensors[n] for n in names]), names[0]

    for src_name, dst_name in TOP_MAP:
        put(src_name, dst_name)
    width = config.hidden_size
    for i in range(config.num_hidden_layers):
        prefix = f"trf_blocks.{i}."
        parts = [f"{prefix}att.W_{p}" for p in ("query", "key", "value")]
        put_fused([f"{p}.weight" for p in parts], f"transformer.h.{i}.attn.qkv_proj.weight", (width, width))
        if qkv_bias:
            put_fused([f"{p}.bias" for p in parts], f"transformer.h.{i}.attn.qkv_proj.bias", (width,))
        for src_name, dst_name in BLOCK_MAP:
            put(prefix + src_name, f"transformer.h.{i}.{dst_name}")

    if is_classifier:
        model_class = LtgGptForSequenceClassification
        put("out_head.weight", "score.weight")
        if config.score_bias:
            put("out_head.bias", "score.bias")
    else:
        model_class = LtgGptForCausalLM
        put("out_head.weight", "lm_head.weight")
    leftover = sorted(set(tensors) - consumed)
    if leftover:
        raise ValueError(
            f"{src} holds tensors the config does not account for, e.g. {leftover[:5]}; "
            f"the config says n_layers={config.num_hidden_layers}, qkv_bias={qkv_bias}."
        )
    model = load_into(model_class(config), mapped, source)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        copy_tokenizer_files(src.parent if src.is_file() else src, tmp)
    return Path(out)
