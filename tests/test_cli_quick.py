"""`hf-ltg --help` is quick and quiet; `import hf_ltg` prints nothing and still registers the families."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from hf_ltg.cli import COMMAND_MODULES

HELP_SECONDS = 1.5
# The console script as pip installs it; without an install, the module it runs.
CONSOLE = [shutil.which("hf-ltg")] if shutil.which("hf-ltg") else [sys.executable, "-c",
                                                                    "import sys, hf_ltg_cli; sys.exit(hf_ltg_cli.main())"]


def run(argv, code=None):
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    command = [sys.executable, "-c", code] if code else CONSOLE + argv
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)
    return result, time.perf_counter() - start


@pytest.mark.parametrize("command", [None, *(m.replace("_", "-") for m in COMMAND_MODULES)])
def test_help_answers_within_a_second_and_a_half_without_output_on_stderr(command):
    argv = ["--help"] if command is None else [command, "--help"]
    # The best of three: a loaded CI machine may stall one start.
    runs = [run(argv) for _ in range(3)]
    result, seconds = min(runs, key=lambda r: r[1])
    assert result.returncode == 0, result.stderr
    assert "usage: hf-ltg" in result.stdout
    assert result.stderr == ""
    assert seconds < HELP_SECONDS, f"hf-ltg {' '.join(argv)} took {seconds:.2f} s"


def test_help_imports_neither_torch_nor_transformers():
    result, _ = run([], code=(
        "import sys, contextlib, io, hf_ltg_cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    hf_ltg_cli.main(['pretrain', '--help'])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n"
    ))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_import_hf_ltg_prints_nothing_and_registers_the_families():
    result, _ = run([], code=(
        "import hf_ltg\n"
        "from transformers import AutoConfig, AutoModelForCausalLM\n"
        "from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as targets\n"
        "config = AutoConfig.for_model('ltg_gpt', hidden_size=32, num_hidden_layers=1, num_attention_heads=2,"
        " vocab_size=64, max_position_embeddings=16)\n"
        "print(type(AutoModelForCausalLM.from_config(config)).__name__, 'ltg_bert' in targets)\n"
    ))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.split() == ["LtgGptForCausalLM", "True"]


def test_a_command_run_from_the_console_script_registers_the_families():
    result, _ = run([], code=(
        "import hf_ltg_cli, hf_ltg\n"
        "assert 'LtgGptConfig' not in vars(hf_ltg)  # deferred while the arguments are parsed\n"
        "from hf_ltg import cli\n"
        "parser = cli.build_parser()\n"
        "import sys\n"
        "sys.argv = ['hf-ltg', 'doctor', '/nonexistent-folder']\n"
        "code = hf_ltg_cli.main()\n"
        "from transformers import AutoConfig\n"
        "print(code, type(AutoConfig.for_model('ltg_bert')).__name__)\n"
    ))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["2", "LtgBertConfig"]
    assert "/nonexistent-folder" in result.stderr  # the one-line error of a bad argument
