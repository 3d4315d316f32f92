"""A run killed (SIGKILL) while it writes a checkpoint loses nothing: every checkpoint folder left is
complete, --resume continues from the last one, and the final model equals an uninterrupted run's."""

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from hf_ltg.cli import main
from hf_ltg.training import INCOMPLETE_CHECKPOINTS, checkpoint_problem, checkpoints_by_step

TINY = ["--hidden-size", "32", "--num-layers", "2", "--num-heads", "2", "--vocab-size", "512", "--max-length", "32",
        "--batch-size", "8", "--logging-steps", "1", "--eval-steps", "1000", "--max-steps", "8", "--save-steps", "4",
        "--dropout", "0.1", "--seed", "3"]

# Runs `hf-ltg` with one write slowed down: the process prints MARKER when it reaches the moment
# and sleeps there until the test kills it. Only this test patches; the package has no such hook.
KILLABLE = textwrap.dedent("""
    import os, sys, time
    target, _, step = os.environ["SLOW_WRITE"].partition(":")
    def sleep_here(where):
        print("MARKER", where, flush=True)
        time.sleep(600)
    if target == "checkpoint":  # inside the Trainer's checkpoint write: weights and optimizer in, RNG and state not
        from transformers import Trainer
        save_rng = Trainer._save_rng_state
        def slow_save_rng(self, output_dir):
            save_rng(self, output_dir)
            if self.state.global_step == int(step):
                sleep_here(output_dir)
        Trainer._save_rng_state = slow_save_rng
    else:  # inside the final --output write: everything written to the temporary folder, not yet renamed
        import hf_ltg.checkpoint as checkpoint
        apply_umask = checkpoint._apply_umask
        def slow_apply_umask(folder):
            apply_umask(folder)
            sleep_here(folder)
        checkpoint._apply_umask = slow_apply_umask
    from hf_ltg.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def run_cli(*argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in argv])
    return code, out.getvalue()


def run_until_killed(argv, slow_write: str, cwd) -> str:
    """Start `hf-ltg ARGV` in a subprocess, SIGKILL it at `slow_write` ("checkpoint:STEP" or "output"),
    return what it printed."""
    env = {**os.environ, "SLOW_WRITE": slow_write, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    log = cwd / f"killed-{slow_write.replace(':', '-')}.log"
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", KILLABLE, *map(str, argv)], stdout=subprocess.PIPE,
                                   stderr=stderr, text=True, env=env, cwd=cwd)
        printed = []
        try:
            for line in process.stdout:
                printed.append(line)
                if line.startswith("MARKER"):
                    os.kill(process.pid, signal.SIGKILL)
                    break
            code = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    assert code == -signal.SIGKILL, f"exit {code}, never reached the slow write:\n{''.join(printed)}{log.read_text()[-3000:]}"
    return "".join(printed)


def assert_complete_and_loadable(work):
    from transformers import AutoModelForCausalLM

    checkpoints = checkpoints_by_step(work)
    assert checkpoints
    for checkpoint in checkpoints:
        assert checkpoint_problem(checkpoint) is None, checkpoint
        assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"} <= set(os.listdir(checkpoint))
        AutoModelForCausalLM.from_pretrained(checkpoint)
    return [c.name for c in checkpoints]


@pytest.fixture
def small_text(tmp_path):
    from pydoc_data.topics import topics

    path = tmp_path / "small.txt"
    path.write_text(topics["for"] + "\n\n" + topics["while"])
    return path


@pytest.mark.slow
def test_run_killed_while_writing_a_checkpoint_and_its_output_resumes_to_the_uninterrupted_model(small_text, tmp_path):
    common = ["pretrain", *TINY, "--train-files", small_text]
    code, full = run_cli(*common, "--output", tmp_path / "full", "--work-dir", tmp_path / "work-full")
    assert code == 0, full

    # Killed while writing checkpoint-8 (after checkpoint-4): checkpoint-4 is the only checkpoint-*
    # folder; the partial checkpoint-8 lies in the work folder's hidden .incomplete folder.
    work, out = tmp_path / "work", tmp_path / "out"
    printed = run_until_killed([*common, "--output", out, "--work-dir", work], "checkpoint:8", tmp_path)
    assert f"MARKER {work / INCOMPLETE_CHECKPOINTS / 'checkpoint-8'}" in printed
    assert assert_complete_and_loadable(work) == ["checkpoint-4"]
    assert not (work / INCOMPLETE_CHECKPOINTS / "checkpoint-8" / "trainer_state.json").exists()
    assert not out.exists()

    # Resumed from checkpoint-4, then killed while writing the final --output: OUT does not exist
    # (only the hidden temporary folder beside it), and both checkpoints are complete.
    printed = run_until_killed([*common, "--resume", "--output", out, "--work-dir", work], "output", tmp_path)
    assert f"resuming from {work / 'checkpoint-4'}" in printed
    assert not out.exists()
    assert [p.name.startswith(".out.tmp-") for p in tmp_path.iterdir() if p.name.startswith(".out")] == [True]
    assert assert_complete_and_loadable(work) == ["checkpoint-4", "checkpoint-8"]
    assert not (work / INCOMPLETE_CHECKPOINTS).exists()

    code, resumed = run_cli(*common, "--resume", "--output", out, "--work-dir", work)
    assert code == 0, resumed
    assert f"resuming from {work / 'checkpoint-8'}" in resumed
    expected, got = load_file(tmp_path / "full" / "model.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


def test_resume_skips_checkpoints_written_in_place_and_cut_short(small_text, tmp_path):
    """A checkpoint-N folder without trainer_state.json (written in place by another tool or an older
    hf_ltg, and cut short) or with a damaged file is named and skipped; the last complete one is taken."""
    common = ["pretrain", *TINY, "--max-steps", "4", "--train-files", small_text]
    work = tmp_path / "work"
    code, out = run_cli(*common, "--output", tmp_path / "first", "--work-dir", work)
    assert code == 0, out
    shutil.copytree(work / "checkpoint-4", work / "checkpoint-6")
    (work / "checkpoint-6" / "trainer_state.json").unlink()
    shutil.copytree(work / "checkpoint-4", work / "checkpoint-7")
    weights = work / "checkpoint-7" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])

    code, out = run_cli(*common, "--resume", "--output", tmp_path / "second", "--work-dir", work)
    assert code == 0, out
    assert f"--resume: skipping the incomplete {work / 'checkpoint-7'} ({weights} is not a readable safetensors file" in out
    assert (f"--resume: skipping the incomplete {work / 'checkpoint-6'} (no trainer_state.json, "
            "which the Trainer writes last)") in out
    assert f"resuming from {work / 'checkpoint-4'}" in out


def test_resume_without_a_complete_checkpoint_says_so(small_text, tmp_path, capsys):
    (tmp_path / "work" / "checkpoint-2").mkdir(parents=True)
    code = main(["pretrain", *map(str, TINY), "--train-files", str(small_text), "--resume",
                 "--output", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work")])
    captured = capsys.readouterr()
    assert code == 2
    assert f"skipping the incomplete {tmp_path / 'work' / 'checkpoint-2'}" in captured.out
    assert captured.err.strip() == (f"hf-ltg pretrain: error: --resume: no complete checkpoint-* folder in "
                                    f"{tmp_path / 'work'} to resume from; run without --resume.")
    assert not (tmp_path / "out").exists()
