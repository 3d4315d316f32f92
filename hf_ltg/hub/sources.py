"""Finding the model in what users point `hf-ltg export` at, and what the Trainer recorded.

A source is an hf_ltg checkpoint folder, a Trainer output folder (its final model, or else its
latest `checkpoint-N`), or a peft adapter folder (merged into its base model on request).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
# Files the Trainer (`trainer_state.json`, `save_metrics`) and hf_ltg's training commands write.
RESULT_FILES = ("all_results.json", "train_results.json", "eval_results.json")
LOG_HISTORY_FILES = ("log_history.json", "training_log.json")


@dataclass
class Source:
    """Where the model, its tokenizer and its training record are."""

    model_dir: Path  # a checkpoint folder, or the adapter folder when `adapter` is set
    adapter: dict | None = None  # adapter_config.json of a peft adapter
    base_dir: Path | None = None  # the adapter's base model folder
    search_dirs: list[Path] = field(default_factory=list)  # where to look for tokenizer and records
    note: str = ""

    def record_dirs(self, training_dir=None) -> list[Path]:
        """Where the training record may be: the source folders, then `training_dir` (a Trainer
        output folder, e.g. the --work-dir of hf-ltg's training commands) and its checkpoints."""
        if training_dir is None:
            return self.search_dirs
        training_dir = Path(training_dir)
        if not training_dir.is_dir():
            raise FileNotFoundError(f"--training-dir {training_dir} is not a folder; give the Trainer output folder.")
        return [*self.search_dirs, training_dir, *_checkpoint_dirs(training_dir)[::-1]]


def resolve_source(src) -> Source:
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder; give a checkpoint, Trainer output or peft adapter folder.")
    if _is_adapter(src):
        return _adapter_source(src, [src])
    if _is_checkpoint(src):
        return Source(src, search_dirs=[src, *_checkpoint_dirs(src)[::-1]], note="the final model")
    checkpoints = _checkpoint_dirs(src)
    if checkpoints:
        latest = checkpoints[-1]
        dirs = [latest, src, *checkpoints[-2::-1]]
        if _is_adapter(latest):
            return _adapter_source(latest, dirs)
        if _is_checkpoint(latest):
            return Source(latest, search_dirs=dirs, note=f"the latest Trainer checkpoint, {latest.name}")
    found = sorted(p.name for p in src.iterdir())
    raise FileNotFoundError(
        f"{src} holds no model: expected config.json with {' or '.join(WEIGHT_FILES)}, a peft "
        f"adapter_config.json, or Trainer checkpoint-N folders; it contains {found or 'nothing'}."
    )


def _is_checkpoint(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any((folder / n).is_file() for n in WEIGHT_FILES)


def _is_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file()


def _checkpoint_dirs(folder: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := CHECKPOINT_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def _adapter_source(folder: Path, dirs: list[Path]) -> Source:
    adapter = json.loads((folder / "adapter_config.json").read_text())
    base = adapter.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{folder}/adapter_config.json has no base_model_name_or_path; cannot find the base model.")
    base_dir = resolve_base_model(base, folder)
    return Source(folder, adapter=adapter, base_dir=base_dir, search_dirs=[*dirs, base_dir],
                  note=f"a peft adapter on {base}")


def resolve_base_model(base: str, adapter_dir: Path) -> Path:
    """The base model folder of an adapter: as written, or relative to the adapter folder."""
    for candidate in (Path(base), adapter_dir / base):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"The adapter's base model {base!r} is not a local folder (tried {base} and {adapter_dir / base}); "
        "hf-ltg works offline: download or copy the base checkpoint and edit base_model_name_or_path."
    )


# ---------------------------------------------------------------------------------------------
# Training record


@dataclass
class TrainingRecord:
    """The figures the Trainer logged, for the model card; every field may be missing."""

    global_step: int | None = None
    max_steps: int | None = None
    epoch: float | None = None
    train_loss: float | None = None  # the last logged training loss
    eval_loss: float | None = None
    eval_perplexity: float | None = None
    eval_accuracy: float | None = None
    eval_macro_f1: float | None = None
    tokens_seen: int | None = None
    runtime_s: float | None = None
    evaluations: list[dict] = field(default_factory=list)  # (step, eval_loss, ...) rows
    source_files: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.global_step is None and self.train_loss is None and self.eval_loss is None


def read_training_record(dirs: list[Path], causal_lm: bool) -> TrainingRecord:
    """Merge trainer_state.json (the one with most steps), log-history and results files."""
    record = TrainingRecord()
    history, state_file = [], None
    for folder in dirs:
        path = folder / "trainer_state.json"
        state = _read_json(path)
        if isinstance(state, dict) and (state_file is None or (state.get("global_step") or 0) > (record.global_step or 0)):
            record.global_step, record.max_steps = state.get("global_step"), state.get("max_steps")
            record.epoch = state.get("epoch")
            history, state_file = state.get("log_history") or [], path
    if state_file is not None:
        record.source_files.append(str(state_file))
    for folder in dirs:
        for name in LOG_HISTORY_FILES:
            logged = _read_json(folder / name)
            if isinstance(logged, list) and len(logged) > len(history):
                history = logged
                record.source_files.append(str(folder / name))
    _apply_history(record, history)
    for folder in dirs[:2]:
        for name in RESULT_FILES:
            results = _read_json(folder / name)
            if isinstance(results, dict):
                _apply_results(record, results)
                record.source_files.append(str(folder / name))
    if record.eval_perplexity is None and causal_lm and record.eval_loss is not None:
        record.eval_perplexity = math.exp(min(record.eval_loss, 50.0))
    return record


def _apply_history(record: TrainingRecord, history: list[dict]) -> None:
    for entry in history:
        if not isinstance(entry, dict):
            continue
        if "loss" in entry:
            record.train_loss = entry["loss"]
        if "train_runtime" in entry:
            record.runtime_s = entry["train_runtime"]
        if "num_input_tokens_seen" in entry:
            record.tokens_seen = entry["num_input_tokens_seen"]
        if "step" in entry and record.global_step is None:
            record.global_step = entry["step"]
        if "eval_loss" in entry:
            _apply_results(record, entry)
            row = {k: entry[k] for k in ("step", "epoch", "eval_loss", "eval_perplexity", "eval_accuracy",
                                         "eval_macro_f1") if k in entry}
            record.evaluations.append(row)


def _apply_results(record: TrainingRecord, results: dict) -> None:
    for key, attribute in (("eval_loss", "eval_loss"), ("eval_perplexity", "eval_perplexity"),
                           ("eval_accuracy", "eval_accuracy"), ("eval_macro_f1", "eval_macro_f1"),
                           ("train_runtime", "runtime_s"), ("num_input_tokens_seen", "tokens_seen")):
        if results.get(key) is not None:
            setattr(record, attribute, results[key])
    if results.get("train_loss") is not None and record.train_loss is None:
        record.train_loss = results["train_loss"]


def _read_json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
