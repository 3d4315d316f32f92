"""Rough edges of the commands, each a one-line error before any work or fixed: finetune-instruct's
--max-length on short-context checkpoints, --resume with other sizes (and what a resumed run
reuses), and eval-pairs / generate / perplexity given a folder they cannot use."""

import io
import json
import logging
import shutil
from pathlib import Path

import pytest
from helpers import REPO

from hf_ltg.cli import main

SHIPPED = REPO / "checkpoints"
LTG_BERT = ["--family", "ltg_bert", "--hidden-size", "32", "--num-layers", "2", "--num-heads", "2",
            "--vocab-size", "300", "--max-length", "32", "--batch-size", "8", "--logging-steps", "2",
            "--eval-steps", "1000", "--save-steps", "2", "--time-limit", "0"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def write_records(path: Path, count: int) -> Path:
    records = [{"instruction": f"Say the number {i}.", "output": f"The number is {i}."} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# --- finetune-instruct --max-length


def test_finetune_instruct_fits_its_default_max_length_to_a_64_position_checkpoint(tmp_path, capsys):
    code = main(["finetune-instruct", "--model", str(SHIPPED / "ltg-gpt-lm"),
                 "--train-file", str(write_records(tmp_path / "train.jsonl", 8)),
                 "--validation-file", str(write_records(tmp_path / "valid.jsonl", 2)),
                 "--max-steps", "1", "--eval-steps", "1000", "--time-limit", "0",
                 "--output", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work")])

    assert code == 0, capsys.readouterr().err[-2000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_finetune_instruct_refuses_a_max_length_beyond_the_context_before_tokenizing(tmp_path, capsys, monkeypatch):
    import hf_ltg.data.core

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("the data was tokenized before --max-length was checked")

    monkeypatch.setattr(hf_ltg.data.core, "InstructionDataset", no_tokenizing)
    code = main(["finetune-instruct", "--model", str(SHIPPED / "ltg-gpt-lm"), "--max-length", "128",
                 "--output", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work")])

    error = one_line_error(capsys)
    assert code == 2 and "--max-length 128 exceeds the context" in error and "64 tokens" in error
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


# --- --resume


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """An LTG-BERT masked-LM run stopped after 2 steps, its checkpoint-2 in the work folder."""
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("resume")
    (root / "train.txt").write_text(topics["for"] + "\n\n" + topics["while"])
    common = [*LTG_BERT, "--train-files", str(root / "train.txt"), "--work-dir", str(root / "work")]
    assert main(["pretrain", *common, "--max-steps", "2", "--output", str(root / "first")]) == 0
    assert (root / "work" / "checkpoint-2" / "tokenizer.json").is_file()
    return root, common


@pytest.fixture
def transformers_log():
    """What transformers logs at its default verbosity (the suite's conftest silences it)."""
    from transformers.utils import logging as hf_logging

    level, log = hf_logging.get_verbosity(), io.StringIO()
    handler = logging.StreamHandler(log)
    hf_logging.set_verbosity_warning()
    hf_logging.add_handler(handler)
    yield log
    hf_logging.remove_handler(handler)
    hf_logging.set_verbosity(level)


def test_resume_reuses_the_checkpoints_tokenizer_and_warns_of_no_missing_tied_weight(
        interrupted_run, tmp_path, monkeypatch, capsys, transformers_log):
    import hf_ltg.tokenization

    root, common = interrupted_run
    work = tmp_path / "work"
    shutil.copytree(root / "work", work)

    def no_training(*args, **kwargs):
        raise AssertionError("--resume trained a new tokenizer instead of reusing the checkpoint's")

    monkeypatch.setattr(hf_ltg.tokenization, "train_tokenizer", no_training)
    code = main(["pretrain", *common, "--max-steps", "4", "--resume", "--work-dir", str(work),
                 "--output", str(tmp_path / "resumed")])

    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    assert f"resuming from {work / 'checkpoint-2'}" in captured.out
    assert "missing keys" not in transformers_log.getvalue() + captured.err
    saved = json.loads((tmp_path / "resumed" / "tokenizer.json").read_text())["model"]["vocab"]
    assert saved == json.loads((work / "checkpoint-2" / "tokenizer.json").read_text())["model"]["vocab"]


def test_resume_with_other_sizes_is_a_one_line_error_before_any_work(interrupted_run, tmp_path, capsys):
    root, common = interrupted_run

    code = main(["pretrain", *common, "--hidden-size", "64", "--resume", "--output", str(tmp_path / "out")])

    error = one_line_error(capsys)
    assert code == 2 and "--resume" in error and "hidden_size 32 there, 64 here (--hidden-size)" in error
    assert not (tmp_path / "out").exists()


# --- folders the scoring commands cannot use


@pytest.fixture
def onnx_folder(tmp_path):
    """What `hf-ltg export --onnx` writes: model.onnx, config and tokenizer, no PyTorch weights."""
    folder = tmp_path / "onnx"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(SHIPPED / "ltg-gpt-lm" / name, folder / name)
    (folder / "model.onnx").write_bytes(b"\x08\x07")  # never read: refused on the file names
    return folder


@pytest.mark.parametrize("command", [["eval-pairs", "{model}"], ["generate", "--model", "{model}"],
                                     ["perplexity", "{text}", "--model", "{model}"]])
def test_a_command_given_an_onnx_folder_says_so_in_one_line(command, onnx_folder, tmp_path, capsys):
    (tmp_path / "text.txt").write_text("The cat sat on the mat.")
    argv = [a.format(model=onnx_folder, text=tmp_path / "text.txt") for a in command]

    assert main(argv) == 2

    error = one_line_error(capsys)
    assert "ONNX export" in error and "the checkpoint it was exported from" in error


@pytest.mark.parametrize("command", [["eval-pairs", "{model}"], ["generate", "--model", "{model}"]])
def test_a_command_given_a_classifier_checkpoint_says_so_in_one_line(command, capsys):
    argv = [a.format(model=SHIPPED / "ltg-gpt-classifier") for a in command]

    assert main(argv) == 2

    error = one_line_error(capsys)
    assert "LtgGptForSequenceClassification" in error and "classifier" in error and "language-model" in error
