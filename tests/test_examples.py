"""Every script in examples/ runs, on tiny settings, as a newcomer would run it."""

import os
import subprocess
import sys

import pytest
from helpers import REPO

# example -> a line its output must contain
EXPECTED = {
    "train_with_trainer.py": "sample: 'The for statement",
    "pipelines.py": "fill-mask: [",
    "lora.py": "adapter vs merged checkpoint: max |logit difference| = ",
    "convert_gpt2.py": "greedy continuations identical: True",
    "push_to_hub.py": "dry run: would upload 11 file(s)",  # + kernels_ltg_gpt.py, int8_ltg_gpt.py, weight_only_ltg_gpt.py,
    "pretrain_hybrid.py": "hybrid: masked accuracy ",
    "eval_pairs.py": "first pair, masked PLL: ",
}


CHECKPOINTS = ("ltg-gpt-lm", "ltg-gpt-classifier", "ltg-bert-mlm")


def test_every_example_is_run_by_this_module():
    assert sorted(p.name for p in (REPO / "examples").glob("*.py")) == sorted(EXPECTED)


@pytest.mark.slow
@pytest.mark.parametrize("example", sorted(EXPECTED))
def test_example_runs_with_tiny_settings(example, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               HF_MODULES_CACHE=str(tmp_path / "modules"))
    # pipelines.py runs on the committed checkpoints, the others build random tiny models
    arguments = [str(REPO / "checkpoints" / n) for n in CHECKPOINTS] if example == "pipelines.py" else ["--tiny"]
    result = subprocess.run([sys.executable, str(REPO / "examples" / example), *arguments], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert EXPECTED[example] in result.stdout, result.stdout[-3000:]
    if example == "pipelines.py":
        for line in ("text-generation: The for statement", "text-classification: [", "fill-mask: ["):
            assert line in result.stdout
    if example in ("lora.py", "convert_gpt2.py"):
        differences = [float(line.rsplit("= ", 1)[1]) for line in result.stdout.splitlines() if "max |logit" in line]
        assert differences and max(differences) < 1e-5, differences
