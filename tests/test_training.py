"""LtgTrainer and the training helpers."""

import inspect
import math

import numpy as np
import pytest
import torch
from transformers import EvalPrediction, Trainer, TrainerCallback

from hf_ltg import LtgGptConfig, LtgGptForCausalLM, LtgGptForSequenceClassification
from hf_ltg.data.core import ClassificationDataset, LanguageModelingDataset, PaddingCollator
from hf_ltg.tokenization import train_tokenizer
from hf_ltg.training import (
    LtgTrainer,
    TimeLimitCallback,
    classification_metrics,
    freeze_layers,
    sliding_window_perplexity,
    training_arguments,
    unigram_perplexity,
)

TEXT = [
    "The for statement is used to iterate over the elements of a sequence.",
    "The while statement is used for repeated execution as long as an expression is true.",
    "An exception is raised when an error is detected during execution.",
] * 8


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(iterator=TEXT, vocab_size=300, model_max_length=32)


def tiny_config(tok, **overrides):
    values = dict(vocab_size=len(tok), max_position_embeddings=32, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id)
    return LtgGptConfig(**{**values, **overrides})


def trainable_names(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_freezing_presets_train_the_head_last_blocks_and_final_norm(tok):
    model = LtgGptForSequenceClassification(tiny_config(tok, num_labels=2))
    freeze_layers(model, "head")
    assert trainable_names(model) == {"score.weight"}
    freeze_layers(model, "last_block")
    names = trainable_names(model)
    assert {"score.weight", "transformer.ln_f.weight", "transformer.ln_f.bias"} <= names
    assert any(n.startswith("transformer.h.1.") for n in names) and not any(n.startswith("transformer.h.0.") for n in names)
    assert "transformer.wte.weight" not in names
    freeze_layers(model, "last_n_blocks:2")
    assert any(n.startswith("transformer.h.0.") for n in trainable_names(model))
    assert "transformer.wpe.weight" not in trainable_names(model)
    freeze_layers(model, "all")
    assert trainable_names(model) == {n for n, _ in model.named_parameters()}
    with pytest.raises(ValueError, match="Unknown freezing preset 'last_n_blocks:x'"):
        freeze_layers(model, "last_n_blocks:x")
    with pytest.raises(ValueError, match="asks for 3 blocks but the model has 2"):
        freeze_layers(model, "last_n_blocks:3")


def test_classification_metrics_give_accuracy_and_macro_f1():
    predictions = np.array([0, 0, 1, 1, 2, 0])
    labels = np.array([0, 1, 1, 1, 2, 2])
    metrics = classification_metrics(EvalPrediction(predictions=predictions, label_ids=labels))
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # (precision, recall) per class: 0 (1/3, 1), 1 (1, 2/3), 2 (1, 1/2) -> F1 1/2, 4/5, 2/3
    assert metrics["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)


def test_compute_loss_keeps_the_trainer_signature():
    assert inspect.signature(LtgTrainer.compute_loss) == inspect.signature(Trainer.compute_loss)
    assert "num_items_in_batch" in inspect.signature(LtgTrainer.compute_loss).parameters


def test_trainer_logs_perplexity_samples_tokens_and_writes_curves(tok, tmp_path):
    torch.manual_seed(0)
    model = LtgGptForCausalLM(tiny_config(tok))
    data = LanguageModelingDataset(TEXT[:6], tok, max_length=16)
    assert 9 <= len(data) <= 16  # two steps of 8 make one epoch
    args = training_arguments(tmp_path, num_train_epochs=1, per_device_train_batch_size=8, per_device_eval_batch_size=8,
                              eval_steps=1, logging_steps=1, save_strategy="no", learning_rate=1e-3)
    trainer = LtgTrainer(model=model, args=args, data_collator=PaddingCollator(tok.pad_token_id), train_dataset=data,
                         eval_dataset=data, processing_class=tok, sample_prompts=["The for"], sample_max_new_tokens=5)
    trainer.train()
    history = trainer.state.log_history
    evals = [e for e in history if "eval_loss" in e]
    assert len(evals) == 2
    assert all(e["eval_perplexity"] == pytest.approx(math.exp(e["eval_loss"])) for e in evals)
    assert len([e for e in history if "samples" in e]) == 2
    train_logs = [e for e in history if "loss" in e]
    assert train_logs[-1]["num_input_tokens_seen"] == sum(len(data[i]["input_ids"]) for i in range(len(data)))
    assert train_logs[-1]["train_tokens_per_second"] > 0
    assert (tmp_path / "training_curves.png").stat().st_size > 1000


def test_classification_evaluation_keeps_predicted_ids_not_logits(tok, tmp_path):
    records = [{"text": t, "label": "loop" if "statement" in t else "error"} for t in TEXT]
    data = ClassificationDataset(records, tok, max_length=16)
    model = LtgGptForSequenceClassification(tiny_config(tok, num_labels=2))
    args = training_arguments(tmp_path, max_steps=2, per_device_train_batch_size=4, per_device_eval_batch_size=5,
                              save_strategy="no", eval_strategy="no")
    trainer = LtgTrainer(model=model, args=args, data_collator=PaddingCollator(tok.pad_token_id), train_dataset=data,
                         eval_dataset=data, processing_class=tok, freeze="last_block")
    assert "transformer.h.0.attn.qkv_proj.weight" not in trainable_names(model)
    trainer.train()
    metrics = trainer.evaluate()
    assert 0 <= metrics["eval_accuracy"] <= 1 and 0 <= metrics["eval_macro_f1"] <= 1
    predictions = trainer.predict(data).predictions
    assert predictions.shape == (len(data),)  # class ids; the (N, num_labels) logits were never stored


def test_time_limit_fits_the_run_and_its_cosine_schedule_to_the_budget(tok, tmp_path):
    class FakeClock:  # every step "takes" 10 s
        now = 0.0

        def __call__(self):
            return self.now

    clock = FakeClock()

    class Tick(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.now += 10.0

    model = LtgGptForCausalLM(tiny_config(tok))
    data = LanguageModelingDataset(TEXT, tok, max_length=8)
    args = training_arguments(tmp_path, max_steps=40, per_device_train_batch_size=2, eval_strategy="no",
                              save_strategy="no", logging_steps=1, lr_scheduler_type="cosine", learning_rate=1e-3)
    limit = TimeLimitCallback(seconds=200, probe_steps=4, clock=clock)
    trainer = LtgTrainer(model=model, args=args, data_collator=PaddingCollator(tok.pad_token_id), train_dataset=data,
                         processing_class=tok, callbacks=[Tick(), limit], plot=False)
    trainer.train()
    assert limit.fitted_steps == 19 and trainer.state.global_step == 19  # 200 s * 0.97 / 10 s per step
    rates = [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e]
    assert rates[-1] < 0.02 * max(rates)  # annealed by the end of the shortened run


def test_sliding_window_perplexity_scores_every_token_once_and_matches_full_context(tok):
    torch.manual_seed(0)
    model = LtgGptForCausalLM(tiny_config(tok)).eval()
    ids = tok(" ".join(TEXT[:3]))["input_ids"][:30]
    full = sliding_window_perplexity(model, ids, max_length=32, stride=16)
    with torch.no_grad():
        reference = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert full["tokens"] == len(ids) - 1 and full["nll"] == pytest.approx(reference, rel=1e-5)
    for stride in (1, 3, 8):
        windowed = sliding_window_perplexity(model, ids, max_length=8, stride=stride, batch_size=3)
        assert windowed["tokens"] == len(ids) - 1
    with pytest.raises(ValueError, match="stride must be between 1 and max_length"):
        sliding_window_perplexity(model, ids, max_length=8, stride=0)


def test_unigram_perplexity_is_the_smoothed_cross_entropy():
    # train counts 3 x token 0, 1 x token 1, vocab 4: p = (4/8, 2/8, 1/8, 1/8)
    value = unigram_perplexity([0, 0, 0, 1], [3, 0, 1], vocab_size=4)  # the first token is context only
    assert value == pytest.approx(math.exp(-(math.log(4 / 8) + math.log(2 / 8)) / 2))


def test_resuming_an_interrupted_run_ends_with_the_same_loss(tok, tmp_path):
    class Interrupt(Exception):
        pass

    from transformers import TrainerCallback

    class StopAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 6:
                raise Interrupt

    data = LanguageModelingDataset(TEXT, tok, max_length=12, stride=6)

    def run(folder, callbacks=(), resume=None):
        torch.manual_seed(1)
        model = LtgGptForCausalLM(tiny_config(tok, hidden_dropout=0.1, attention_dropout=0.1))
        args = training_arguments(folder, max_steps=8, per_device_train_batch_size=4, save_steps=4, logging_steps=1,
                                  eval_strategy="no", learning_rate=1e-3, seed=3)
        trainer = LtgTrainer(model=model, args=args, data_collator=PaddingCollator(tok.pad_token_id),
                             train_dataset=data, processing_class=tok, callbacks=list(callbacks), plot=False)
        trainer.train(resume_from_checkpoint=resume)
        return [e["loss"] for e in trainer.state.log_history if "loss" in e], trainer.model

    full_losses, full_model = run(tmp_path / "full")
    with pytest.raises(Interrupt):
        run(tmp_path / "resumed", callbacks=[StopAfter()])
    resumed_losses, resumed_model = run(tmp_path / "resumed", resume=True)
    assert resumed_losses[-4:] == pytest.approx(full_losses[-4:], abs=1e-6)
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
