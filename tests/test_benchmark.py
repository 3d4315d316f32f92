"""The GPT benchmark runs end to end (`--quick`); it measures speed, it never asserts it."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gpt.py"


@pytest.mark.slow
def test_quick_benchmark_runs_and_prints_the_table():
    result = subprocess.run([sys.executable, str(BENCHMARK), "--quick"], capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    table = result.stdout.split("bench_gpt results:")[-1]
    for row in ("train step fp32", "train step bf16 autocast", "generate b1 fp32", "generate b8 bf16",
                "train step peak memory fp32"):
        assert f"| {row} " in table, f"row {row!r} missing from the table:\n{result.stdout}"
    assert "ours/hf best" in table


def test_alternated_training_harness_runs_with_a_probe_switched_off():
    script = BENCHMARK.parent / "train_alternated.py"
    result = subprocess.run([sys.executable, str(script), "--tiny", "--steps", "1", "--mask", "--dtypes", "fp32",
                             "--off", "onednn_training_linear"], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "probes off: onednn_training_linear" in result.stdout
    lines = [line for line in result.stdout.splitlines() if "ratio" in line]
    assert [line.split(":")[0] for line in lines] == ["fp32", "fp32 masked"], result.stdout
