"""The prepared GPU check (benchmarks/gpu_check.py) as far as it goes without a GPU: its --dry-run
checks the carried wheels and their size, prints the commands, collects the cuda tests and runs the
benchmark's GPU plan."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from helpers import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_wheels(folder, *names):
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip: only names and sizes are read
    return folder


def test_wheels_that_would_not_do_are_refused_with_the_fix(tmp_path):
    gpu_check = load_gpu_check()
    (missing,) = gpu_check.check_wheels(tmp_path / "absent")
    assert "scripts/device_wheels.py" in missing
    old = fake_wheels(tmp_path / "old", "transformers-5.17.0-py3-none-any.whl", "peft-0.21.2-py3-none-any.whl")
    (problem,) = gpu_check.check_wheels(old)
    assert "transformers 5.17" in problem and ">= 5.23" in problem
    torch_too = fake_wheels(tmp_path / "torch", "transformers-5.24.0-py3-none-any.whl",
                            "peft-0.21.2-py3-none-any.whl", "torch-2.13.0-cp312-cp312-manylinux_2_28_x86_64.whl")
    (problem,) = gpu_check.check_wheels(torch_too)
    assert "torch wheel" in problem
    good = fake_wheels(tmp_path / "good", "transformers-5.24.0-py3-none-any.whl", "peft-0.21.2-py3-none-any.whl")
    assert gpu_check.check_wheels(good) == []


def test_missing_wheels_stop_the_dry_run_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--wheels", str(tmp_path / "none")],
                            capture_output=True, text=True, timeout=120, env=dict(os.environ, OUT=str(tmp_path / "out")))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("gpu_check: error: no wheels in")
    assert "scripts/device_wheels.py" in result.stderr


@pytest.mark.slow
def test_dry_run_checks_the_plan_without_a_gpu(tmp_path):
    wheels = fake_wheels(tmp_path / "wheels", "transformers-5.24.0-py3-none-any.whl", "peft-0.21.2-py3-none-any.whl")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--wheels", str(wheels)], cwd=REPO,
                            capture_output=True, text=True, timeout=600, env=dict(os.environ, OUT=str(out)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for step in ("install:", "pytest:", "bench:", "-m cuda tests/test_cuda.py", "--device cuda"):
        assert step in result.stdout, step
    summary = json.loads((out / "gpu_check.json").read_text())
    collected = summary["steps"]["pytest --collect-only -m cuda"]["collected"]
    assert collected >= 20, collected  # both families' forward, training, compile, generate, checkpoint tests
    assert summary["carried_mib"] < 64
    plan = json.loads((out / "bench-plan.json").read_text())
    assert plan["seq"] == 1024 and plan["generate_batches"] == "1,64"
    assert "train-compiled gpt2-small" in plan["plan"] and "train-eager gpt2-medium" in plan["plan"]
    assert "dry run" in (out / "gpu_check.md").read_text()
