"""The version matrix (scripts/version_matrix.py) covers the releases users get, and the README shows it."""

import importlib.util
import re
import sys

import torch
import transformers
from packaging.version import Version

import hf_ltg
from tests.helpers import REPO


def load_script(name, monkeypatch):
    # matrix_checks.py makes `import hf_ltg` fail for the rest of its process: keep this one's
    monkeypatch.setitem(sys.modules, "hf_ltg", hf_ltg)
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_table():
    """(header cells, first cell of each row) of the README's release table."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| transformers |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line.strip("|").split("|")[0].strip())
    return header, rows


def test_matrix_covers_the_installed_transformers_release(monkeypatch):
    """The development environment gets what `pip install` resolves today: the matrix must run it."""
    matrix = load_script("version_matrix", monkeypatch)
    installed = Version(transformers.__version__).base_version
    assert installed in matrix.VERSIONS
    assert max(map(Version, matrix.VERSIONS)) >= Version(installed)


def test_readme_table_has_a_row_per_matrix_release_and_a_column_per_check(monkeypatch):
    matrix = load_script("version_matrix", monkeypatch)
    header, rows = readme_table()
    assert header == ["transformers", *matrix.COLUMNS]
    assert rows == list(matrix.VERSIONS)
    versions = re.search(r"The model files run on transformers 4\.57\.6 through (\S+)", (REPO / "README.md").read_text())
    assert versions and versions.group(1).rstrip(" (") == max(matrix.VERSIONS, key=Version).rsplit(".", 1)[0]


def test_matrix_calls_generate_on_everything_the_tokenizer_returns(monkeypatch, tiny_tokenizer):
    """As users write it; a tokenizer of transformers 4.x returns token_type_ids too."""
    from transformers import PreTrainedTokenizerFast

    from hf_ltg import LtgGptConfig, LtgGptForCausalLM

    checks_module = load_script("matrix_checks", monkeypatch)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<|endoftext|>",
                                        pad_token="<|endoftext|>",
                                        model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    torch.manual_seed(0)
    model = LtgGptForCausalLM(LtgGptConfig(vocab_size=300, max_position_embeddings=64, hidden_size=32,
                                           num_hidden_layers=1, num_attention_heads=2, eos_token_id=0,
                                           pad_token_id=0)).eval()
    checks = checks_module.Checks(reference=None)
    checks_module.check_user_generate(model, tokenizer, checks)
    assert checks.results["generate(**tokenizer(text))"] == [True, ""]
