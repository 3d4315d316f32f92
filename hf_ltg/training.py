"""`LtgTrainer`, a `transformers.Trainer` for language-model work, and evaluation helpers.

The Trainer subclass only adds to the stock loop (metrics, samples, freezing, plots): loss
computation, gradient accumulation, resuming and distributed training are the stock Trainer's.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState

from .data.core import IGNORE_INDEX
from .progress import progress_bar, progress_enabled
from .scoring import causal_prompt

FREEZE_PRESETS = ("none", "head", "last_block", "last_n_blocks:N", "all")
HEAD_NAMES = ("lm_head", "score", "classifier")


# ---------------------------------------------------------------------------------------------
# Training arguments


# FSDP2 through accelerate's plugin: one unit per block (the model's `_no_split_modules`), the root
# unit holds the rest (embeddings, final norm, tied head); Trainer checkpoints hold the full weights.
FSDP_CONFIG = {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "state_dict_type": "FULL_STATE_DICT",
               "reshard_after_forward": True}


def training_arguments(output_dir: str | os.PathLike, fsdp: bool = False, **overrides) -> TrainingArguments:
    """`TrainingArguments` with this project's defaults: CPU + gloo when there is no GPU, tokens
    counted, no external loggers, checkpoints as safetensors. `fsdp=True` shards parameters,
    gradients and optimizer state across the processes (`FSDP_CONFIG`; `LtgTrainer` also runs it
    on CPU processes, which accelerate alone would train with DDP)."""
    cuda = torch.cuda.is_available()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1  # launched by torchrun
    defaults = dict(
        output_dir=str(output_dir),
        use_cpu=not cuda,
        # accelerate treats any backend as a request for a process group, so only under torchrun.
        ddp_backend=("nccl" if cuda else "gloo") if distributed else None,
        ddp_find_unused_parameters=False,
        # The Trainer copies this into model.config, which every saved checkpoint then carries; the
        # models build no cache while training anyway, and a released checkpoint should cache at inference.
        use_cache=True,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        logging_strategy="steps",
        logging_steps=10,
        eval_strategy="steps",
        save_strategy="steps",
        save_total_limit=2,
        dataloader_num_workers=0,
        disable_tqdm=not progress_enabled(),  # bars on a terminal only, as every hf_ltg bar (hf_ltg.progress)
    )
    if fsdp:
        defaults.update(fsdp=True, fsdp_config=dict(FSDP_CONFIG))
    defaults.update(overrides)
    return TrainingArguments(**defaults)


# ---------------------------------------------------------------------------------------------
# Freezing


def freeze_layers(model, preset: str | None) -> int:
    """Make only part of `model` trainable; returns the number of trainable parameters.

    Presets (the published fine-tuning ablations): `none`/`all` train everything; `head` only the
    task head; `last_block` the last block, the final norm and the head; `last_n_blocks:N` the last
    N blocks, the final norm and the head. A causal LM's head is tied to the token embedding,
    which therefore stays trainable with it.
    """
    preset = preset or "none"
    if preset in ("none", "all"):
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return sum(p.numel() for p in model.parameters() if p.requires_grad)
    if preset == "head":
        n_blocks = 0
    elif preset == "last_block":
        n_blocks = 1
    elif preset.startswith("last_n_blocks:") and preset.split(":", 1)[1].isdigit():
        n_blocks = int(preset.split(":", 1)[1])
    else:
        raise ValueError(f"Unknown freezing preset {preset!r}; use one of {', '.join(FREEZE_PRESETS)} (N an integer).")

    heads = [getattr(model, name) for name in HEAD_NAMES if isinstance(getattr(model, name, None), torch.nn.Module)]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no head named {' / '.join(HEAD_NAMES)} to keep trainable.")
    blocks = _blocks(model)
    if n_blocks > len(blocks):
        raise ValueError(f"Preset {preset!r} asks for {n_blocks} blocks but the model has {len(blocks)}.")
    trainable = list(heads)
    if n_blocks:
        trainable += list(blocks[len(blocks) - n_blocks:])
        final_norm = _final_norm(model)
        if final_norm is not None:
            trainable.append(final_norm)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for module in trainable:
        for parameter in module.parameters():
            parameter.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _blocks(model) -> torch.nn.ModuleList:
    base = model.base_model
    count = getattr(model.config, "num_hidden_layers", None)
    lists = [m for m in base.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == count]
    if not lists:
        raise ValueError(f"Cannot find the {count} blocks of {type(model).__name__} to freeze or unfreeze.")
    return lists[0]


def _final_norm(model):
    base = model.base_model
    for name in ("ln_f", "norm", "final_norm", "final_layer_norm"):
        if isinstance(getattr(base, name, None), torch.nn.Module):
            return getattr(base, name)
    return None


# ---------------------------------------------------------------------------------------------
# Classification metrics, chosen by the problem type. Logits are reduced per batch (class ids,
# probabilities or values), so no logits are kept.

MULTI_LABEL_THRESHOLD = 0.5


def problem_type_of(config, labels) -> str:
    """The problem type a sequence classifier's loss uses: `config.problem_type`, else as
    transformers decides it (one label: regression; integer labels: single-label; else multi-label)."""
    if getattr(config, "problem_type", None):
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    integer = labels.dtype in (torch.long, torch.int) if isinstance(labels, torch.Tensor) else \
        np.issubdtype(np.asarray(labels).dtype, np.integer)
    return "single_label_classification" if integer else "multi_label_classification"


def argmax_logits(logits, labels):
    """`preprocess_logits_for_metrics` of single-label classification: class ids (B,), not logits (B, C)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def _per_class_f1(true_positive, predicted, actual) -> np.ndarray:
    precision = np.divide(true_positive, predicted, out=np.zeros(len(predicted)), where=predicted > 0)
    recall = np.divide(true_positive, actual, out=np.zeros(len(actual)), where=actual > 0)
    return np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(actual)),
                     where=precision + recall > 0)


