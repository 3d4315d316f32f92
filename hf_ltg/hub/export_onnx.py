"""`export_onnx`: an ONNX Runtime folder from an hf_ltg checkpoint.

A causal LM becomes a graph with the KV cache as inputs and outputs, in the layout ONNX Runtime
GenAI and optimum's ORTModelForCausalLM use:

    inputs   input_ids [batch, seq], attention_mask [batch, past + seq],
             past_key_values.N.key / .value [batch, heads, past, head_dim]
    outputs  logits [batch, seq, vocab], present.N.key / .value [batch, heads, past + seq, head_dim]

The first step passes an empty past (length 0); positions come from the attention mask, so a
left-padded row decodes as it does alone (no `position_ids` input). Classifier and masked-LM heads
become logits-only graphs (input_ids, attention_mask -> logits).

The graph comes from the TorchScript exporter (`torch.onnx.export(dynamo=False)`). It records the
branch each Python-level check takes on the example it traces, which holds padding so that the
general branch is the one recorded. The dynamo exporter also exports the GPT causal LM (given
`Dim(max=context)` bounds on the lengths) but took 110 s for a 2-layer model where this takes 5 s
on torch 2.13. Both see only public ops: the GPT kernels step aside while exporting
(`kernels_ltg_gpt.plain_ops_required`); LTG-BERT and NorBERT4 use none. NorBERT4's sliding
windows are part of the graph (its masks come from token indices, so they hold at any length).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from transformers.cache_utils import DynamicCache

from ..checkpoint import atomic_directory
from ..conversion.common import copy_tokenizer_files
from .sources import resolve_source

ONNX_TASKS = {
    "causal-lm": "AutoModelForCausalLM",
    "masked-lm": "AutoModelForMaskedLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
}
# The head a checkpoint's saved architecture stands for.
ARCHITECTURE_SUFFIXES = {
    "ForCausalLM": "causal-lm",
    "ForMaskedLM": "masked-lm",
    "ForSequenceClassification": "sequence-classification",
    "ForTokenClassification": "token-classification",
}
OPSET = 17
ONNX_FILE = "model.onnx"


def export_onnx(src, out, *, task: str | None = None, merge: bool = False, tokenizer=None, id2label=None) -> Path:
    """Write `out`: model.onnx, config.json, the tokenizer files and, for a causal LM,
    generation_config.json and genai_config.json (ONNX Runtime GenAI; not where keys and values
    have heads of different widths, which its decoder cannot describe).

    `task` is one of `ONNX_TASKS`; by default the head the checkpoint was saved with (an LTG-BERT
    masked LM can be exported as `causal-lm`, its GPT-BERT style causal head, on the same weights).
    `src`, `merge`, `tokenizer` and `id2label` are as for `export_checkpoint`. Returns `out`.
    """
    with source_model_folder(src, merge=merge, tokenizer=tokenizer, id2label=id2label) as (model_dir, tokenizer_dir):
        model = load_for_export(model_dir, task)
        task = task or default_task(model.config)
        out = Path(out)
        with atomic_directory(out) as tmp, torch.no_grad():
            if task == "causal-lm":
                _export_causal_lm(model, tmp / ONNX_FILE)
                if len(set(cache_head_sizes(model.config))) == 1:  # GenAI's decoder has one head size
                    _write_genai_config(model.config, tmp)
                model.generation_config.save_pretrained(tmp)
            else:
                _export_logits(model, tmp / ONNX_FILE, padding_side="left" if _is_decoder(model) else "right")
            model.config.save_pretrained(tmp)
            copy_tokenizer_files(tokenizer_dir, tmp)
    return out


@contextlib.contextmanager
def source_model_folder(src, *, merge: bool = False, tokenizer=None, id2label=None):
    """Yield (checkpoint folder, tokenizer folder) for `src`: a checkpoint, a Trainer output (its final
    model, else its latest checkpoint) or, with `merge`, a peft adapter merged into a temporary folder."""
    from .export import _require_merge, _tokenizer_folder, export_checkpoint

    source = resolve_source(src)
    tokenizer_dir = _tokenizer_folder(source, tokenizer)
    if source.adapter is None:
        yield source.model_dir, tokenizer_dir
        return
    if not merge:
        _require_merge(source)
    with tempfile.TemporaryDirectory(prefix="hf-ltg-merged-") as work:
        merged = Path(work) / "merged"
        export_checkpoint(src, merged, merge=True, tokenizer=tokenizer, id2label=id2label)
        yield merged, tokenizer_dir


def default_task(config) -> str:
    for architecture in config.architectures or []:
        for suffix, task in ARCHITECTURE_SUFFIXES.items():
            if architecture.endswith(suffix):
                return task
    raise ValueError(
        f"The checkpoint's architectures {config.architectures} name no head ONNX export supports; "
        f"pick one with --task ({', '.join(ONNX_TASKS)})."
    )


def load_for_export(model_dir, task: str | None):
    """The hf_ltg model of `model_dir` for `task`, in float32 with eager attention and dropout off."""
    from transformers import AutoConfig

    from .. import registration
    from .export import _model_class, load_trained

    if task is not None and task not in ONNX_TASKS:
        raise ValueError(f"Unknown ONNX task {task!r}; choose one of {', '.join(ONNX_TASKS)}.")
    registration.register_all()
    config = AutoConfig.from_pretrained(model_dir)
    if getattr(config, "quantization", None):
        raise ValueError(
            f"{model_dir} holds int8 weights (hf-ltg quantize); export the float checkpoint it was made from "
            "(ONNX Runtime quantizes on its own: onnxruntime.quantization.quantize_dynamic)."
        )
    task = task or default_task(config)
    try:
        model_class = _model_class(config, ONNX_TASKS[task])
    except KeyError:
        raise ValueError(f"The {config.model_type} family has no {task} head; choose one of "
                         f"{', '.join(t for t, a in ONNX_TASKS.items() if _has_head(config, a))}.") from None
    # eager attention: the plainest graph; masks and positions are computed inside the model
    return load_trained(model_class, model_dir, dtype=torch.float32, attn_implementation="eager").eval()


def _has_head(config, auto_name: str) -> bool:
    from ..registration import _families

    return any(c.model_type == config.model_type and auto_name in classes for c, classes, _ in _families())


def _is_decoder(model) -> bool:
    return model.config.model_type == "ltg_gpt"


def cache_names(num_layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    return past, present


def cache_head_sizes(config) -> tuple[int, int]:
    """(key, value) width per head of the cache: NorBERT4 names both (`query_key_head_size`,
    `value_head_size`, which need not be equal or divide `hidden_size`); the others split `hidden_size`."""
    default = config.hidden_size // config.num_attention_heads
    return (getattr(config, "query_key_head_size", default), getattr(config, "value_head_size", default))


def _example_batch(config, length: int, padding_side: str):
    """Two rows of `length` token ids, the first with two padding tokens. The tracer records the
    branch each Python-level check takes on this example: with padding that is the general one,
    exact for unpadded rows too (an all-ones mask would let LTG-BERT's encoder drop the mask from
    the graph, and padded rows would then attend to their padding)."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, config.vocab_size, (2, length), generator=generator)
    attention_mask = torch.ones(2, length, dtype=torch.long)
    attention_mask[0, slice(None, 2) if padding_side == "left" else slice(-2, None)] = 0
    return input_ids, attention_mask


