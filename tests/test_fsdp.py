"""FSDP on 2 CPU processes (gloo): torch FSDP2 through accelerate's plugin, as the Trainer drives it.

Each FSDP run is compared with one process on the same global batch (2 processes x 2 = 1 x 4),
without dropout (each process would draw its own masks). Tolerances: logged losses within 1e-4,
weights after 4 AdamW steps within 1e-4 (the processes sum gradients in another order; measured:
losses within 1e-6, weights within 2.5e-6).
"""

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_ltg.cli import main
from hf_ltg.training import checkpoints_by_step
from tests.helpers import REPO, run_without_hf_ltg

LOSS_TOLERANCE = 1e-4
WEIGHT_TOLERANCE = 1e-4
TINY = ["--hidden-size", "32", "--num-layers", "2", "--num-heads", "2", "--vocab-size", "512", "--max-length", "32",
        "--dropout", "0", "--max-steps", "4", "--logging-steps", "1", "--eval-steps", "2", "--time-limit", "0"]


def pretrain_in_one_process(*argv) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["pretrain", *map(str, argv)]) == 0
    return out.getvalue()


def pretrain_in_two_processes(*argv, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "hf_ltg",
         "pretrain", *map(str, argv)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-6000:]
    return result.stdout


def logged_losses(work_dir: Path) -> list[float]:
    """The training losses logged up to the work folder's last checkpoint, unrounded."""
    state = json.loads((checkpoints_by_step(work_dir)[-1] / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def assert_one_complete_checkpoint(folder: Path, stdout: str) -> None:
    """Written once (by the main process): full weights in one safetensors file, nothing per rank."""
    assert stdout.count("wrote ") == 1
    files = set(os.listdir(folder))
    assert "model.safetensors" in files and "config.json" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".index.json")) or "rank" in f or "fsdp" in f]


def test_fsdp_in_a_single_process_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code = main(["pretrain", "--fsdp", "--output", str(tmp_path / "ckpt"), "--work-dir", str(tmp_path / "work")])
    assert code == 2
    assert "--fsdp shards the model across processes, but this is a single process (WORLD_SIZE=1); launch it " \
           "with `torchrun --nproc_per_node=N -m hf_ltg pretrain --fsdp ...`" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("text") / "small.txt"
    path.write_text(topics["for"] + "\n\n" + topics["while"])
    return path


@pytest.fixture(scope="module")
def gpt_runs(text, tmp_path_factory):
    """`hf-ltg pretrain` of a tiny GPT in one process, and with --fsdp in two (2 + 2 steps' checkpoints)."""
    root = tmp_path_factory.mktemp("gpt")
    pretrain_in_one_process(*TINY, "--batch-size", "4", "--train-files", text,
                            "--output", root / "one" / "ckpt", "--work-dir", root / "one" / "work")
    stdout = pretrain_in_two_processes("--fsdp", *TINY, "--batch-size", "2", "--train-files", text,
                                       "--output", root / "fsdp" / "ckpt", "--work-dir", root / "fsdp" / "work", cwd=root)
    return root, stdout


@pytest.mark.slow
def test_fsdp_pretrain_logs_the_losses_of_one_process_on_the_same_global_batch(gpt_runs):
    root, stdout = gpt_runs
    one, fsdp = logged_losses(root / "one" / "work"), logged_losses(root / "fsdp" / "work")
    assert len(one) == 4 and fsdp == pytest.approx(one, abs=LOSS_TOLERANCE)
    ranks = dict(re.findall(r"\[rank (\d)/2\] training loss .* logged values in (\S+)", stdout))
    assert set(ranks) == {"0", "1"}
    assert json.loads((root / ranks["0"]).read_text()) == json.loads((root / ranks["1"]).read_text())


