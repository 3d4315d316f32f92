"""Training LTG-BERT with GPT-BERT's hybrid objective (masked + causal next-token prediction).

`HybridTrainingModel` is `LtgBertForMaskedLM` with a training forward that runs a batch in the
mode the `HybridCollator` chose (bidirectional or causal attention) and applies GPT-BERT's shift
in both modes: hidden state i - 1 predicts label i, as `LtgBertForMaskedLM` with
`masked_next_token` and `LtgBertForCausalLM` do. Its weights are those of either head, so the
result is saved as a plain `LtgBertForMaskedLM` or `LtgBertForCausalLM` (`export_model`).

`Norbert4HybridTrainingModel` is the same for NorBERT4 (`hf-ltg pretrain --family norbert4`), whose
heads shift the same way; it is saved as `Norbert4ForMaskedLM` or `Norbert4ForCausalLM`.

`HybridTrainer` logs the masked and the causal training loss separately (`masked_loss`,
`causal_loss`, with `mask_rate`) and evaluates both modes on the validation windows under a
fixed masking: `eval_masked_loss`, `eval_masked_accuracy`, `eval_causal_loss`,
`eval_causal_perplexity`, and `eval_loss`, their mix by the causal ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import TrainerCallback
from transformers.utils import ModelOutput

from .data.core import IGNORE_INDEX
from .data.hybrid import HybridCollator
from .ltg_bert import LtgBertConfig, LtgBertForCausalLM, LtgBertForMaskedLM
from .norbert4 import Norbert4ForCausalLM, Norbert4ForMaskedLM
from .progress import progress_bar
from .training import LtgTrainer


@dataclass
class HybridOutput(ModelOutput):
    """`logits` [N, V] and `targets` [N] of the N predicted tokens of the batch only."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None


class HybridTrainingModel(LtgBertForMaskedLM):
    """The training view of an LTG-BERT trained on both objectives (see the module docstring)."""

    _auto_class = None  # never saved as such (`export_model`): no code of this module goes into a folder
    accepts_loss_kwargs = False  # a mean over the batch's targets: the Trainer scales it for accumulation

    def forward(self, input_ids=None, attention_mask=None, labels=None, causal=None, token_type_ids=None):
        causal = bool(causal) if causal is not None else False
        hidden = self.ltg_bert(input_ids, attention_mask=attention_mask, is_causal=causal, use_cache=False,
                               return_dict=True).last_hidden_state
        return _next_token_output(self.lm_head, hidden, labels)


class Norbert4HybridTrainingModel(Norbert4ForMaskedLM):
    """The training view of NorBERT4 (the release trains it on both objectives; see the module docstring)."""

    _auto_class = None  # never saved as such (`export_model`)
    accepts_loss_kwargs = False

    def forward(self, input_ids=None, attention_mask=None, labels=None, causal=None, token_type_ids=None):
        causal = bool(causal) if causal is not None else False
        hidden = self.norbert4(input_ids, attention_mask=attention_mask, is_causal=causal, use_cache=False,
                               return_dict=True).last_hidden_state
        return _next_token_output(self.lm_head, hidden, labels)


def _next_token_output(lm_head, hidden, labels) -> HybridOutput:
    """Hidden state i - 1 predicts label i, in either mode."""
    if labels is None:
        return HybridOutput(logits=lm_head(hidden))
    targets = labels[:, 1:]
    predicted = targets != IGNORE_INDEX
    # Only the predicted positions go through the head: in a masked batch 15-30 % of them.
    logits = lm_head(hidden[:, :-1][predicted])
    targets = targets[predicted]
    loss = F.cross_entropy(logits.float(), targets) if len(targets) else logits.sum() * 0.0
    return HybridOutput(loss=loss, logits=logits, targets=targets)


def training_model_class(family: str):
    """The training view of a family trained on the hybrid objective (`ltg-bert` or `norbert4`)."""
    return Norbert4HybridTrainingModel if family == "norbert4" else HybridTrainingModel


def masked_next_token_supported() -> bool:
    """Whether the installed `LtgBertConfig` has GPT-BERT's `masked_next_token` flag."""
    return hasattr(LtgBertConfig(vocab_size=8, hidden_size=8, num_attention_heads=1, num_hidden_layers=1,
                                 intermediate_size=8, max_position_embeddings=32, position_bucket_size=4,
                                 pad_token_id=0, bos_token_id=0, eos_token_id=0, unk_token_id=0, cls_token_id=0,
                                 sep_token_id=0, mask_token_id=0), "masked_next_token")


def export_model(model: HybridTrainingModel | Norbert4HybridTrainingModel, objective: str):
    """The trained weights as the model users load: `LtgBertForCausalLM` for the causal objective,
    else `LtgBertForMaskedLM` with `masked_next_token` set (where the config has the flag), so that
    its masked head reads the prediction for a token from the position before it, as trained.
    NorBERT4: `Norbert4ForCausalLM`, else `Norbert4ForMaskedLM` (which always shifts so)."""
    config = model.config
    config.architectures = None
    if isinstance(model, Norbert4HybridTrainingModel):
        cls = Norbert4ForCausalLM if objective == "causal" else Norbert4ForMaskedLM
    else:
        if objective != "causal" and masked_next_token_supported():
            config.masked_next_token = True
        cls = LtgBertForCausalLM if objective == "causal" else LtgBertForMaskedLM
    exported = cls(config)
    exported.load_state_dict(model.state_dict())
    return exported.to(next(model.parameters()).device).eval()


