"""Damaged checkpoint files get one line naming the file and what to do, from every command that reads
a checkpoint: exit code 2, no traceback, nothing written."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from hf_ltg.checkpoint import DamagedFileError, check_files_readable
from hf_ltg.cli import main
from tests.hub_utils import save_tiny_gpt


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory, tiny_tokenizer):
    folder = tmp_path_factory.mktemp("damage") / "good"
    save_tiny_gpt(folder, tiny_tokenizer)
    return folder


def truncate_weights(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def cut_weights_header(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:20])
    return path


def empty_config(folder):
    (folder / "config.json").write_text("")
    return folder / "config.json"


def malformed_config(folder):
    (folder / "config.json").write_text('{"model_type": "ltg_gpt", "hidden_size": ')
    return folder / "config.json"


def corrupt_tokenizer(folder):
    (folder / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    return folder / "tokenizer.json"


def missing_shard(folder):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    model.save_pretrained(folder, max_shard_size="50KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    (folder / shards[-1]).unlink()
    return folder / shards[-1]


DAMAGE = [truncate_weights, cut_weights_header, empty_config, malformed_config, corrupt_tokenizer, missing_shard]


def command_lines(folder, tmp_path):
    """Each command that reads a checkpoint, reading `folder` and writing under tmp_path / "out"."""
    out = tmp_path / "out"
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox jumps over the lazy dog.")
    records = tmp_path / "records.json"  # a JSON list: data, never taken for a damaged checkpoint file
    records.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi."}] * 4))
    return {
        "generate": ["generate", "--model", folder, "--max-new-tokens", "2"],
        "perplexity": ["perplexity", text, "--model", folder],
        "finetune-cls": ["finetune-cls", "--model", folder, "--max-steps", "1", "--output", out],
        "finetune-instruct": ["finetune-instruct", "--model", folder, "--train-file", records,
                              "--validation-file", records, "--max-steps", "1", "--output", out],
        "pretrain --init-from": ["pretrain", "--init-from", folder, "--max-steps", "1", "--output", out],
        "convert": ["convert", "--to", "hf-gpt2", folder, out],
        "quantize": ["quantize", folder, out],
        "export": ["export", folder, out],
        "push": ["push", folder, "--repo-id", "someone/tiny", "--dry-run"],
    }


COMMANDS = ["generate", "perplexity", "finetune-cls", "finetune-instruct", "pretrain --init-from", "convert",
            "quantize", "export", "push"]


@pytest.fixture(params=DAMAGE, ids=lambda f: f.__name__)
def damaged(request, good_checkpoint, tmp_path):
    folder = tmp_path / "damaged"
    shutil.copytree(good_checkpoint, folder)
    return folder, request.param(folder)


@pytest.mark.parametrize("command", COMMANDS)
def test_damaged_checkpoint_gets_one_line_naming_the_file_and_nothing_is_written(command, damaged, tmp_path,
                                                                                 capsys, monkeypatch):
    folder, damaged_file = damaged
    monkeypatch.chdir(tmp_path)  # the training commands' default work folder (runs/...) would land here
    argv = command_lines(folder, tmp_path)[command]
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(damaged_file) in lines[0] and f"hf-ltg doctor {folder}" in lines[0]
    assert "download or copy it again" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_console_script_prints_no_traceback_for_weights_cut_short(good_checkpoint, tmp_path):
    folder = tmp_path / "cut"
    shutil.copytree(good_checkpoint, folder)
    truncate_weights(folder)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    script = os.path.join(os.path.dirname(sys.executable), "hf-ltg")
    argv = [script] if os.path.exists(script) else [sys.executable, "-m", "hf_ltg"]
    result = subprocess.run([*argv, "generate", "--model", str(folder)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"hf-ltg generate: error: {folder}/model.safetensors is not a readable safetensors file, cut short or "
        "corrupt (Error while deserializing header: incomplete metadata, file not fully covered); download or copy it "
        f"again (`hf-ltg doctor {folder}` lists every problem of the folder)."
    )


def test_intact_checkpoint_and_data_files_pass_the_check(good_checkpoint, tmp_path):
    check_files_readable(good_checkpoint)
    for name in os.listdir(good_checkpoint):
        check_files_readable(good_checkpoint / name)
    data = tmp_path / "train.json"
    data.write_text("[1, 2")  # a user's data file, whatever it holds, is the data loaders' business
    check_files_readable(data)


def test_pickle_cut_short_is_named(good_checkpoint, tmp_path):
    import torch
    from safetensors.torch import load_file

    path = tmp_path / "pytorch_model.bin"
    torch.save(load_file(good_checkpoint / "model.safetensors"), path)
    check_files_readable(path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DamagedFileError, match=r"pytorch_model\.bin is not a readable PyTorch zip archive, cut short or corrupt"):
        check_files_readable(tmp_path)


def test_config_that_is_not_an_object_is_named(good_checkpoint, tmp_path):
    folder = tmp_path / "list"
    shutil.copytree(good_checkpoint, folder)
    (folder / "config.json").write_text("[]")
    with pytest.raises(DamagedFileError, match=r"config\.json is a JSON list, not the JSON object expected"):
        check_files_readable(folder)
