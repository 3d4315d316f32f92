"""LtgTrainer metrics by problem type (single-label, multi-label, regression) and the collator's per-sequence labels."""

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from hf_ltg import LtgGptConfig, LtgGptForSequenceClassification
from hf_ltg.data.core import PaddingCollator, TensorDictDataset
from hf_ltg.tokenization import train_tokenizer
from hf_ltg.training import (
    LtgTrainer,
    classification_metrics,
    multi_label_metrics,
    regression_metrics,
    training_arguments,
)

TEXT = ["The for statement is used to iterate.", "An exception is raised when an error occurs."] * 4


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(iterator=TEXT, vocab_size=300, model_max_length=32)


def test_macro_f1_counts_classes_that_are_predicted_but_absent_from_the_labels():
    metrics = classification_metrics(EvalPrediction(predictions=np.array([0, 2, 1, 1]), label_ids=np.array([0, 0, 1, 1])))
    # F1 per class: 0 (precision 1, recall 1/2) 2/3, 1 (1, 1) 1, 2 (0, -) 0; as sklearn's f1_score(average="macro")
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert round(metrics["macro_f1"], 3) == 0.556 and metrics["accuracy"] == 0.75


def test_multi_label_metrics_threshold_the_probabilities():
    probabilities = np.array([[0.9, 0.2, 0.6], [0.4, 0.7, 0.1], [0.8, 0.8, 0.3]])
    labels = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    metrics = multi_label_metrics(EvalPrediction(predictions=probabilities, label_ids=labels))
    # predicted [[1,0,1],[0,1,0],[1,1,0]]: tp per class (2, 1, 0), predicted (2, 2, 1), actual (2, 1, 1)
    assert metrics["micro_f1"] == pytest.approx(2 * 3 / (5 + 4))
    assert metrics["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert metrics["exact_match"] == pytest.approx(1 / 3)


def test_regression_metrics_are_mse_and_mae():
    metrics = regression_metrics(EvalPrediction(predictions=np.array([1.0, 2.0, 4.0]), label_ids=np.array([1.5, 2.0, 2.0])))
    assert metrics["mse"] == pytest.approx((0.25 + 0 + 4) / 3) and metrics["mae"] == pytest.approx(2.5 / 3)


def test_padding_collator_keeps_per_sequence_label_vectors():
    items = [{"input_ids": torch.tensor([5, 6, 7, 8, 9]), "labels": torch.tensor([1.0, 0.0, 1.0])},
             {"input_ids": torch.tensor([5, 6]), "labels": torch.tensor([0.0, 1.0, 0.0])}]
    batch = PaddingCollator(pad_token_id=0)(items)
    assert batch["input_ids"].shape == (2, 5)
    torch.testing.assert_close(batch["labels"], torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))


LABELS = {
    "single_label_classification": (3, lambda i: i % 3),
    "multi_label_classification": (3, lambda i: [float(i % 2), float(i % 3 == 0), 1.0]),
    "regression": (1, lambda i: 0.5 * i),
}
METRICS = {
    "single_label_classification": {"eval_accuracy", "eval_macro_f1"},
    "multi_label_classification": {"eval_micro_f1", "eval_macro_f1", "eval_exact_match"},
    "regression": {"eval_mse", "eval_mae"},
}


@pytest.mark.parametrize("problem_type", sorted(LABELS))
def test_trainer_trains_and_evaluates_every_problem_type(tok, tmp_path, problem_type):
    num_labels, label_of = LABELS[problem_type]
    ids = tok(TEXT)["input_ids"]
    data = TensorDictDataset([{"input_ids": x, "attention_mask": [1] * len(x), "labels": label_of(i)}
                              for i, x in enumerate(ids)])
    torch.manual_seed(0)
    model = LtgGptForSequenceClassification(LtgGptConfig(
        vocab_size=len(tok), max_position_embeddings=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        pad_token_id=tok.pad_token_id, num_labels=num_labels))  # problem_type inferred, as transformers does
    args = training_arguments(tmp_path, max_steps=3, per_device_train_batch_size=4, per_device_eval_batch_size=3,
                              save_strategy="no", eval_strategy="no")
    trainer = LtgTrainer(model=model, args=args, data_collator=PaddingCollator(tok.pad_token_id), train_dataset=data,
                         eval_dataset=data, processing_class=tok, plot=False)
    trainer.train()
    metrics = trainer.evaluate()
    assert model.config.problem_type == problem_type
    assert METRICS[problem_type] <= set(metrics)
    assert all(np.isfinite(metrics[name]) for name in METRICS[problem_type])
    if problem_type == "regression":
        with torch.no_grad():
            batch = PaddingCollator(tok.pad_token_id)([data[i] for i in range(len(data))])
            values = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        assert metrics["eval_mse"] == pytest.approx(((values - batch["labels"]) ** 2).mean().item(), rel=1e-4)