def _macro_f1(true_positive, predicted, actual) -> float:
    """The mean F1 over the classes that occur in the labels or the predictions."""
    f1 = _per_class_f1(true_positive, predicted, actual)
    occurring = (predicted > 0) | (actual > 0)
    return float(f1[occurring].mean()) if occurring.any() else 0.0


def classification_metrics(eval_prediction) -> dict[str, float]:
    """Accuracy and macro-F1 of predicted class ids (see `argmax_logits`)."""
    predictions = np.asarray(eval_prediction.predictions).reshape(-1)
    labels = np.asarray(eval_prediction.label_ids).reshape(-1)
    keep = labels != IGNORE_INDEX
    predictions, labels = predictions[keep], labels[keep]
    n_classes = int(max(predictions.max(initial=0), labels.max(initial=0))) + 1
    confusion = np.bincount(labels * n_classes + predictions, minlength=n_classes**2).reshape(n_classes, n_classes)
    true_positive = np.diag(confusion).astype(float)
    return {
        "accuracy": float(true_positive.sum() / max(len(labels), 1)),
        "macro_f1": _macro_f1(true_positive, confusion.sum(0), confusion.sum(1)),
    }


def multi_label_metrics(eval_prediction) -> dict[str, float]:
    """Micro- and macro-F1 and exact-match accuracy of label vectors, a label predicted when its
    probability reaches `MULTI_LABEL_THRESHOLD` (predictions are probabilities (N, C))."""
    predicted = np.asarray(eval_prediction.predictions) >= MULTI_LABEL_THRESHOLD
    actual = np.asarray(eval_prediction.label_ids) >= 0.5
    true_positive = (predicted & actual).sum(0).astype(float)
    micro = 2 * true_positive.sum() / max(predicted.sum() + actual.sum(), 1)
    return {
        "micro_f1": float(micro),
        "macro_f1": _macro_f1(true_positive, predicted.sum(0), actual.sum(0)),
        "exact_match": float((predicted == actual).all(1).mean()),
    }


def regression_metrics(eval_prediction) -> dict[str, float]:
    """Mean squared and mean absolute error of predicted values."""
    predictions = np.asarray(eval_prediction.predictions, dtype=np.float64).reshape(-1)
    labels = np.asarray(eval_prediction.label_ids, dtype=np.float64).reshape(-1)
    return {"mse": float(np.mean((predictions - labels) ** 2)), "mae": float(np.mean(np.abs(predictions - labels)))}