class MaskingScheduleCallback(TrainerCallback):
    """Moves the collator's masking rate along the run: progress = step / planned steps, where the
    planned steps are those a `TimeLimitCallback` fitted the run to, if it did."""

    def __init__(self, collator: HybridCollator, time_limit=None):
        self.collator, self.time_limit = collator, time_limit

    def on_step_begin(self, args, state, control, **kwargs):
        total = (self.time_limit.stop_at if self.time_limit is not None else None) or state.max_steps
        self.collator.progress = state.global_step / max(total, 1)


class HybridTrainer(LtgTrainer):
    """`LtgTrainer` for `HybridTrainingModel`: per-objective losses in the logs, and both modes
    evaluated (see the module docstring). `validation_seed` fixes the validation masking."""

    def __init__(self, *args, validation_seed: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.validation_seed = validation_seed
        self._mode_losses = {"masked": [0.0, 0], "causal": [0.0, 0]}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training:
            total = self._mode_losses["causal" if bool(inputs["causal"]) else "masked"]
            total[0] += loss.detach()  # a tensor until the next log: no device sync per step
            total[1] += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if "loss" in logs:  # a training log: add what each objective contributed since the last one
            for mode, (total, count) in self._mode_losses.items():
                if count:
                    logs[f"{mode}_loss"] = float(total) / count
            self._mode_losses = {"masked": [0.0, 0], "causal": [0.0, 0]}
            collator = self.data_collator
            if isinstance(collator, HybridCollator) and collator.causal_ratio < 1:
                logs["mask_rate"] = collator.mask_rate()
        return super().log(logs, *args, **kwargs)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        model = self.accelerator.unwrap_model(self.model)
        collator = self.data_collator
        results = evaluate_hybrid(model, dataset, self.processing_class, self.args.per_device_eval_batch_size,
                                  seed=self.validation_seed, callback=self._on_prediction_step)
        ratio = collator.causal_ratio if isinstance(collator, HybridCollator) else 0.5
        metrics = {
            f"{metric_key_prefix}_loss": (1 - ratio) * results["masked"]["loss"] + ratio * results["causal"]["loss"],
            f"{metric_key_prefix}_masked_loss": results["masked"]["loss"],
            f"{metric_key_prefix}_masked_accuracy": results["masked"]["accuracy"],
            f"{metric_key_prefix}_causal_loss": results["causal"]["loss"],
            f"{metric_key_prefix}_causal_perplexity": math.exp(min(results["causal"]["loss"], 50.0)),
        }
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics

    def _on_prediction_step(self, total_batches: int) -> None:
        # The Trainer's progress callback draws its evaluation bar from these events, sized by the
        # length of `eval_dataloader`: here both modes' batches.
        self.callback_handler.eval_dataloader = range(total_batches)
        self.control = self.callback_handler.on_prediction_step(self.args, self.state, self.control)


@torch.no_grad()
def evaluate_hybrid(model, dataset, tokenizer, batch_size: int = 32, seed: int = 0, callback=None,
                    desc: str | None = None) -> dict[str, dict]:
    """Both modes of `model` (a `HybridTrainingModel`) on `dataset` (`HybridDataset` windows): per
    mode the mean loss over the predicted tokens, the accuracy, their number and a histogram of
    their ids (for baselines). Masked mode uses GPT-BERT's validation masking rate (0.15) drawn
    from `seed`, so every call masks the same tokens."""
    from torch.utils.data import DataLoader

    from .data.hybrid import VALIDATION_MASK_RATE

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    results = {}
    for mode in ("masked", "causal"):
        collator = HybridCollator(tokenizer, mode=mode, mask_rate_start=VALIDATION_MASK_RATE,
                                  mask_rate_end=VALIDATION_MASK_RATE, generator=torch.Generator().manual_seed(seed))
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator)
        total, correct, count = 0.0, 0, 0
        histogram = torch.zeros(len(collator.special), dtype=torch.long)
        # Inside a Trainer, `callback` feeds the Trainer's own evaluation bar.
        batches = loader if callback is not None else progress_bar(loader, desc=desc or f"validation ({mode})",
                                                                    leave=False)
        for batch in batches:
            batch = {key: value.to(device) for key, value in batch.items()}
            output = model(**batch)
            total += float(F.cross_entropy(output.logits.float(), output.targets, reduction="sum"))
            correct += int((output.logits.argmax(-1) == output.targets).sum())
            count += len(output.targets)
            histogram += torch.bincount(output.targets.cpu(), minlength=len(histogram))
            if callback is not None:
                callback(2 * len(loader))
        results[mode] = {"loss": total / max(count, 1), "accuracy": correct / max(count, 1), "tokens": count,
                         "histogram": histogram.numpy()}
    model.train(was_training)
    return results


def unigram_baselines(train_ids, histogram: np.ndarray, vocab_size: int, exclude=()) -> dict[str, float]:
    """What the unigram distribution of `train_ids` (add-one smoothed over `vocab_size`) scores on
    targets counted in `histogram`: mean loss, perplexity, and the accuracy of always guessing the
    most frequent training token that is not in `exclude` (special tokens, which are never masked)."""
    counts = np.bincount(np.asarray(train_ids, dtype=np.int64), minlength=vocab_size)[:vocab_size].astype(np.float64)
    log_probs = np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)
    histogram = np.asarray(histogram, dtype=np.float64)[:vocab_size]
    total = max(histogram.sum(), 1.0)
    loss = float(-(histogram * log_probs).sum() / total)
    guessable = counts.copy()
    guessable[list(exclude)] = -1
    guess = int(guessable.argmax())
    return {"loss": loss, "perplexity": math.exp(loss), "accuracy": float(histogram[guess] / total), "guess": guess}
