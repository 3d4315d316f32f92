"""The training commands end to end: pretrain (the main job, tiny), fine-tuning, generate, perplexity."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_ltg.cli import main
from tests.helpers import REPO, run_without_hf_ltg

TINY = ["--hidden-size", "32", "--num-layers", "2", "--num-heads", "2", "--vocab-size", "512",
        "--max-length", "32", "--batch-size", "8", "--logging-steps", "2", "--eval-steps", "1000"]
CHECKPOINT_FILES = {"config.json", "configuration_ltg_gpt.py", "modeling_ltg_gpt.py", "model.safetensors",
                    "tokenizer.json", "tokenizer_config.json", "generation_config.json"}


def run_cli(*argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in argv])
    return code, out.getvalue()


def leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    """A tiny variant of the main job: the default corpus, a tokenizer and a GPT trained from scratch."""
    root = tmp_path_factory.mktemp("main_job")
    code, out = run_cli("pretrain", *TINY, "--max-steps", "6", "--validation-fraction", "0.03",
                        "--output", root / "ckpt", "--work-dir", root / "work")
    assert code == 0, out
    return root / "ckpt", out


@pytest.fixture
def small_text(tmp_path):
    from pydoc_data.topics import topics

    path = tmp_path / "small.txt"
    path.write_text(topics["for"] + "\n\n" + topics["while"])
    return path


def test_main_job_reports_perplexity_against_unigram_and_a_sample(main_job):
    folder, out = main_job
    assert "on pydoc_data.topics" in out
    match = re.search(r"validation perplexity ([\d.]+) over ([\d,]+) tokens \(unigram baseline ([\d.]+)", out)
    assert match and float(match[1]) > 1 and float(match[3]) > 1
    assert "sample: The for statement is used to" in out
    assert set(os.listdir(folder)) >= CHECKPOINT_FILES
    assert leftovers(folder.parent) == []
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_ltg_gpt.LtgGptForCausalLM"
    assert (folder.parent / "work" / "training_curves.png").is_file()


@pytest.mark.slow
def test_main_job_checkpoint_loads_in_the_text_generation_pipeline_without_hf_ltg(main_job, tmp_path):
    out = run_without_hf_ltg(
        """
        from transformers import pipeline
        generator = pipeline("text-generation", model=CKPT, trust_remote_code=True)
        result = generator("The for statement", max_new_tokens=8, do_sample=False)
        print(type(generator.model).__name__)
        print(result[0]["generated_text"])
        """,
        main_job[0],
        tmp_path,
    )
    lines = out.strip().splitlines()
    assert lines[0] == "LtgGptForCausalLM" and lines[1].startswith("The for statement")


def test_generate_is_repeatable_and_perplexity_scores_a_file(main_job, small_text):
    folder = main_job[0]
    greedy = [run_cli("generate", "The for", "--model", folder, "--temperature", "0", "--max-new-tokens", "6")
              for _ in range(2)]
    assert greedy[0] == greedy[1] and greedy[0][0] == 0 and greedy[0][1].startswith("The for")
    code, out = run_cli("generate", "The for", "--model", folder, "--top-k", "5", "--top-p", "0.9",
                        "--num-samples", "2", "--max-new-tokens", "4")
    assert code == 0 and out.count("--- sample") == 2
    code, out = run_cli("perplexity", small_text, "--model", folder, "--stride", "16")
    assert code == 0 and re.search(r"perplexity [\d.]+ \(mean NLL [\d.]+ nats\) over [\d,]+ tokens", out)


def test_pretrain_continues_from_a_checkpoint(main_job, small_text, tmp_path):
    code, out = run_cli("pretrain", "--init-from", main_job[0], "--train-files", small_text, "--max-steps", "2",
                        "--max-length", "32", "--eval-steps", "1000", "--output", tmp_path / "more",
                        "--work-dir", tmp_path / "work")
    assert code == 0, out
    assert (tmp_path / "more" / "tokenizer.json").read_text() == (main_job[0] / "tokenizer.json").read_text()
    before, after = load_file(main_job[0] / "model.safetensors"), load_file(tmp_path / "more" / "model.safetensors")
    assert before.keys() == after.keys()
    assert not torch.equal(before["transformer.wpe.weight"], after["transformer.wpe.weight"])


def test_finetune_cls_on_sms_spam_layout_writes_labels_into_the_config(main_job, tmp_path):
    rows = [("ham", "Are we still meeting for lunch tomorrow?"), ("spam", "WIN a FREE prize now! Call today"),
            ("ham", "See you at the station at six."), ("spam", "Urgent! Claim your cash reward, text WIN")] * 4
    for name in ("train.tsv", "valid.tsv"):
        (tmp_path / name).write_text("".join(f"{label}\t{text}\n" for label, text in rows))
    code, out = run_cli("finetune-cls", "--model", main_job[0], "--train-file", tmp_path / "train.tsv",
                        "--validation-file", tmp_path / "valid.tsv", "--max-length", "32", "--max-steps", "3",
                        "--freeze", "last_block", "--output", tmp_path / "cls", "--work-dir", tmp_path / "work")
    assert code == 0, out
    assert re.search(r"validation accuracy [\d.]+ \(macro-F1 [\d.]+\); majority-class baseline 0.5000", out)
    config = json.loads((tmp_path / "cls" / "config.json").read_text())
    assert config["id2label"] == {"0": "ham", "1": "spam"} and config["label2id"] == {"ham": 0, "spam": 1}
    assert config["architectures"] == ["LtgGptForSequenceClassification"]
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "cls")
    assert model.config.pad_token_id is not None


def test_finetune_instruct_reports_validation_loss_before_and_after(main_job, tmp_path):
    records = [{"instruction": "What does the for statement do?", "input": "", "output": "It iterates."},
               {"instruction": "Name the loop.", "input": "while x: pass", "output": "A while loop."}] * 4
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "valid.json").write_text(json.dumps(records[:2]))
    code, out = run_cli("finetune-instruct", "--model", main_job[0], "--train-file", tmp_path / "train.jsonl",
                        "--validation-file", tmp_path / "valid.json", "--max-length", "32", "--max-steps", "3",
                        "--output", tmp_path / "ins", "--work-dir", tmp_path / "work")
    assert code == 0, out
    assert re.search(r"validation loss [\d.]+ before, [\d.]+ after fine-tuning", out)
    assert set(os.listdir(tmp_path / "ins")) >= CHECKPOINT_FILES


def test_resuming_the_command_from_its_last_checkpoint_gives_the_same_model(small_text, tmp_path):
    common = ["pretrain", *TINY, "--train-files", small_text, "--max-steps", "8", "--save-steps", "4",
              "--logging-steps", "1", "--dropout", "0.1"]
    code, full = run_cli(*common, "--output", tmp_path / "full", "--work-dir", tmp_path / "work")
    assert code == 0, full
    # An interruption after step 4: the run's last checkpoint is checkpoint-4.
    import shutil

    shutil.rmtree(tmp_path / "work" / "checkpoint-8")
    code, resumed = run_cli(*common, "--resume", "--output", tmp_path / "resumed", "--work-dir", tmp_path / "work")
    assert code == 0, resumed
    losses = [json.loads(Path(re.search(r"logged values in (\S+)", text)[1]).read_text()) for text in (full, resumed)]
    assert len(losses[0]) == 8 and losses[0] == losses[1]
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BAD_INPUTS = {
    "missing file": (lambda d, ck: ["pretrain", "--train-files", d / "missing.txt"], "missing.txt does not exist"),
    "empty corpus": (lambda d, ck: ["pretrain", "--train-files", write(d / "empty.txt", "\n  \n")],
                     "empty.txt contain no text"),
    "malformed csv": (lambda d, ck: ["finetune-cls", "--model", ck,
                                     "--train-file", write(d / "bad.csv", 'text,label\n"a",x\n"b",y,z\n'),
                                     "--validation-file", write(d / "v.csv", 'text,label\n"a",x\n')],
                      "bad.csv line 3: expected 2 fields separated by ','"),
    "malformed jsonl": (lambda d, ck: ["finetune-cls", "--model", ck,
                                       "--train-file", write(d / "bad.jsonl", '{"text": "a", "label": "x"}\n{"text": \n'),
                                       "--validation-file", write(d / "v.jsonl", '{"text": "a", "label": "x"}\n')],
                        "bad.jsonl line 2: not valid JSON"),
    "unknown label": (lambda d, ck: ["finetune-cls", "--model", ck,
                                     "--train-file", write(d / "t.tsv", "ham\thi\nspam\twin\n"),
                                     "--validation-file", write(d / "v.tsv", "ham\thello\neggs\tbacon\n")],
                      "v.tsv line 2: label 'eggs' is not in the label mapping ['ham', 'spam']"),
    "instruction without output": (
        lambda d, ck: ["finetune-instruct", "--model", ck,
                       "--train-file", write(d / "i.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n'),
                       "--validation-file", write(d / "iv.jsonl", '{"instruction": "a", "output": "b"}\n')],
        "i.jsonl line 2: the record has no 'output' field"),
    "instruction without instruction": (
        lambda d, ck: ["finetune-instruct", "--model", ck,
                       "--train-file", write(d / "i.json", '[{"instruction": "a", "output": "b"},\n {"output": "c"}]'),
                       "--validation-file", write(d / "iv.jsonl", '{"instruction": "a", "output": "b"}\n')],
        "i.json line 2: the record has no 'instruction' field"),
    "max_length < 2": (lambda d, ck: ["pretrain", "--init-from", ck, "--max-length", "1"],
                       "max_length must be an integer >= 2"),
    "stride < 1": (lambda d, ck: ["pretrain", "--init-from", ck, "--max-length", "32", "--stride", "0"],
                   "stride must be an integer >= 1"),
    "tokenizer larger than the model": (lambda d, ck: ["pretrain", "--init-from", ck, "--tokenizer", d / "bigtok"],
                                        "tokenizer has 600 tokens but the model's vocab_size is 512"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_reported_with_file_line_and_problem_and_nothing_is_written(case, main_job, tmp_path, capsys):
    from hf_ltg.tokenization import train_tokenizer

    data = tmp_path / "data"
    data.mkdir()
    if case == "tokenizer larger than the model":
        train_tokenizer(iterator=[f"word{i} " * 3 for i in range(500)], vocab_size=600).save_pretrained(data / "bigtok")
    make_args, message = BAD_INPUTS[case]
    out_dir = tmp_path / "outputs"
    out_dir.mkdir()
    argv = [str(a) for a in make_args(data, main_job[0])]
    code = main([*argv, "--output", str(out_dir / "ckpt"), "--work-dir", str(out_dir / "work")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err, err
    assert os.listdir(out_dir) == []  # no checkpoint, no temporary folder, no Trainer folder


@pytest.mark.slow
def test_torchrun_two_processes_train_with_equal_losses_and_write_one_checkpoint(small_text, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "hf_ltg", "pretrain",
         *TINY, "--train-files", str(small_text), "--max-steps", "4", "--logging-steps", "1", "--eval-steps", "2",
         "--output", str(tmp_path / "ckpt"), "--work-dir", str(tmp_path / "work")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    files = dict(re.findall(r"\[rank (\d)/2\] training loss .* logged values in (\S+)", result.stdout))
    losses = {rank: json.loads(Path(path).read_text()) for rank, path in files.items()}
    assert set(losses) == {"0", "1"} and losses["0"] == losses["1"] and len(losses["0"]) == 4
    assert result.stdout.count("wrote ") == 1
    assert set(os.listdir(tmp_path / "ckpt")) >= CHECKPOINT_FILES
    assert leftovers(tmp_path) == []
