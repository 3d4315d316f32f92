"""`export_checkpoint`: a complete Hub-ready folder from any hf_ltg checkpoint, Trainer output or
peft adapter; `export_native`: a stock `gpt2` folder (no remote code) from an LTG GPT checkpoint."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

from ..checkpoint import atomic_directory
from ..conversion.common import TOKENIZER_FILES, copy_tokenizer_files
from .model_card import CardInfo, render_model_card
from .sources import Source, read_training_record, resolve_source

DEFAULT_MAX_SHARD_SIZE = "2GB"
FIGURES = ("training_curves.png",)

# peft task types -> the Auto class whose head the adapter was trained with
PEFT_TASKS = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}


def export_checkpoint(src, out, *, merge: bool = False, max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
                      tokenizer=None, license: str | None = None, base_model: str | None = None,
                      datasets: list[str] | tuple = (), language: list[str] | tuple = (),
                      name: str | None = None, training_dir=None, id2label=None) -> Path:
    """Write `out`: safetensors weights (sharded above `max_shard_size`, with an index), config with
    the family's full auto_map, code, tokenizer, generation config and a model card.

    `src` is an hf_ltg checkpoint, a Trainer output folder (final model, else latest checkpoint-N)
    or a peft adapter folder (needs `merge=True`). `tokenizer` is a folder to take the tokenizer
    from when the source has none; `training_dir` a Trainer output folder to read the training
    record from when it is not beside the model (hf-ltg's training commands keep it in
    --work-dir). A merged classification adapter gets the labels of its head: `id2label` (a
    mapping or a list of names in id order), else those saved with the adapter (labels.json),
    else the base config's when their number matches the head. Returns `out`.
    """
    source = resolve_source(src)
    model = _load_model(source, merge, id2label)
    tokenizer_dir = _tokenizer_folder(source, tokenizer)
    family_map = _family_auto_map(model.config)
    model.config.auto_map = dict(family_map)
    record_dirs = source.record_dirs(training_dir)
    training = read_training_record(record_dirs, causal_lm=type(model).__name__.endswith("ForCausalLM"))
    base_model = base_model or _adapter_base(source)
    out = Path(out)

    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        _set_full_auto_map(tmp, family_map)
        copy_tokenizer_files(tokenizer_dir, tmp)
        if not (tmp / "generation_config.json").is_file() and "AutoModelForCausalLM" in family_map:
            _write_generation_config(model.config, tmp)
        figure = _copy_figure(record_dirs, tmp)
        info = CardInfo(
            name=name or out.resolve().name, architecture=type(model).__name__,
            num_parameters=_count_parameters(model), tokenizer_size=_tokenizer_size(tmp), remote_code=True,
            license=license, base_model=base_model, datasets=list(datasets), language=list(language),
            source_note=_describe(source, Path(src)), figure=figure,
        )
        (tmp / "README.md").write_text(render_model_card(model.config, info, training))
    return out


def export_native(src, out, *, tokenizer=None, license: str | None = None, base_model: str | None = None,
                  datasets: list[str] | tuple = (), language: list[str] | tuple = (), name: str | None = None,
                  merge: bool = False, training_dir=None, id2label=None) -> Path:
    """Write `out` as a stock `gpt2` checkpoint (GPT2LMHeadModel / GPT2ForSequenceClassification /
    GPT2ForTokenClassification) that loads without remote code, with tokenizer and model card.

    Refused, naming the reason, for anything stock GPT-2 cannot express (other families,
    quantized weights, a classifier bias GPT-2's `score` lacks)."""
    from transformers import AutoConfig

    from ..conversion import convert_to_hf_gpt2

    source = resolve_source(src)
    record_dirs = source.record_dirs(training_dir)
    with tempfile.TemporaryDirectory(prefix="hf-ltg-native-") as work:
        model_dir = source.model_dir
        if source.adapter is not None:
            if not merge:
                _require_merge(source)
            model_dir = Path(work) / "merged"
            export_checkpoint(src, model_dir, merge=True, tokenizer=tokenizer, id2label=id2label)
        tokenizer_dir = _tokenizer_folder(source, tokenizer)
        out = Path(out)
        with atomic_directory(out) as tmp:
            convert_to_hf_gpt2(model_dir, tmp)  # replaces tmp with the converted folder
            copy_tokenizer_files(tokenizer_dir, tmp)
            config = AutoConfig.from_pretrained(tmp)
            architecture = config.architectures[0]
            training = read_training_record(record_dirs, causal_lm=architecture.endswith("LMHeadModel"))
            _copy_figure(record_dirs, tmp)
            info = CardInfo(
                name=name or out.resolve().name, architecture=architecture,
                num_parameters=_count_safetensors(tmp), tokenizer_size=_tokenizer_size(tmp), remote_code=False,
                license=license, base_model=base_model or _adapter_base(source), datasets=list(datasets),
                language=list(language), source_note=_describe(source, Path(src)) + ", converted to stock GPT-2",
                figure="training_curves.png" if (tmp / "training_curves.png").is_file() else None,
            )
            (tmp / "README.md").write_text(render_model_card(config, info, training))
    return out


# ---------------------------------------------------------------------------------------------


def _load_model(source: Source, merge: bool, id2label=None):
    from transformers import AutoConfig

    from .. import registration

    registration.register_all()
    if source.adapter is None:
        config = AutoConfig.from_pretrained(source.model_dir)
        model_class = _model_class(config)
        return load_trained(model_class, source.model_dir)
    _require_mergeable(source)
    if not merge:
        _require_merge(source)
    from peft import PeftModel
    from peft.utils import ModulesToSaveWrapper

    base_dir = source.base_dir
    config_dir = source.model_dir if (source.model_dir / "config.json").is_file() else base_dir
    config = AutoConfig.from_pretrained(config_dir)
    auto_name = PEFT_TASKS.get(source.adapter.get("task_type") or "")
    if source.adapter.get("task_type") in ("SEQ_CLS", "TOKEN_CLS"):
        _set_head_labels(config, source.model_dir, id2label)
    elif id2label is not None:
        raise ValueError(f"--id2label names the classes of a classifier, but {source.model_dir} is a "
                         f"{source.adapter.get('task_type')} adapter; drop --id2label.")
    model_class = _model_class(config, auto_name)
    # A classifier's head is new on the base model; the adapter brings it (modules_to_save), so
    # transformers' "newly initialized" report would be wrong here: judged below instead.
    base, missing = _from_pretrained_quietly(model_class, base_dir, config=config)
    peft_model = PeftModel.from_pretrained(base, source.model_dir)
    prefix = "base_model.model."
    from_adapter = [name.removeprefix(prefix) + "." for name, module in peft_model.named_modules()
                    if isinstance(module, ModulesToSaveWrapper)]
    uncovered = [key for key in missing if not key.startswith(tuple(from_adapter))]
    if uncovered:
        raise ValueError(
            f"Neither the base model {base_dir} nor the adapter {source.model_dir} holds {_some(uncovered)}: the "
            f"merged {model_class.__name__} would have a randomly initialised head. Train the adapter with its head "
            "saved (hf-ltg finetune-cls --adapter lora saves it, modules_to_save) and merge that one."
        )
    merged = peft_model.merge_and_unload()
    merged.config.name_or_path = str(base_dir)
    return merged


def _from_pretrained_quietly(model_class, folder, **kwargs):
    """`model_class.from_pretrained(folder)` and the weights it had to initialise (sorted names),
    without transformers' load report: the caller says what the missing weights mean."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        model, info = model_class.from_pretrained(folder, output_loading_info=True, **kwargs)
    finally:
        logging.set_verbosity(level)
    return model, sorted(info.get("missing_keys") or ())


# How to get trained weights for a head a checkpoint lacks, by the head class's suffix.
HEAD_TRAINING_HINTS = {
    "ForSequenceClassification": "train a classifier first (hf-ltg finetune-cls --model {folder} ...) and export "
                                 "its output folder",
    "ForTokenClassification": "fine-tune a token classifier first (AutoModelForTokenClassification with the "
                              "Trainer) and export that checkpoint",
}


def load_trained(model_class, folder, **kwargs):
    """`model_class.from_pretrained(folder, **kwargs)`, refused when the checkpoint lacks weights
    the model needs (a head it was not trained with): an export would write random weights."""
    model, missing = _from_pretrained_quietly(model_class, folder, **kwargs)
    if missing:
        suffix = next((s for s in HEAD_TRAINING_HINTS if model_class.__name__.endswith(s)), None)
        hint = (HEAD_TRAINING_HINTS[suffix].format(folder=folder) if suffix else
                "export the head the checkpoint was saved with (leave out --task), or a checkpoint trained for this one")
        raise ValueError(
            f"{folder} holds no weights for {_some(missing)} of {model_class.__name__}: the export would write "
            f"them randomly initialised, and its outputs would mean nothing; {hint}."
        )
    return model


def _some(names: list[str], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _set_head_labels(config, adapter_dir: Path, id2label=None) -> None:
    """Give the base `config` the labels of the adapter's classification head."""
    from ..adapters import LABELS_FILE

    outputs = _head_outputs(adapter_dir, config.hidden_size)
    saved = json.loads((adapter_dir / LABELS_FILE).read_text()) if (adapter_dir / LABELS_FILE).is_file() else {}
    if id2label is not None:
        names = list(id2label) if isinstance(id2label, (list, tuple)) else [id2label[k] for k in sorted(id2label, key=int)]
        labels = dict(enumerate(names))
    elif saved.get("id2label"):
        labels = {int(k): v for k, v in saved["id2label"].items()}
    elif outputs is not None and outputs != config.num_labels:
        labels = {i: f"LABEL_{i}" for i in range(outputs)}
        print(f"{adapter_dir} does not record its labels ({LABELS_FILE}); the merged head has {outputs} generic ones: "
              "name them with --id2label NAME,NAME,...", flush=True)
    else:
        return
    if outputs is not None and len(labels) != outputs:
        raise ValueError(f"{len(labels)} labels {list(labels.values())} for a head with {outputs} outputs in "
                         f"{adapter_dir}; give --id2label {outputs} names, in id order.")
    config.id2label, config.label2id = labels, {v: k for k, v in labels.items()}
    if saved.get("problem_type"):
        config.problem_type = saved["problem_type"]


def _head_outputs(adapter_dir: Path, hidden_size: int) -> int | None:
    """The number of classes of the head saved whole with the adapter: the output size of its
    weights that are neither LoRA's nor hidden-to-hidden (None when that is not one number)."""
    from safetensors import safe_open

    path = adapter_dir / "adapter_model.safetensors"
    if not path.is_file():
        return None
    with safe_open(path, framework="pt") as handle:
        shapes = [handle.get_slice(key).get_shape() for key in handle.keys() if "lora_" not in key]
    outputs = {shape[0] for shape in shapes if len(shape) == 2 and shape[1] == hidden_size and shape[0] != hidden_size}
    return outputs.pop() if len(outputs) == 1 else None


def _require_mergeable(source: Source) -> None:
    """Prompt learning (prompt tuning, p-tuning, prefix tuning) adds virtual tokens, not weight changes."""
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(source.model_dir)
    if config.is_prompt_learning or config.peft_type == "ADAPTION_PROMPT":
        raise ValueError(
            f"{source.model_dir} is a {config.peft_type} adapter: its virtual tokens are extra inputs, not weight "
            "changes, so it cannot be merged into a full checkpoint. Publish or load the adapter folder as it is "
            "(peft's PeftModel.from_pretrained(base_model, ADAPTER)), or train a LoRA adapter (--adapter lora) to "
            "export merged weights."
        )


def _require_merge(source: Source):
    _require_mergeable(source)
    raise ValueError(
        f"{source.model_dir} is a peft adapter (on {source.adapter.get('base_model_name_or_path')!r}); the Hub folder "
        "must hold full weights: pass --merge to merge the adapter into its base model."
    )


def _model_class(config, auto_name: str | None = None):
    """The hf_ltg class for `config`: the head of `auto_name`, else the saved architecture."""
    from ..registration import _families

    for config_class, classes, _ in _families():
        if config_class.model_type != config.model_type:
            continue
        if auto_name:
            return classes[auto_name]
        by_name = {cls.__name__: cls for cls in classes.values()}
        for architecture in config.architectures or []:
            if architecture in by_name:
                return by_name[architecture]
        return classes["AutoModel"]
    raise ValueError(
        f"The checkpoint's model_type is {config.model_type!r}; hf-ltg export packages hf_ltg models "
        f"({', '.join(c.model_type for c, _, _ in _families())}). Convert it first (hf-ltg convert --from ...)."
    )


def _family_auto_map(config) -> dict:
    """The family's complete auto_map (its config module's AUTO_MAP, which is also the default)."""
    module = sys.modules[type(config).__module__]
    family_map = getattr(module, "AUTO_MAP", None) or type(config)().auto_map
    return dict(family_map)


def _set_full_auto_map(folder: Path, family_map: dict) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    if config.get("auto_map") != family_map:
        config["auto_map"] = family_map
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _tokenizer_folder(source: Source, tokenizer) -> Path:
    candidates = [Path(tokenizer)] if tokenizer else source.search_dirs
    for folder in candidates:
        if any((folder / n).is_file() for n in ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model")):
            return folder
    where = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"No tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...) in {where}; a Hub folder needs its tokenizer: "
        "pass --tokenizer FOLDER (a folder written by tokenizer.save_pretrained)."
    )


def _write_generation_config(config, folder: Path) -> None:
    from transformers import GenerationConfig

    GenerationConfig(bos_token_id=getattr(config, "bos_token_id", None),
                     eos_token_id=getattr(config, "eos_token_id", None),
                     pad_token_id=getattr(config, "pad_token_id", None)).save_pretrained(folder)


def _copy_figure(dirs: list[Path], folder: Path) -> str | None:
    for directory in dirs:
        for name in FIGURES:
            if (directory / name).is_file():
                shutil.copy2(directory / name, folder / name)
                return name
    return None


def _adapter_base(source: Source) -> str | None:
    if source.adapter is None:
        return None
    base = source.adapter.get("base_model_name_or_path")
    # Only a Hub id is valid metadata; a local path is described in the text instead.
    return base if base and not os.path.isabs(base) and not Path(base).exists() and base.count("/") == 1 else None


def _describe(source: Source, src: Path) -> str:
    return f"`{src.name}` ({source.note})" if source.note else f"`{src.name}`"


def _count_parameters(model) -> int:
    """Parameters, plus the weights that quantized layers keep as integer buffers."""
    quantized = sum(b.numel() for name, b in model.named_buffers()
                    if name.endswith(".weight") and not b.is_floating_point())
    return sum(p.numel() for p in model.parameters()) + quantized


def _count_safetensors(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in folder.glob("*.safetensors"):
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():
                total += math.prod(handle.get_slice(key).get_shape())
    return total


def _tokenizer_size(folder: Path) -> int | None:
    try:
        from transformers import AutoTokenizer

        return len(AutoTokenizer.from_pretrained(folder))
    except Exception:  # noqa: BLE001 - the doctor reports tokenizer problems; the card just omits the size
        return None
