"""Tokenizers that hf_ltg writes load like stock ones: no tokenizer code, no prompt, no warning."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hf_ltg.tokenization import (
    PORTABLE_TOKENIZER_CLASS,
    make_tokenizer_config_portable,
    save_tokenizer,
    train_tokenizer,
)
from tests.helpers import _BLOCK_HF_LTG, REPO

CHECKPOINTS = sorted(p.parent for p in (REPO / "checkpoints").glob("*/config.json"))
TEXTS = ["the cat sat on the mat", "a dog ran in the park", "the bird sang a song"] * 20


def run_quietly(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`code` in a fresh process without hf_ltg, stdin closed (a prompt cannot wait) and transformers'
    default verbosity (warnings show)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRANSFORMERS_VERBOSITY")}
    env.update(HF_MODULES_CACHE=str(tmp_path / "hf_modules"), HF_HUB_OFFLINE="1")
    script = _BLOCK_HF_LTG.format(repo=str(REPO)) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("folder", CHECKPOINTS, ids=lambda p: p.name)
def test_shipped_tokenizer_loads_silently_without_hf_ltg(folder, tmp_path):
    result = run_quietly(f"""
        import json
        from transformers import AutoConfig, AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained({str(folder)!r}, trust_remote_code=True)
        config = AutoConfig.from_pretrained({str(folder)!r}, trust_remote_code=True)
        ids = {{k: [getattr(tokenizer, k + "_token_id"), getattr(config, k + "_token_id", None)]
               for k in ("bos", "eos", "pad")}}
        print(json.dumps({{"class": type(tokenizer).__name__, "ids": ids}}))
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no prompt, no warning
    loaded = json.loads(result.stdout)
    assert loaded["class"] in ("PreTrainedTokenizerFast", "TokenizersBackend")
    for kind, (tokenizer_id, config_id) in loaded["ids"].items():
        if config_id is not None:
            assert tokenizer_id == config_id, kind


@pytest.mark.parametrize("folder", CHECKPOINTS, ids=lambda p: p.name)
def test_shipped_tokenizer_config_names_a_class_of_transformers_4_and_5_and_no_code(folder):
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == PORTABLE_TOKENIZER_CLASS
    assert "auto_map" not in config


def test_saved_tokenizer_folder_loads_with_auto_tokenizer_without_remote_code_silently(tmp_path):
    tokenizer = train_tokenizer(iterator=TEXTS, vocab_size=300)
    save_tokenizer(tokenizer, tmp_path / "tok")
    result = run_quietly(f"""
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained({str(tmp_path / "tok")!r})
        print(tokenizer("the cat")["input_ids"])
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads(result.stdout) == tokenizer("the cat")["input_ids"]


def test_wordpiece_tokenizer_has_cls_and_sep_as_bos_and_eos_at_the_ltg_bert_config_ids(tmp_path):
    from hf_ltg.ltg_bert import LtgBertConfig

    tokenizer = train_tokenizer(iterator=TEXTS, vocab_size=200, kind="wordpiece")
    save_tokenizer(tokenizer, tmp_path)
    config = LtgBertConfig()
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert (loaded.bos_token, loaded.eos_token) == ("[CLS]", "[SEP]")
    assert (loaded.bos_token_id, loaded.eos_token_id) == (config.bos_token_id, config.eos_token_id)


def test_save_tokenizer_takes_missing_bos_and_eos_from_the_config(tmp_path):
    from transformers import PreTrainedTokenizerFast

    tokenizer = train_tokenizer(iterator=TEXTS, vocab_size=200, kind="wordpiece")
    bare = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, cls_token="[CLS]", sep_token="[SEP]")
    assert bare.bos_token is None
    save_tokenizer(bare, tmp_path, config=type("Config", (), {"bos_token_id": 1, "eos_token_id": 2})())
    saved = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert (saved["bos_token"], saved["eos_token"]) == ("[CLS]", "[SEP]")


def test_make_tokenizer_config_portable_replaces_a_5x_only_class_and_tokenizer_code(tmp_path):
    tokenizer = train_tokenizer(iterator=TEXTS, vocab_size=300)
    tokenizer.save_pretrained(tmp_path)
    path = tmp_path / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.update(tokenizer_class="TokenizersBackend", auto_map={"AutoTokenizer": [None, "tok.MyTokenizer"]},
                  is_local=True)
    path.write_text(json.dumps(config))

    assert make_tokenizer_config_portable(tmp_path) is True
    portable = json.loads(path.read_text())
    assert portable["tokenizer_class"] == PORTABLE_TOKENIZER_CLASS
    assert "auto_map" not in portable and "is_local" not in portable
    assert make_tokenizer_config_portable(tmp_path) is False  # already portable


def test_make_tokenizer_config_portable_leaves_a_slow_tokenizer_config_alone(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))
    (tmp_path / "vocab.json").write_text("{}")
    assert make_tokenizer_config_portable(tmp_path) is False
    assert json.loads((tmp_path / "tokenizer_config.json").read_text()) == {"tokenizer_class": "GPT2Tokenizer"}
