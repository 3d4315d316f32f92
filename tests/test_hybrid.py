"""GPT-BERT's hybrid objective: span masking, its schedule, the causal ratio, the next-token shift,
the Trainer's per-objective losses, `hf-ltg pretrain --objective`, and the data progress bars."""

import contextlib
import io
import json
import math
import re

import pytest
import torch

from hf_ltg.cli import main
from hf_ltg.data.hybrid import HybridCollator, HybridDataset, span_mask
from hf_ltg.tokenization import train_tokenizer

CORPUS = [
    "The for statement is used to iterate over the elements of a sequence such as a string or a list.",
    "An exception is raised when an error is detected during execution, and a handler may catch it.",
    "The while statement is used for repeated execution as long as an expression is true.",
] * 12
TINY = ["--hidden-size", "32", "--num-layers", "2", "--num-heads", "2", "--vocab-size", "300",
        "--max-length", "32", "--batch-size", "8", "--logging-steps", "2"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(iterator=CORPUS, vocab_size=300, kind="wordpiece")


@pytest.fixture(scope="module")
def windows(tokenizer):
    return HybridDataset(CORPUS, tokenizer, max_length=32)


def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------------------------------
# Span masking and the collator


def test_span_mask_takes_the_rate_in_whole_spans_of_one_to_three_tokens():
    generator = torch.Generator().manual_seed(0)
    candidates = torch.ones(64, 200, dtype=torch.bool)
    candidates[:, :1] = False  # [CLS]
    candidates[::2, 150:] = False  # padding in every other row
    chosen, span = span_mask(candidates, 0.3, max_span_length=3, generator=generator)
    assert not (chosen & ~candidates).any()
    rate = (chosen.sum(1).float() / candidates.sum(1)).mean().item()
    assert 0.3 <= rate < 0.3 + 2 / 150  # the span crossing the budget is taken whole: at most 2 more per row
    sizes = torch.stack([torch.bincount(row, minlength=200) for row in span])
    sizes = sizes[sizes > 0]
    assert set(sizes.tolist()) == {1, 2, 3} and abs(sizes.float().mean().item() - 2.0) < 0.1
    for row in range(64):  # a span is chosen whole or not at all (away from the row's [CLS] and padding)
        for index in span[row, 3:140].unique():
            inside = (span[row] == index) & candidates[row]
            assert chosen[row][inside].all() or not chosen[row][inside].any()


def test_masked_batches_follow_the_schedule_and_replace_whole_spans_80_10_10(tokenizer, windows):
    collator = HybridCollator(tokenizer, causal_ratio=0.0, mask_rate_start=0.3, mask_rate_end=0.15,
                              generator=torch.Generator().manual_seed(1))
    items = [windows[i % len(windows)] for i in range(64)]
    rates = []
    for progress in (0.0, 1.0):
        collator.progress = progress
        batch = collator(items)
        assert not bool(batch["causal"])
        rates.append(collator.last_mask_rate)
    assert collator.mask_rate() == pytest.approx(0.15)
    assert rates[0] == pytest.approx(0.3, abs=0.03) and rates[1] == pytest.approx(0.15, abs=0.03)

    original = torch.nn.utils.rnn.pad_sequence([i["input_ids"] for i in items], batch_first=True,
                                               padding_value=tokenizer.pad_token_id)
    collator.progress = 0.0
    counts = torch.zeros(3)
    for _ in range(20):
        batch = collator(items)
        chosen = batch["labels"] != -100
        assert torch.equal(batch["labels"][chosen], original[chosen])
        assert not chosen[:, 0].any() and not chosen[original == tokenizer.pad_token_id].any()
        masked = batch["input_ids"] == tokenizer.mask_token_id
        kept = batch["input_ids"] == original
        counts += torch.tensor([(chosen & masked).sum(), (chosen & kept).sum(), (chosen & ~masked & ~kept).sum()])
        assert torch.equal(batch["input_ids"][~chosen], original[~chosen])
    shares = counts / counts.sum()
    assert shares[0] == pytest.approx(0.8, abs=0.05) and shares[1] == pytest.approx(0.1, abs=0.04)
    assert shares[2] == pytest.approx(0.1, abs=0.04)


def test_causal_batches_label_every_real_token_and_the_ratio_spreads_them_evenly(tokenizer, windows):
    items = [windows[i] for i in range(4)]
    collator = HybridCollator(tokenizer, causal_ratio=0.25)
    modes = [bool(collator(items)["causal"]) for _ in range(16)]
    assert modes == [False, False, False, True] * 4
    assert not any(bool(HybridCollator(tokenizer, causal_ratio=0.0)(items)["causal"]) for _ in range(8))
    batch = HybridCollator(tokenizer, causal_ratio=1.0)(items)
    assert bool(batch["causal"]) and torch.equal(batch["input_ids"][:, 1:][batch["attention_mask"][:, 1:] == 1],
                                                  batch["labels"][:, 1:][batch["attention_mask"][:, 1:] == 1])
    assert (batch["labels"][:, 0] == -100).all() and (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    fixed = HybridCollator(tokenizer, causal_ratio=0.0, mode="causal")
    assert bool(fixed(items)["causal"])
    for ratio in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
            HybridCollator(tokenizer, causal_ratio=ratio)


def test_windows_start_with_cls_and_documents_end_with_sep(tokenizer, windows):
    assert all(int(row["input_ids"][0]) == tokenizer.cls_token_id for row in windows)
    assert windows.token_ids.count(tokenizer.sep_token_id) == len(CORPUS)
    assert max(len(row["input_ids"]) for row in windows) == 32


# ---------------------------------------------------------------------------------------------
# The next-token shift: what is trained is what the exported heads compute


def test_training_forward_shifts_targets_as_the_exported_masked_and_causal_heads(tokenizer, windows):
    from hf_ltg.hybrid_training import HybridTrainingModel, export_model, masked_next_token_supported
    from hf_ltg.ltg_bert import LtgBertConfig

    torch.manual_seed(0)
    config = LtgBertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, pad_token_id=tokenizer.pad_token_id, cls_token_id=tokenizer.cls_token_id,
                           sep_token_id=tokenizer.sep_token_id, mask_token_id=tokenizer.mask_token_id,
                           unk_token_id=tokenizer.unk_token_id, bos_token_id=tokenizer.cls_token_id,
                           eos_token_id=tokenizer.sep_token_id)
    model = HybridTrainingModel(config).eval()
    items = [windows[i] for i in range(len(windows) - 3, len(windows))]  # the last one is shorter: padding
    masked = HybridCollator(tokenizer, mode="masked", generator=torch.Generator().manual_seed(0))(items)
    causal = HybridCollator(tokenizer, mode="causal")(items)
    assert (masked["attention_mask"] == 0).any()
    with torch.no_grad():
        masked_loss = model(**masked).loss
        causal_loss = model(**causal).loss
        # By hand: hidden state i - 1 through the head predicts label i, bidirectional resp. causal attention.
        for batch, is_causal, loss in ((masked, False, masked_loss), (causal, True, causal_loss)):
            hidden = model.ltg_bert(batch["input_ids"], attention_mask=batch["attention_mask"],
                                    is_causal=is_causal).last_hidden_state
            logits = model.lm_head(hidden[:, :-1])
            expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                         batch["labels"][:, 1:].reshape(-1), ignore_index=-100)
            torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
        causal_head = export_model(model, "causal")
        torch.testing.assert_close(causal_head(input_ids=causal["input_ids"], attention_mask=causal["attention_mask"],
                                               labels=causal["labels"]).loss, causal_loss, rtol=1e-5, atol=1e-6)
        if masked_next_token_supported():
            masked_head = export_model(model, "hybrid")
            assert masked_head.config.masked_next_token is True
            output = masked_head(input_ids=masked["input_ids"], attention_mask=masked["attention_mask"],
                                 labels=masked["labels"])
            torch.testing.assert_close(output.loss, masked_loss, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The command and the Trainer


@pytest.fixture(scope="module")
def hybrid_run(tmp_path_factory):
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("hybrid")
    (root / "train.txt").write_text(topics["for"] + "\n\n" + topics["while"] + "\n\n" + topics["if"])
    (root / "valid.txt").write_text(topics["break"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_LTG_PROGRESS", "1")  # bars as on a terminal
        code, out, err = run_cli("pretrain", "--family", "ltg_bert", "--objective", "hybrid", "--causal-ratio", "0.5",
                                 *TINY, "--max-steps", "6", "--eval-steps", "3", "--train-files", root / "train.txt",
                                 "--validation-files", root / "valid.txt", "--output", root / "ckpt", "--work-dir",
                                 root / "work")
    assert code == 0, out + err
    return root, out, err


def test_hybrid_pretraining_logs_both_losses_and_reports_both_modes(hybrid_run):
    root, out, _ = hybrid_run
    assert "as a hybrid LM (0.5 of batches causal, spans of 1-3 masked at 0.3 -> 0.15)" in out
    state = json.loads(max((root / "work").glob("checkpoint-*/trainer_state.json")).read_text())
    train_logs = [e for e in state["log_history"] if "loss" in e]
    assert train_logs and all("masked_loss" in e and "causal_loss" in e and "mask_rate" in e for e in train_logs)
    assert train_logs[0]["mask_rate"] > train_logs[-1]["mask_rate"]  # 0.3 falling towards 0.15
    evals = [e for e in state["log_history"] if "eval_masked_accuracy" in e]
    assert evals and all(math.exp(e["eval_causal_loss"]) == pytest.approx(e["eval_causal_perplexity"]) for e in evals)
    assert all(e["eval_loss"] == pytest.approx((e["eval_masked_loss"] + e["eval_causal_loss"]) / 2) for e in evals)
    assert "validation masked accuracy" in out and "unigram baseline accuracy" in out
    assert "validation causal perplexity" in out and "unigram baseline perplexity" in out
    assert (root / "work" / "training_curves.png").stat().st_size > 0


def test_the_hybrid_checkpoint_loads_as_a_masked_and_as_a_causal_lm(hybrid_run):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, pipeline

    from hf_ltg.hybrid_training import masked_next_token_supported

    folder = hybrid_run[0] / "ckpt"
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LtgBertForMaskedLM"]
    assert config.get("masked_next_token", False) is masked_next_token_supported()
    assert type(AutoModelForCausalLM.from_pretrained(folder)).__name__ == "LtgBertForCausalLM"
    assert type(AutoModelForMaskedLM.from_pretrained(folder)).__name__ == "LtgBertForMaskedLM"
    assert len(pipeline("fill-mask", model=str(folder))("The [MASK] statement", top_k=2)) == 2


def test_the_curves_show_both_losses(tmp_path, monkeypatch):
    import matplotlib.figure

    from hf_ltg.training import plot_training_curves

    labels = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, *a, **k: labels.extend(self.axes[0].get_legend_handles_labels()[1]))
    history = [{"step": 2, "loss": 5.0, "masked_loss": 5.2, "causal_loss": 4.8},
               {"step": 3, "eval_loss": 4.9, "eval_masked_loss": 5.1, "eval_causal_loss": 4.7,
                "eval_masked_accuracy": 0.1}]
    plot_training_curves(history, tmp_path / "curves.png")
    assert {"training masked loss", "training causal loss", "validation masked loss",
            "validation causal loss"} <= set(labels)


@pytest.mark.parametrize("arguments, message", [
    (["--objective", "both"], "--objective both is unknown; use one of hybrid, masked, causal"),
    (["--objective", "hybrid", "--causal-ratio", "1.5"], "--causal-ratio 1.5 is outside [0, 1]"),
    (["--objective", "hybrid", "--causal-ratio=-0.1"], "--causal-ratio -0.1 is outside [0, 1]"),
    (["--objective", "hybrid", "--causal-ratio", "half"], "--causal-ratio half is outside [0, 1]"),
    (["--objective", "masked", "--causal-ratio", "0.5"], "--causal-ratio applies to --objective hybrid only"),
    (["--family", "gpt", "--objective", "hybrid"], "--objective hybrid needs --family ltg_bert"),
    (["--objective", "hybrid", "--mask-rate-start", "1.2"], "--mask-rate-start 1.2 is outside (0, 1)"),
])
def test_bad_objective_options_are_one_line_errors_and_nothing_is_written(arguments, message, tmp_path, capsys,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["pretrain", "--family", "ltg_bert", *arguments, "--output", "out", "--work-dir", "work"]
    if arguments[:2] == ["--family", "gpt"]:
        argv = ["pretrain", *arguments, "--output", "out", "--work-dir", "work"]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"hf-ltg pretrain: error: {err.split('error: ', 1)[1]}" and message in err, err
    assert "\n" not in err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Progress bars


@pytest.mark.parametrize("objective", ["causal", "masked", "hybrid"])
def test_data_preparation_shows_a_bar_on_a_terminal_only(objective, tokenizer, capsys, monkeypatch):
    from hf_ltg.data import LanguageModelingDataset, MaskedLanguageModelingDataset

    dataset = {"causal": LanguageModelingDataset, "masked": MaskedLanguageModelingDataset,
               "hybrid": HybridDataset}[objective]
    monkeypatch.delenv("HF_LTG_PROGRESS", raising=False)
    dataset(CORPUS, tokenizer, 32, source="the test corpus")
    assert capsys.readouterr().err == ""  # captured: not a terminal
    monkeypatch.setenv("HF_LTG_PROGRESS", "1")
    dataset(CORPUS, tokenizer, 32, source="the test corpus")
    assert "tokenizing the test corpus" in capsys.readouterr().err


def test_every_long_step_of_the_run_shows_a_bar(hybrid_run):
    err = hybrid_run[2]
    assert re.search(r"tokenizing \S*train\.txt", err) and re.search(r"tokenizing the validation part of \S*train", err)
    assert "6/6 [" in err  # the Trainer's training bar
    assert "validation (masked)" in err and "validation (causal)" in err  # the final evaluation
    assert err.count("2/2 [") >= 2  # the Trainer's evaluation bar (a batch per mode) at steps 3 and 6


def test_trainer_bars_follow_the_same_rule(monkeypatch, tmp_path):
    from hf_ltg.training import training_arguments

    monkeypatch.setenv("HF_LTG_PROGRESS", "1")
    assert training_arguments(tmp_path).disable_tqdm is False
    monkeypatch.setenv("HF_LTG_PROGRESS", "0")
    assert training_arguments(tmp_path).disable_tqdm is True


def test_perplexity_evaluation_shows_a_bar(monkeypatch, capsys):
    from hf_ltg.gpt import LtgGptConfig, LtgGptForCausalLM
    from hf_ltg.training import sliding_window_perplexity

    model = LtgGptForCausalLM(LtgGptConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                           max_position_embeddings=16))
    monkeypatch.setenv("HF_LTG_PROGRESS", "1")
    result = sliding_window_perplexity(model, list(range(40)), max_length=16, stride=8)
    assert result["tokens"] == 39 and "perplexity" in capsys.readouterr().err


def test_causal_objective_trains_and_saves_an_ltg_bert_causal_lm(tmp_path):
    from pydoc_data.topics import topics

    (tmp_path / "train.txt").write_text(topics["for"] + "\n\n" + topics["while"])
    (tmp_path / "valid.txt").write_text(topics["break"])
    code, out, err = run_cli("pretrain", "--family", "ltg_bert", "--objective", "causal", *TINY, "--max-steps", "2",
                             "--eval-steps", "1000", "--train-files", tmp_path / "train.txt", "--validation-files",
                             tmp_path / "valid.txt", "--output", tmp_path / "ckpt", "--work-dir", tmp_path / "work")
    assert code == 0, out + err
    assert "as a causal LM on" in out and "validation causal perplexity" in out
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["architectures"] == ["LtgBertForCausalLM"] and not config.get("masked_next_token", False)
    assert "'causal_loss'" in out and "'masked_loss'" not in out and "'mask_rate'" not in out  # the printed logs
