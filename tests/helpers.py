"""Test utilities shared by the test modules."""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs first in the isolated process: any `import hf_ltg` (direct, or through a modeling file
# that wrongly imports it) raises ModuleNotFoundError, whatever is installed. Only the checkout itself
# leaves sys.path (compared whole: a venv inside it stays).
_BLOCK_HF_LTG = """
import os, sys
sys.modules["hf_ltg"] = None
sys.path[:] = [p for p in sys.path if p not in ("", ".") and os.path.realpath(p) != {repo!r}]
"""


def run_without_hf_ltg(code: str, folder: Path, tmp_path: Path, timeout: int = 600) -> str:
    """Run `code` in a fresh Python process where hf_ltg cannot be imported.

    The checkpoint `folder` is first copied into `tmp_path / "checkpoint"` (so nothing refers to
    the repo); the code sees its path as the variable `CKPT`. Returns stdout; raises with the
    child's stderr on failure.
    """
    ckpt = tmp_path / "checkpoint"
    if ckpt.exists():
        shutil.rmtree(ckpt)
    shutil.copytree(folder, ckpt)
    script = _BLOCK_HF_LTG.format(repo=str(REPO)) + f"CKPT = {str(ckpt)!r}\n" + textwrap.dedent(code)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_VERBOSITY"] = "error"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise AssertionError(f"isolated process failed ({result.returncode}):\n{result.stderr[-6000:]}")
    return result.stdout