class CausalLMWithFlatCache(torch.nn.Module):
    """What the exporter traces: flat past tensors in, logits and flat present tensors out, the
    model's own KV cache (a DynamicCache) in between."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, *past):
        cache = DynamicCache(config=self.model.config)
        for index, layer in enumerate(cache.layers):
            # set, not `update`: update would concatenate onto an untyped empty tensor
            layer.lazy_initialization(past[2 * index], past[2 * index + 1])
            layer.keys, layer.values = past[2 * index], past[2 * index + 1]
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache,
                            use_cache=True, return_dict=True).logits
        return (logits, *(t for layer in cache.layers for t in (layer.keys, layer.values)))


class LogitsOnly(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).logits


def _export_causal_lm(model, path: Path) -> None:
    config = model.config
    heads = config.num_attention_heads
    key_dim, value_dim = cache_head_sizes(config)
    past_names, present_names = cache_names(config.num_hidden_layers)
    # past 3 + new 4: a non-empty past and more than one new token, so that no branch on
    # "prefill" or "one token" is recorded (the graph then serves an empty past and single steps)
    input_ids, attention_mask = _example_batch(config, 7, "left")
    input_ids = input_ids[:, 3:]
    generator = torch.Generator().manual_seed(1)
    past = [torch.randn(2, heads, 3, key_dim if name.endswith(".key") else value_dim, generator=generator)
            for name in past_names]
    batch, sequence, past_length, total = "batch_size", "sequence_length", "past_sequence_length", "total_sequence_length"
    dynamic_axes = {"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: total},
                    "logits": {0: batch, 1: sequence}}
    dynamic_axes.update({name: {0: batch, 2: past_length} for name in past_names})
    dynamic_axes.update({name: {0: batch, 2: total} for name in present_names})
    _export(CausalLMWithFlatCache(model), (input_ids, attention_mask, *past), path,
            ["input_ids", "attention_mask", *past_names], ["logits", *present_names], dynamic_axes)


def _export_logits(model, path: Path, padding_side: str) -> None:
    input_ids, attention_mask = _example_batch(model.config, 6, padding_side)
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "sequence_length"}, "logits": {0: "batch_size"}}
    if not type(model).__name__.endswith("ForSequenceClassification"):  # per-token logits
        axes["logits"][1] = "sequence_length"
    _export(LogitsOnly(model).eval(), (input_ids, attention_mask), path, ["input_ids", "attention_mask"],
            ["logits"], axes)


def _export(module, args, path: Path, input_names, output_names, dynamic_axes) -> None:
    work = path.parent / ".onnx-export"
    work.mkdir()
    with warnings.catch_warnings():
        # the tracer warns about every Python-level check it records as a constant: the example batch
        # is chosen so that those checks take the general branch
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(work / path.name), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    if len(list(work.iterdir())) == 1:
        os.replace(work / path.name, path)
    else:  # above 2 GB the exporter writes every weight to a file of its own: gather them in one
        import onnx

        onnx.save_model(onnx.load(str(work / path.name)), str(path), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=path.name + ".data")
    shutil.rmtree(work)


def _write_genai_config(config, folder: Path) -> None:
    """ONNX Runtime GenAI's description of the graph (type "decoder": its generic decoder-only model)."""
    eos = config.eos_token_id
    genai = {
        "model": {
            "bos_token_id": config.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": config.pad_token_id if config.pad_token_id is not None else eos,
            "context_length": config.max_position_embeddings,
            "vocab_size": config.vocab_size,
            "type": "decoder",
            "decoder": {
                "filename": ONNX_FILE,
                "head_size": cache_head_sizes(config)[0],
                "hidden_size": config.hidden_size,
                "num_attention_heads": config.num_attention_heads,
                "num_key_value_heads": config.num_attention_heads,
                "num_hidden_layers": config.num_hidden_layers,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "max_length": config.max_position_embeddings, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": False},
    }
    (folder / "genai_config.json").write_text(json.dumps(genai, indent=2) + "\n")
