"""Output folders: written atomically, never deleting what the user put there, with the umask's permissions."""

import os
import stat

import pytest
from hub_utils import save_tiny_gpt

from hf_ltg.checkpoint import atomic_directory, check_output_folder
from hf_ltg.cli import main


def run_cli(*argv):
    return main([str(a) for a in argv])


@pytest.fixture
def checkpoint(tmp_path, tiny_tokenizer):
    save_tiny_gpt(tmp_path / "ckpt", tiny_tokenizer)
    return tmp_path / "ckpt"


def test_quantize_refuses_a_folder_holding_user_files_and_keeps_them(checkpoint, tmp_path, capsys):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "notes.txt").write_text("notes")

    assert run_cli("quantize", checkpoint, project) == 2
    assert run_cli("quantize", checkpoint, project, "--overwrite") == 2

    assert sorted(p.name for p in project.iterdir()) == ["notes.txt"]
    assert (project / "notes.txt").read_text() == "notes"
    error = capsys.readouterr().err
    assert str(project) in error and "--overwrite" in error and "notes.txt" in error


def test_output_dot_is_refused_and_the_working_folder_kept(checkpoint, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "data.csv").write_text("text,label\n")
    monkeypatch.chdir(work)

    assert run_cli("export", checkpoint, ".") == 2
    assert run_cli("finetune-cls", "--model", checkpoint, "--output", ".", "--overwrite") == 2

    assert sorted(p.name for p in work.iterdir()) == ["data.csv"]


@pytest.mark.parametrize("command", ["quantize", "export"])
def test_out_equal_to_or_containing_src_is_refused(checkpoint, command, capsys):
    before = sorted(p.name for p in checkpoint.iterdir())

    assert run_cli(command, checkpoint, checkpoint, "--overwrite") == 2
    assert "is the source" in capsys.readouterr().err
    assert run_cli(command, checkpoint, checkpoint.parent, "--overwrite") == 2
    assert "contains the source" in capsys.readouterr().err

    assert sorted(p.name for p in checkpoint.iterdir()) == before


def test_a_previous_checkpoint_is_replaced_only_with_overwrite(checkpoint, tmp_path, capsys):
    out = tmp_path / "int8"
    assert run_cli("quantize", checkpoint, out) == 0
    written = (out / "model.safetensors").stat().st_mtime_ns

    assert run_cli("quantize", checkpoint, out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "model.safetensors").stat().st_mtime_ns == written

    assert run_cli("quantize", checkpoint, out, "--overwrite", "--scheme", "zeropoint") == 0
    assert '"zeropoint"' in (out / "config.json").read_text()


def test_an_empty_folder_is_written_into(checkpoint, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert run_cli("convert", "--to", "hf-gpt2", checkpoint, out) == 0
    assert (out / "model.safetensors").is_file()


def test_written_folders_get_the_permissions_of_the_umask(checkpoint, tmp_path):
    previous = os.umask(0o022)
    try:
        assert run_cli("quantize", checkpoint, tmp_path / "int8") == 0
    finally:
        os.umask(previous)
    out = tmp_path / "int8"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes["model.safetensors"] == 0o644
    assert set(modes.values()) == {0o644}


def test_atomic_directory_checks_again_before_replacing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="not an hf_ltg checkpoint"):
        with atomic_directory(out) as tmp:
            (tmp / "config.json").write_text("{}")
            out.mkdir()
            (out / "mine.txt").write_text("mine")  # appeared while the checkpoint was being written
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind


def test_check_output_folder_refuses_a_file(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        check_output_folder(tmp_path / "model.bin", overwrite=True)
