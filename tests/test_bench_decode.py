"""The decode benchmark runs end to end (`--quick`); it measures speed, it never asserts it."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_decode.py"


@pytest.mark.slow
def test_quick_decode_benchmark_prints_every_section_with_agreeing_fp32_rows():
    rows = "ours-fp32,ours-fp32-dynamic,ours-int8wo,ours-int4,hf-fp32,llama-f32,ort-fp32"
    result = subprocess.run([sys.executable, str(BENCHMARK), "--quick", "--rows", rows], capture_output=True,
                            text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "memory bandwidth" in out and "load average" in out
    for section in ("b1: batch 1", "b8: batch 8", "long: batch 1"):
        assert section in out, out
    for line in out.splitlines():  # every fp32 engine present decodes the same greedy tokens
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 3 and cells[1] in ("ours-fp32", "ours-fp32-dynamic", "hf-fp32", "llama-f32", "ort-fp32"):
            assert cells[-2] == "8/8", line
    for engine, package in (("llama.cpp", "llama_cpp"), ("ONNX Runtime GenAI", "onnxruntime_genai")):
        present = subprocess.run([sys.executable, "-c", f"import {package}"], capture_output=True).returncode == 0
        assert (f"| {engine}" in out) == present  # a missing engine is skipped, with its install command