class SequenceClassificationMetrics:
    """`preprocess_logits_for_metrics` and `compute_metrics` of a sequence classifier, by the
    problem type of its loss (`problem_type_of`): accuracy and macro-F1 of single-label
    classification, micro/macro-F1 of multi-label classification, MSE/MAE of regression."""

    def __init__(self, config):
        self.config = config
        self.problem_type = None  # decided on the first batch, as the model's loss decides it

    def preprocess(self, logits, labels):
        if isinstance(logits, tuple):
            logits = logits[0]
        self.problem_type = problem_type_of(self.config, labels)
        if self.problem_type == "regression":
            return logits.squeeze(-1) if logits.shape[-1] == 1 else logits
        if self.problem_type == "multi_label_classification":
            return torch.sigmoid(logits.float())
        return logits.argmax(dim=-1)

    def __call__(self, eval_prediction) -> dict[str, float]:
        problem_type = self.problem_type or problem_type_of(self.config, eval_prediction.label_ids)
        if problem_type == "regression":
            return regression_metrics(eval_prediction)
        if problem_type == "multi_label_classification":
            return multi_label_metrics(eval_prediction)
        return classification_metrics(eval_prediction)


# ---------------------------------------------------------------------------------------------
# The Trainer


def _is_causal_lm(model) -> bool:
    model = getattr(model, "base_model", model) if type(model).__name__.startswith("Peft") else model
    return hasattr(model, "generate") and callable(getattr(model, "get_output_embeddings", None)) and \
        model.get_output_embeddings() is not None


def _is_sequence_classifier(model) -> bool:
    return "ForSequenceClassification" in type(model).__name__ or any(
        "ForSequenceClassification" in type(m).__name__ for m in model.modules()
    )


class TimeLimitCallback(TrainerCallback, ExportableState):
    """Keeps training within `seconds` of wall time (single process only: ranks would disagree).

    It measures the time per step over steps `probe_steps + 1 .. 2 * probe_steps` (the first
    steps are slower: allocation, warm-up) and projects the run's length. If the run would overrun,
    it is shortened to the steps that fit and a cosine learning-rate schedule is re-fitted to that
    length, so a slow (or busy) machine trains for fewer steps but still anneals. A hard stop at
    `seconds` remains the safety net. The last step is saved, so `--resume` can continue; the
    fitted length is saved with each checkpoint (`state()`, in trainer_state.json), and a resumed
    run keeps it and its schedule.
    """

    def __init__(self, seconds: float, probe_steps: int = 10, clock=time.monotonic):
        self.seconds, self.probe_steps, self.clock = seconds, probe_steps, clock
        self.start = self.start_step = self.stop_at = self.probe_time = None
        self.fitted_steps = None

    def state(self) -> dict:
        return {"args": {"seconds": self.seconds, "probe_steps": self.probe_steps},
                "attributes": {"fitted_steps": self.fitted_steps}}

    def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
        self.start, self.start_step, self.stop_at = self.clock(), state.global_step, None
        saved = state.stateful_callbacks.get(type(self).__name__) if state.global_step > 0 else None
        fitted = (saved or {}).get("attributes", {}).get("fitted_steps") if isinstance(saved, dict) else None
        if fitted:  # resuming a run that was fitted to its budget: continue its schedule
            self._fit(args, lr_scheduler, fitted)

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        if self.start is None:
            return control
        elapsed, done = self.clock() - self.start, state.global_step - self.start_step
        if done == self.probe_steps:
            self.probe_time = elapsed
        if self.stop_at is None and done == 2 * self.probe_steps:
            per_step = (elapsed - self.probe_time) / self.probe_steps
            remaining = state.max_steps - state.global_step
            budget = self.seconds * 0.97 - elapsed  # a little slack for evaluation and saving
            if remaining * per_step > budget:
                self._fit(args, lr_scheduler, state.global_step + max(1, int(budget / per_step)))
        if (self.stop_at is not None and state.global_step >= self.stop_at) or elapsed > self.seconds:
            control.should_training_stop = True
            control.should_save = True
        return control

    def _fit(self, args, lr_scheduler, steps: int) -> None:
        self.stop_at = self.fitted_steps = steps
        if args.lr_scheduler_type == "cosine":
            _refit_cosine_schedule(lr_scheduler, args.get_warmup_steps(steps), steps)


