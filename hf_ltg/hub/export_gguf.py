"""`export_gguf`: a llama.cpp GGUF file from an LTG GPT causal LM.

LTG GPT is GPT-2 (see `modeling_ltg_gpt.py`), so the file describes llama.cpp's `gpt2`
architecture (its `src/models/gpt2.cpp` reads it): learned positions, pre-norm LayerNorm blocks
with biases, a fused q/k/v projection split in q, k, v order, attention scaled by
1/sqrt(head_dim), a GELU MLP (ggml's GELU is the tanh approximation) and a final LayerNorm; the
LM head is `output.weight`, or the token embedding when the file has none (tied weights). Our
linear weights are stored [out, in], which is what llama.cpp expects (GPT-2's Conv1D weights would
need a transpose). The tokenizer is written as a byte-level BPE `gpt2` tokenizer (tokens, token
types, merges) with the GPT-2 pre-tokenizer, which is what `hf_ltg.tokenization` trains.

Weight types follow llama.cpp's converter: 1-D tensors (norms, biases) and the position table stay
float32; matrices are f32, f16, q8_0 (blocks of 32 values with one f16 scale), q4_0 (blocks of 32
4-bit values with one f16 scale) or q4_1 (an f16 scale and an f16 minimum per 32); a matrix whose
rows are not a multiple of 32 falls back to f16.

A checkpoint of `hf-ltg quantize` exports too. Where the GGUF type holds its numbers, they are
written unchanged (up to f16 scales): int4-weight-only as q4_1 (the same block formula), absmax and
int8-weight-only as q8_0 (each row's scale repeated per block). Any other type is made from the
dequantized weights, as from a float checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .export_onnx import source_model_folder

GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1")
GGUF_MAGIC = b"GGUF"
SUPPORTED_HEAD = "LtgGptForCausalLM"
# the activations that are GPT-2's (tanh-approximated GELU), the one ggml's gpt2 graph computes
GPT2_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_new")
# token types of llama.cpp's vocabulary (gguf.TokenType)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


def check_gguf_output(out, overwrite: bool, weight_type: str) -> Path:
    """Refuse, before any work, an unknown weight type and an OUT that may not be written."""
    if weight_type not in GGUF_TYPES:
        raise ValueError(f"Unknown GGUF weight type {weight_type!r}; choose one of {', '.join(GGUF_TYPES)} "
                         "(llama.cpp's llama-quantize makes the other types from an f16 file).")
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"The GGUF output {out} is a folder; give a file name such as {out / 'model.gguf'}.")
    if out.exists():
        with open(out, "rb") as handle:
            is_gguf = handle.read(4) == GGUF_MAGIC
        if not is_gguf:
            raise ValueError(f"{out} exists and is not a GGUF file; choose a new file name (--overwrite replaces "
                             "only a previous GGUF file).")
        if not overwrite:
            raise ValueError(f"{out} already exists; pass --overwrite to replace it, or choose another file name.")
    return out


def export_gguf(src, out, *, weight_type: str = "f16", merge: bool = False, tokenizer=None,
                overwrite: bool = True) -> Path:
    """Write `out`, a GGUF file of the GPT causal LM in `src` (a checkpoint, Trainer output or, with
    `merge`, a peft adapter), with weights of `weight_type` (f32, f16, q8_0, q4_0 or q4_1). Returns `out`."""
    import gguf
    import torch

    out = check_gguf_output(out, overwrite, weight_type)
    with source_model_folder(src, merge=merge, tokenizer=tokenizer) as (model_dir, tokenizer_dir):
        model = _load_gpt2_compatible(model_dir)
        vocabulary = read_bpe_vocabulary(tokenizer_dir, model.config.vocab_size)
        config = model.config
        out.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
        os.close(handle)
        try:
            writer = gguf.GGUFWriter(tmp, "gpt2")
            writer.add_name(Path(model_dir).resolve().name)
            writer.add_context_length(config.max_position_embeddings)
            writer.add_embedding_length(config.hidden_size)
            writer.add_feed_forward_length(config.intermediate_size)
            writer.add_block_count(config.num_hidden_layers)
            writer.add_head_count(config.num_attention_heads)
            writer.add_layer_norm_eps(config.layer_norm_eps)
            writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                                  "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
                                  "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1}[weight_type])
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            _add_tokenizer(writer, vocabulary, config)
            with torch.no_grad():
                for name, tensor in gguf_tensors(model):
                    _add_tensor(writer, name, tensor, weight_type)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return out


def gguf_tensors(model):
    """(llama.cpp gpt2 tensor name, tensor) for every weight of an LtgGptForCausalLM; the weight of a
    quantized layer (`hf-ltg quantize`) is the layer itself (see `_add_tensor`)."""
    import torch

    def weight(layer):
        return layer if _is_quantized_layer(layer) else layer.weight

    gpt = model.transformer
    yield "token_embd.weight", gpt.wte.weight
    yield "position_embd.weight", gpt.wpe.weight
    for index, block in enumerate(gpt.h):
        prefix = f"blk.{index}"
        qkv = block.attn.qkv_proj
        yield f"{prefix}.attn_norm.weight", block.ln_1.weight
        yield f"{prefix}.attn_norm.bias", block.ln_1.bias
        yield f"{prefix}.attn_qkv.weight", weight(qkv)
        # llama.cpp's gpt2 requires the bias: a model without one has a zero bias
        yield f"{prefix}.attn_qkv.bias", qkv.bias if qkv.bias is not None else torch.zeros(qkv.out_features)
        yield f"{prefix}.attn_output.weight", weight(block.attn.out_proj)
        yield f"{prefix}.attn_output.bias", block.attn.out_proj.bias
        yield f"{prefix}.ffn_norm.weight", block.ln_2.weight
        yield f"{prefix}.ffn_norm.bias", block.ln_2.bias
        yield f"{prefix}.ffn_up.weight", weight(block.mlp.fc_in)
        yield f"{prefix}.ffn_up.bias", block.mlp.fc_in.bias
        yield f"{prefix}.ffn_down.weight", weight(block.mlp.fc_out)
        yield f"{prefix}.ffn_down.bias", block.mlp.fc_out.bias
    yield "output_norm.weight", gpt.ln_f.weight
    yield "output_norm.bias", gpt.ln_f.bias
    if not model.config.tie_word_embeddings:  # tied: llama.cpp uses token_embd
        yield "output.weight", weight(model.lm_head)


def _is_quantized_layer(layer) -> bool:
    return hasattr(layer, "dequantized_weight")


def _add_tensor(writer, name: str, tensor, weight_type: str) -> None:
    import gguf

    quantized_types = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0,
                       "q4_1": gguf.GGMLQuantizationType.Q4_1}
    if _is_quantized_layer(tensor):
        blocks = exact_gguf_blocks(tensor, weight_type)
        if blocks is not None:
            writer.add_tensor(name, blocks, raw_dtype=quantized_types[weight_type])
            return
        tensor = tensor.dequantized_weight()
    array = tensor.float().numpy()
    qtype = quantized_types.get(weight_type)
    if array.ndim == 1 or weight_type == "f32" or name == "position_embd.weight":
        writer.add_tensor(name, array.astype("float32"))
    elif qtype is not None and array.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] == 0:
        writer.add_tensor(name, gguf.quants.quantize(array.astype("float32"), qtype), raw_dtype=qtype)
    else:
        writer.add_tensor(name, array.astype("float16"))


def exact_gguf_blocks(layer, weight_type: str):
    """The GGUF blocks (uint8 [out, bytes per row]) holding a quantized layer's own numbers, where
    `weight_type` can: int4-weight-only as q4_1 (f16 scale, f16 minimum, 16 bytes of 4-bit values:
    elements 0-15 in the low nibbles, 16-31 in the high ones), absmax and int8-weight-only as q8_0
    (f16 scale, 32 int8 values). None where it cannot (another type, zero points, odd row lengths)."""
    import numpy as np
    import torch

    scheme = getattr(layer, "scheme", None)
    rows, columns = layer.out_features, layer.in_features
    if columns % 32:
        return None
    if weight_type == "q4_1" and scheme == "int4-weight-only" and layer.group_size == 32:
        from ..gpt.weight_only_ltg_gpt import unpack_int4

        q = unpack_int4(layer.weight).reshape(rows, columns // 32, 2, 16).numpy()
        nibbles = q[:, :, 0] | (q[:, :, 1] << 4)  # (rows, blocks, 16)
        scale = layer.weight_scale.float().numpy().astype(np.float16).view(np.uint8).reshape(rows, -1, 2)
        minimum = layer.weight_min.float().numpy().astype(np.float16).view(np.uint8).reshape(rows, -1, 2)
        return np.concatenate([scale, minimum, nibbles.astype(np.uint8)], axis=-1).reshape(rows, -1)
    if weight_type == "q8_0" and scheme in ("absmax", "int8-weight-only"):
        q = layer.weight.to(torch.int8).numpy().reshape(rows, columns // 32, 32).view(np.uint8)
        scale = layer.weight_scale.float().numpy().astype(np.float16).view(np.uint8).reshape(rows, 1, 2)
        return np.concatenate([np.repeat(scale, columns // 32, axis=1), q], axis=-1).reshape(rows, -1)
    return None


def _load_gpt2_compatible(model_dir):
    """The float32 LtgGptForCausalLM in `model_dir` (quantized layers stay quantized), or a ValueError
    saying why GGUF cannot hold it."""
    import torch
    from transformers import AutoConfig

    from .. import registration

    registration.register_all()
    config = AutoConfig.from_pretrained(model_dir)
    architectures = config.architectures or []
    if config.model_type != "ltg_gpt" or SUPPORTED_HEAD not in architectures:
        raise ValueError(
            f"{model_dir} holds {', '.join(architectures) or config.model_type}; GGUF export supports the GPT causal "
            f"LM head only ({SUPPORTED_HEAD}, llama.cpp's gpt2): export other heads and LTG-BERT with --onnx."
        )
    if config.activation not in GPT2_ACTIVATIONS:
        raise ValueError(
            f"{model_dir} uses the activation {config.activation!r}; llama.cpp's gpt2 computes the tanh-approximated "
            f"GELU ({' / '.join(GPT2_ACTIVATIONS)}), so the file would give other outputs: export it with --onnx."
        )
    from ..gpt import LtgGptForCausalLM

    return LtgGptForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def read_bpe_vocabulary(tokenizer_dir, vocab_size: int) -> dict:
    """tokens, token types and merges of the byte-level BPE tokenizer in `tokenizer_dir`
    (tokenizer.json), padded with unused tokens to the model's `vocab_size`."""
    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"No tokenizer.json in {tokenizer_dir}; GGUF export needs the fast tokenizer file "
                                "(pass --tokenizer FOLDER).")
    data = json.loads(path.read_text())
    model, pre = data.get("model") or {}, data.get("pre_tokenizer") or {}
    gpt2_style = (model.get("type") == "BPE" and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
                  and not pre.get("add_prefix_space", False) and data.get("normalizer") is None)
    if not gpt2_style:
        raise ValueError(
            f"{path} is a {model.get('type')} tokenizer with pre-tokenizer {pre.get('type')} "
            f"(add_prefix_space={pre.get('add_prefix_space')}); GGUF's gpt2 tokenizer is GPT-2's byte-level BPE "
            "(ByteLevel pre-tokenizer with its regex, no prefix space, no normalizer): train one with "
            "hf-ltg's BPE tokenizer or export with --onnx."
        )
    by_id = {index: token for token, index in model["vocab"].items()}
    types = dict.fromkeys(by_id, NORMAL)
    for added in data.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    if max(by_id) >= vocab_size:
        raise ValueError(f"The tokenizer in {tokenizer_dir} has ids up to {max(by_id)} but the model has "
                         f"vocab_size={vocab_size}; the tokenizer does not belong to this model.")
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    token_types = [types.get(i, UNUSED) for i in range(vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    unk = model.get("unk_token")
    return {"tokens": tokens, "token_types": token_types, "merges": merges,
            "unk_id": model["vocab"].get(unk) if unk else None}


def _add_tokenizer(writer, vocabulary: dict, config) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(vocabulary["tokens"])
    writer.add_token_types(vocabulary["token_types"])
    writer.add_token_merges(vocabulary["merges"])
    for add, value in ((writer.add_bos_token_id, config.bos_token_id), (writer.add_eos_token_id, _first(config.eos_token_id)),
                       (writer.add_pad_token_id, config.pad_token_id), (writer.add_unk_token_id, vocabulary["unk_id"])):
        if value is not None:
            add(value)
    writer.add_add_bos_token(False)  # GPT-2 prompts start without a bos token, as hf_ltg's tokenizers encode them


def _first(ids):
    return ids[0] if isinstance(ids, list) else ids


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