@pytest.mark.slow
def test_fsdp_pretrain_writes_one_complete_checkpoint_that_loads_without_hf_ltg(gpt_runs, tmp_path):
    root, stdout = gpt_runs
    fsdp_folder, one_folder = root / "fsdp" / "ckpt", root / "one" / "ckpt"
    assert_one_complete_checkpoint(fsdp_folder, stdout)
    weights, reference = load_file(fsdp_folder / "model.safetensors"), load_file(one_folder / "model.safetensors")
    assert max_difference(weights, reference) < WEIGHT_TOLERANCE
    # The Trainer's own checkpoints hold the full weights too (and the model's code, not FSDP's).
    step_4 = root / "fsdp" / "work" / "checkpoint-4"
    assert max_difference(load_file(step_4 / "model.safetensors"), weights) == 0
    assert (step_4 / "pytorch_model_fsdp.bin").is_file()  # the Trainer's FSDP resume state: FSDP trained
    assert {p.name for p in step_4.glob("*.py")} == {p.name for p in fsdp_folder.glob("*.py")}

    out = run_without_hf_ltg(
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained(CKPT, trust_remote_code=True)
        tokenizer = AutoTokenizer.from_pretrained(CKPT)
        ids = tokenizer("The for statement is used to iterate over a sequence.", return_tensors="pt").input_ids
        with torch.no_grad():
            print("result:", type(model).__name__, model(ids, labels=ids).loss.item())
        """,
        fsdp_folder, tmp_path,
    )
    name, loss = out.split("result:")[-1].split()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(one_folder), AutoTokenizer.from_pretrained(one_folder)
    ids = tokenizer("The for statement is used to iterate over a sequence.", return_tensors="pt").input_ids
    with torch.no_grad():
        one_loss = model(ids, labels=ids).loss.item()
    assert name == "LtgGptForCausalLM" and float(loss) == pytest.approx(one_loss, abs=1e-3)


@pytest.mark.slow
def test_fsdp_pretrain_resumed_from_its_step_2_checkpoint_continues_as_the_uninterrupted_run(gpt_runs, text, tmp_path):
    root, _ = gpt_runs
    work = tmp_path / "work"
    shutil.copytree(root / "fsdp" / "work", work)
    shutil.rmtree(work / "checkpoint-4")  # as if the run had stopped before saving step 4
    stdout = pretrain_in_two_processes("--fsdp", *TINY, "--batch-size", "2", "--train-files", text, "--resume",
                                       "--output", tmp_path / "ckpt", "--work-dir", work, cwd=tmp_path)
    assert f"resuming from {work / 'checkpoint-2'}" in stdout
    assert logged_losses(work) == pytest.approx(logged_losses(root / "fsdp" / "work"), abs=LOSS_TOLERANCE)
    resumed, uninterrupted = load_file(tmp_path / "ckpt" / "model.safetensors"), \
        load_file(root / "fsdp" / "ckpt" / "model.safetensors")
    assert max_difference(resumed, uninterrupted) < 1e-5


@pytest.mark.slow
def test_fsdp_ltg_bert_pretrain_writes_one_checkpoint_that_loads_without_hf_ltg(text, tmp_path):
    stdout = pretrain_in_two_processes("--arch", "ltg-bert", "--fsdp", *TINY, "--batch-size", "2",
                                       "--train-files", text, "--output", tmp_path / "ckpt",
                                       "--work-dir", tmp_path / "work", cwd=tmp_path)
    assert "validation masked-token loss" in stdout and "fill-mask:" in stdout
    assert_one_complete_checkpoint(tmp_path / "ckpt", stdout)
    out = run_without_hf_ltg(
        """
        from transformers import pipeline
        fill = pipeline("fill-mask", model=CKPT, trust_remote_code=True)
        print("result:", type(fill.model).__name__, len(fill("The for [MASK] is used to iterate.", top_k=3)))
        """,
        tmp_path / "ckpt", tmp_path,
    )
    assert out.split("result:")[-1].split() == ["LtgBertForMaskedLM", "3"]


@pytest.mark.slow
def test_fsdp_trainer_gives_the_losses_of_one_process_for_both_families_on_fixed_batches(tmp_path):
    from tests import fsdp_fixed_batches

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         fsdp_fixed_batches.__file__, tmp_path / "two"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-6000:]
    two_processes = json.loads(result.stdout.strip().splitlines()[-1])
    for family in fsdp_fixed_batches.FAMILIES:
        one, one_process_units = fsdp_fixed_batches.losses(family, str(tmp_path / "one"))
        fsdp, units = two_processes[family]
        assert units == 2 and one_process_units == 0  # each block (`_no_split_modules`) is an FSDP unit
        assert len(one) == fsdp_fixed_batches.STEPS and fsdp == pytest.approx(one, abs=LOSS_TOLERANCE), family