def _refit_cosine_schedule(lr_scheduler, warmup_steps: int, total_steps: int) -> None:
    scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate wraps it
    if not hasattr(scheduler, "lr_lambdas"):
        return

    def cosine(step):
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    scheduler.lr_lambdas = [cosine] * len(scheduler.lr_lambdas)


class LtgTrainer(Trainer):
    """A `Trainer` that adds, without changing the training step:

    - `eval_perplexity` (exp of the eval loss) for causal language models;
    - for sequence classification, unless `compute_metrics` is given, metrics by the problem type
      (`SequenceClassificationMetrics`): `eval_accuracy` and `eval_macro_f1` (single-label),
      `eval_micro_f1`, `eval_macro_f1` and `eval_exact_match` (multi-label), `eval_mse` and `eval_mae`
      (regression); no logits are kept in memory;
    - a few sample generations from `sample_prompts` after each evaluation of a causal LM
      (printed, and kept in `state.log_history` under `samples`);
    - layer freezing presets (`freeze=`, see `freeze_layers`);
    - tokens seen and tokens/s in the logs (`include_num_input_tokens_seen` is switched on);
    - loss (and accuracy) curves written to `output_dir/training_curves.png` after `train`;
    - FSDP on CPU processes too (see `training_arguments`), and `trained_model()`, the model to
      evaluate or save once training is done, with the full weights under FSDP.
    """

    def __init__(self, *args, freeze: str | None = None, sample_prompts: Sequence[str] | None = None,
                 sample_max_new_tokens: int = 40, plot: bool = True, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        if model is not None and freeze:
            freeze_layers(model, freeze)
        if model is not None and _is_sequence_classifier(model) and kwargs.get("compute_metrics") is None:
            metrics = SequenceClassificationMetrics(model.config)
            kwargs["compute_metrics"] = metrics
            kwargs.setdefault("preprocess_logits_for_metrics", metrics.preprocess)
        super().__init__(*args, **kwargs)
        if self.args.include_num_input_tokens_seen in ("no", False):
            self.args.include_num_input_tokens_seen = "non_padding"
        if _is_sequence_classifier(self.model):
            # The classification loss is a per-batch mean that ignores `num_items_in_batch`, although
            # forward takes **kwargs; without this, gradient accumulation and DDP would rescale it.
            self.model_accepts_loss_kwargs = False
        self.sample_prompts = list(sample_prompts or [])
        self.sample_max_new_tokens = sample_max_new_tokens
        self.plot = plot
        self._full_model, self._full_model_step = None, None

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state
        if self.args.fsdp_plugin_args is None or self.is_fsdp_enabled or \
                state.distributed_type != DistributedType.MULTI_CPU:
            return
        # accelerate attaches its FSDP plugin on accelerators only and would train CPU processes with
        # DDP; FSDP2 runs on CPU with gloo, so the plugin is attached as accelerate does on a GPU.
        plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
        if state.mixed_precision != "no":
            plugin.set_mixed_precision(state.mixed_precision)
        state.fsdp_plugin = plugin
        state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.is_fsdp_enabled = True

    def trained_model(self):
        """The model without DDP/FSDP wrappers, to evaluate or save on the main process.

        Under FSDP each process holds shards of the weights, so every process must call this: the
        main process gets a plain copy of the model with the gathered weights, the others None.
        """
        model = self.accelerator.unwrap_model(self.model)
        if not self.is_fsdp_enabled:
            return model
        if self._full_model_step != self.state.global_step:
            state_dict = self.accelerator.get_state_dict(self.model)  # collective; full tensors on the main process
            self._full_model = _plain_copy(model, state_dict).to(self.args.device) if self.is_world_process_zero() \
                else None
            self._full_model_step = self.state.global_step
        return self._full_model

    def _issue_warnings_after_load(self, load_result):
        # A checkpoint holds tied weights once (safetensors stores no shared tensors), so a resumed run
        # would warn that the twin (LTG-BERT's lm_head.decoder.weight) is missing, although loading
        # the other name filled the one parameter both names share.
        parameters = dict(self.model.named_parameters(remove_duplicate=False))
        missing = set(load_result.missing_keys)
        loaded = {id(p) for name, p in parameters.items() if name not in missing}
        really_missing = [k for k in load_result.missing_keys if k not in parameters or id(parameters[k]) not in loaded]
        if hasattr(load_result, "_replace"):
            load_result = load_result._replace(missing_keys=really_missing)
        super()._issue_warnings_after_load(load_result)

    def evaluation_loop(self, *args, **kwargs):
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        loss = output.metrics.get(f"{prefix}_loss")
        if loss is not None and _is_causal_lm(self.model):
            output.metrics[f"{prefix}_perplexity"] = math.exp(min(loss, 50.0))
        return output

    def evaluate(self, *args, **kwargs):
        metrics = super().evaluate(*args, **kwargs)
        # Under FSDP every forward gathers weights from all processes, so all generate (the same tokens).
        if self.sample_prompts and _is_causal_lm(self.model) and (self.is_world_process_zero() or self.is_fsdp_enabled):
            samples = [
                generate_text(self.model, self.processing_class, prompt, max_new_tokens=self.sample_max_new_tokens,
                              seed=self.args.seed)
                for prompt in self.sample_prompts
            ]
            self.state.log_history.append({"samples": samples, "step": self.state.global_step})
            for prompt, sample in zip(self.sample_prompts, samples if self.is_world_process_zero() else []):
                shown = prompt if len(prompt) <= 60 else "..." + prompt[-57:]
                _write(f"[step {self.state.global_step}] sample: {shown!r} -> {sample!r}")
        return metrics

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None):
        if not (self.is_fsdp_enabled and self.args.should_save and state_dict is not None):
            return super()._save(output_dir, state_dict)
        # FSDP2 swaps the model's class for a subclass defined in torch, whose source file save_pretrained
        # would copy as the model's code: a plain copy of the model writes the checkpoint instead (from
        # its own state dict, where the tied weights are one tensor, saved once).
        sharded = self.model
        self.model = _plain_copy(self.accelerator.unwrap_model(sharded), state_dict)
        try:
            super()._save(output_dir)
        finally:
            self.model = sharded

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            from .adapters import save_head_labels

            save_head_labels(self.accelerator.unwrap_model(self.model), output_dir or self.args.output_dir)

    def train(self, *args, **kwargs):
        result = super().train(*args, **kwargs)
        if self.plot and self.is_world_process_zero():
            plot_training_curves(self.state.log_history, Path(self.args.output_dir) / "training_curves.png")
        return result

    # transformers writes checkpoint-N in place, so a run killed meanwhile would leave a partial folder
    # that --resume takes: each is written in `INCOMPLETE_CHECKPOINTS` and renamed once complete.
    _checkpoint_run_dir = None

    def _get_output_dir(self, trial) -> str:
        return str(self._checkpoint_run_dir) if self._checkpoint_run_dir else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(super()._get_output_dir(trial))
        staging = run_dir / INCOMPLETE_CHECKPOINTS
        name = f"checkpoint-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)  # what a killed run left half-written
        self.accelerator.wait_for_everyone()
        self._checkpoint_run_dir = staging
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._checkpoint_run_dir = None
        self.accelerator.wait_for_everyone()  # every rank's RNG state is written
        if self.args.should_save:
            best = self.state.best_model_checkpoint
            if best and Path(best).parent == staging:
                self.state.best_model_checkpoint = str(run_dir / Path(best).name)
                self.state.save_to_json(str(staging / name / "trainer_state.json"))
            _replace_folder(staging / name, run_dir / name, staging)
            _rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, staging)
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()


def _plain_copy(model, state_dict: dict):
    """A new instance of `model`'s class (FSDP2 makes a subclass of it) holding the tensors of `state_dict`."""
    from torch.distributed.fsdp import FSDPModule

    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        from contextlib import nullcontext as no_init_weights
    model_class = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    with no_init_weights():  # every weight comes from `state_dict`
        plain = model_class(copy.deepcopy(model.config))
    plain.load_state_dict(state_dict, assign=True)
    plain.tie_weights()  # assigning gave the tied weights a tensor each
    if getattr(model, "generation_config", None) is not None:  # a model that generates
        plain.generation_config = copy.deepcopy(model.generation_config)
    return plain.train(model.training)


# ---------------------------------------------------------------------------------------------
# Checkpoints of the work folder

INCOMPLETE_CHECKPOINTS = ".incomplete"  # inside the work folder: a checkpoint being written or deleted


def checkpoints_by_step(folder: str | os.PathLike) -> list[Path]:
    """The `checkpoint-N` folders of a work folder, oldest step first."""
    found = [p for p in Path(folder).glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def checkpoint_problem(folder: str | os.PathLike) -> str | None:
    """Why a Trainer checkpoint folder cannot be resumed from (written in place by another tool or an
    older hf_ltg and cut short, or damaged since), or None."""
    from .checkpoint import DamagedFileError, check_files_readable

    folder = Path(folder)
    if not (folder / "trainer_state.json").is_file():
        return "no trainer_state.json, which the Trainer writes last"
    try:
        check_files_readable(folder)
    except DamagedFileError as error:
        return str(error).split(";")[0]
    return None


def _replace_folder(src: Path, dst: Path, trash: Path) -> None:
    if dst.exists():
        os.replace(dst, trash / f"replaced-{dst.name}")
    os.replace(src, dst)


def _rotate_checkpoints(run_dir: Path, limit: int | None, best: str | None, trash: Path) -> None:
    """transformers' rotation (keep `limit`, the newest and the best), but each folder is renamed into
    `trash` before it is deleted, so that a kill meanwhile leaves no half-deleted checkpoint."""
    checkpoints = checkpoints_by_step(run_dir)
    if not limit or limit <= 0 or len(checkpoints) <= limit:
        return
    protected = {checkpoints[-1].resolve(), *([Path(best).resolve()] if best else [])}
    remaining = len(checkpoints)
    for checkpoint in checkpoints:
        if remaining <= max(limit, len(protected)):
            break
        if checkpoint.resolve() not in protected:
            trash.mkdir(parents=True, exist_ok=True)
            os.replace(checkpoint, trash / f"deleted-{checkpoint.name}")
            remaining -= 1
    shutil.rmtree(trash, ignore_errors=True)


def _write(line: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(line)


# ---------------------------------------------------------------------------------------------
# Plots


def plot_training_curves(log_history: list[dict], path: str | os.PathLike) -> Path | None:
    """Training/validation loss against steps (and validation accuracy when logged) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        return [(e["step"], e[key]) for e in log_history if key in e and "step" in e]

    train, valid = series("loss"), series("eval_loss")
    accuracy = series("eval_accuracy") or series("eval_masked_accuracy")
    # Hybrid (masked + causal) training logs each objective's loss too: drawn next to the total.
    parts = [(f"{label} loss", series(key)) for key, label in (
        ("masked_loss", "training masked"), ("causal_loss", "training causal"),
        ("eval_masked_loss", "validation masked"), ("eval_causal_loss", "validation causal"))]
    if not train and not valid:
        return None
    panels = 2 if accuracy else 1
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    loss_axis = axes[0][0]
    if train:
        loss_axis.plot(*zip(*train), label="training loss")
    if valid:
        loss_axis.plot(*zip(*valid), marker="o", label="validation loss")
    for label, points in parts:
        if points:
            loss_axis.plot(*zip(*points), marker="o" if label.startswith("validation") else None,
                           linestyle="--" if label.startswith("validation") else ":", label=label)
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss")
    loss_axis.legend()
    if accuracy:
        label = "validation accuracy" if series("eval_accuracy") else "validation masked accuracy"
        axes[0][1].plot(*zip(*accuracy), marker="o", color="tab:green", label=label)
        axes[0][1].set_xlabel("step")
        axes[0][1].set_ylabel("accuracy")
        axes[0][1].legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def save_log_history(log_history: list[dict], path: str | os.PathLike) -> None:
    Path(path).write_text(json.dumps(log_history, indent=1))


# ---------------------------------------------------------------------------------------------
# Evaluation and generation helpers


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 40, temperature: float = 0.8,
                  top_k: int | None = 40, top_p: float | None = None, seed: int | None = 0,
                  do_sample: bool | None = None) -> str:
    """Continue `prompt`; stops at the end-of-text token. Sampling uses a private RNG state, so
    generating never changes the random stream of training."""
    do_sample = temperature > 0 if do_sample is None else do_sample
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    input_ids = torch.tensor([causal_prompt(tokenizer, prompt)], device=device)  # LTG-BERT: [CLS] first
    limit = getattr(model.config, "max_position_embeddings", None)
    peft_config = getattr(model, "active_peft_config", None)
    if limit is not None and peft_config is not None and peft_config.is_prompt_learning:
        limit -= peft_config.num_virtual_tokens  # virtual tokens take positions too
    if limit is not None:
        input_ids = input_ids[:, -(limit - 1):]
        max_new_tokens = max(1, min(max_new_tokens, limit - input_ids.shape[1]))
    options = dict(do_sample=do_sample, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    if do_sample:
        options.update(temperature=temperature, top_k=top_k or 0, top_p=top_p if top_p is not None else 1.0)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **options)
    model.train(was_training)
    return tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True)


@torch.no_grad()
def sliding_window_perplexity(model, token_ids: Sequence[int], max_length: int, stride: int,
                              batch_size: int = 8) -> dict[str, float]:
    """Perplexity of a token sequence, scoring every token but the first exactly once.

    The first window scores its `max_length - 1` predictable tokens; each later window ends
    `stride` tokens further and scores only those new tokens, with up to `max_length - stride`
    earlier tokens as context (so a smaller stride gives more context per token, at more cost;
    a stride of `max_length` is taken as `max_length - 1`, one token of context). Returns
    perplexity, mean negative log-likelihood (nats) and the number of scored tokens.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}.")
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be between 1 and max_length ({max_length}), got {stride}.")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and max_length > limit:
        raise ValueError(f"max_length {max_length} exceeds the model's context of {limit} tokens; use at most {limit}.")
    ids = torch.as_tensor(list(token_ids), dtype=torch.long)
    if len(ids) < 2:
        raise ValueError(f"Perplexity needs at least 2 tokens, got {len(ids)}.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    step = min(stride, max_length - 1)  # a window needs one token of context before its first target
    windows, scored_from, end = [], 1, min(max_length, len(ids))
    while scored_from < len(ids):
        start = max(0, end - max_length)
        labels = ids[start:end].clone()
        labels[: scored_from - start] = IGNORE_INDEX  # context: scored by an earlier window
        windows.append((ids[start:end], labels))
        scored_from, end = end, min(end + step, len(ids))
    total_nll, total_tokens = 0.0, 0
    for i in progress_bar(range(0, len(windows), batch_size), desc="perplexity", leave=False):
        chunk = windows[i:i + batch_size]
        length = max(len(w) for w, _ in chunk)
        input_ids = torch.zeros(len(chunk), length, dtype=torch.long)
        labels = torch.full((len(chunk), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros(len(chunk), length, dtype=torch.long)
        for row, (window, window_labels) in enumerate(chunk):
            input_ids[row, : len(window)] = window
            labels[row, : len(window)] = window_labels
            attention_mask[row, : len(window)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits.float()
        targets = labels[:, 1:].to(device)  # position t predicts token t + 1
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
            ignore_index=IGNORE_INDEX, reduction="sum",
        )
        total_nll += nll.item()
        total_tokens += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    mean_nll = total_nll / total_tokens
    return {"perplexity": math.exp(mean_nll), "nll": mean_nll, "tokens": total_tokens}


def unigram_perplexity(train_ids: Sequence[int], eval_ids: Sequence[int], vocab_size: int) -> float:
    """Perplexity on `eval_ids` (all but the first, as the models score them) of the unigram
    distribution of `train_ids` with add-one smoothing over `vocab_size` tokens."""
    counts = np.bincount(np.asarray(train_ids, dtype=np.int64), minlength=vocab_size).astype(np.float64)
    log_probs = np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)
    targets = np.asarray(eval_ids, dtype=np.int64)[1:]
    return float(np.exp(-log_probs[targets].mean()))
