"""`hf-ltg push` and `push_to_hub`: what is uploaded, and failing fast offline (no network used)."""

import json
import os
import time
from pathlib import Path

import pytest
from hub_utils import save_tiny_gpt, tiny_gpt

from hf_ltg.cli import main
from hf_ltg.gpt.configuration_ltg_gpt import AUTO_MAP
from hf_ltg.hub import doctor, export_checkpoint, push


@pytest.fixture
def exported(tmp_path, tiny_tokenizer):
    save_tiny_gpt(tmp_path / "ckpt", tiny_tokenizer)
    return export_checkpoint(tmp_path / "ckpt", tmp_path / "exported", max_shard_size="60KB")


def files_on_disk(folder):
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_dry_run_runs_the_doctor_and_lists_exactly_the_files_of_the_folder(exported, capsys):
    (exported / "notes").mkdir()
    (exported / "notes" / "eval.txt").write_text("perplexity 12.3\n")

    assert main(["push", str(exported), "--repo-id", "someone/tiny-gpt", "--dry-run"]) == 0

    out = capsys.readouterr().out
    assert "OK: exported is self-contained" in out  # the doctor ran first
    listed = {}
    for line in out.splitlines():
        if line.startswith("  "):
            name, size, unit = line.split()
            assert unit == "bytes"
            listed[name] = int(size.replace(",", ""))
    assert listed == files_on_disk(exported)
    assert "model.safetensors.index.json" in listed and "notes/eval.txt" in listed
    assert f"would upload {len(listed)} file(s)" in out


def test_upload_list_skips_only_what_upload_folder_skips(exported):
    (exported / ".git").mkdir()
    (exported / ".git" / "HEAD").write_text("ref: refs/heads/main\n")

    names = [name for name, _ in push.files_to_upload(exported)]

    assert set(names) == set(files_on_disk(exported)) - {".git/HEAD"}


def test_offline_push_fails_within_seconds_and_says_why(exported, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    assert main(["push", str(exported), "--repo-id", "someone/tiny-gpt"]) == 2
    elapsed = time.perf_counter() - start

    err = capsys.readouterr().err
    assert "hf-ltg push: error: offline mode is on (HF_HUB_OFFLINE=1)" in err and "--dry-run" in err
    assert elapsed < 5, elapsed


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9", "https://hub.invalid"])
def test_push_without_a_reachable_hub_fails_within_seconds(exported, monkeypatch, capsys, endpoint):
    monkeypatch.setattr(push, "offline_mode", lambda: False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    start = time.perf_counter()
    assert main(["push", str(exported), "--repo-id", "someone/tiny-gpt"]) == 2
    elapsed = time.perf_counter() - start

    assert f"cannot reach the Hub at {endpoint}" in capsys.readouterr().err
    assert elapsed < push.PROBE_TIMEOUT_S + 2, elapsed


def test_push_rejects_a_malformed_repo_id(exported, capsys):
    assert main(["push", str(exported), "--repo-id", "no-namespace", "--dry-run"]) == 2
    assert "is not a Hub repository id: write USER/NAME" in capsys.readouterr().err


class FakeHfApi:
    """Records what push would send; never touches the network."""

    calls = []

    def __init__(self, token=None, **kwargs):
        self.token = token

    def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None, **kwargs):
        self.calls.append(("create_repo", repo_id, private, exist_ok))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id, branch, exist_ok=False, **kwargs):
        self.calls.append(("create_branch", repo_id, branch))

    def upload_folder(self, repo_id, folder_path, revision=None, commit_message=None, **kwargs):
        from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

        folder = Path(folder_path)
        names = [p.relative_to(folder).as_posix() for p in sorted(folder.glob("**/*")) if p.is_file()]
        uploaded = list(filter_repo_objects(names, ignore_patterns=DEFAULT_IGNORE_PATTERNS))
        self.calls.append(("upload_folder", repo_id, revision, commit_message, uploaded, self.token))
        return "commit-url"


REAL_DIAGNOSE = doctor.diagnose


def static_doctor(folder, isolated=True):
    """The doctor's real checks without the clean-process load (tested in test_hub_doctor.py)."""
    return REAL_DIAGNOSE(folder, isolated=False)


def test_push_creates_the_repo_and_uploads_the_listed_files_with_the_token(exported, monkeypatch):
    import huggingface_hub

    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(push, "ensure_hub_reachable", lambda: None)
    monkeypatch.setattr(doctor, "diagnose", static_doctor)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token")

    push.push_folder(exported, "someone/tiny-gpt", private=True, revision="v1", commit_message="first",
                     log=lambda *a: None)

    listed = [name for name, _ in push.files_to_upload(exported)]
    assert FakeHfApi.calls == [
        ("create_repo", "someone/tiny-gpt", True, True),
        ("create_branch", "someone/tiny-gpt", "v1"),
        ("upload_folder", "someone/tiny-gpt", "v1", "first", listed, "hf_fake_token"),
    ]


def test_push_uploads_nothing_when_the_doctor_finds_a_problem(exported, monkeypatch, capsys):
    import huggingface_hub

    FakeHfApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(push, "ensure_hub_reachable", lambda: None)
    monkeypatch.setattr(doctor, "diagnose", static_doctor)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token")
    (exported / "pytorch_model.bin").write_bytes(b"\x80\x04")

    assert main(["push", str(exported), "--repo-id", "someone/tiny-gpt"]) == 2

    assert "the doctor found 1 problem(s)" in capsys.readouterr().err
    assert FakeHfApi.calls == []


def test_push_without_a_token_says_how_to_log_in(exported, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(push, "ensure_hub_reachable", lambda: None)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.delenv("HF_TOKEN", raising=False)

    assert main(["push", str(exported), "--repo-id", "someone/tiny-gpt"]) == 2
    assert "no Hugging Face token: set HF_TOKEN or run `hf auth login`" in capsys.readouterr().err


def test_push_to_hub_of_our_model_uploads_the_code_and_the_full_auto_map(monkeypatch, tiny_tokenizer):
    from huggingface_hub import ModelCard, ModelCardData
    from transformers.utils import hub as transformers_hub

    uploaded = {}

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def create_commit(self, repo_id, operations, **kwargs):
            for op in operations:
                path = op.path_or_fileobj
                uploaded[op.path_in_repo] = Path(path).read_bytes() if isinstance(path, (str, os.PathLike)) else b""
            return "commit"

    monkeypatch.setattr(transformers_hub, "hf_api", lambda: FakeApi())
    monkeypatch.setattr(transformers_hub, "create_and_tag_model_card",
                        lambda repo_id, tags=None, token=None: ModelCard.from_template(
                            ModelCardData(library_name="transformers")))

    tiny_gpt(tiny_tokenizer, head="sequence-classification").push_to_hub("someone/tiny-classifier")

    assert {"config.json", "configuration_ltg_gpt.py", "modeling_ltg_gpt.py", "model.safetensors"} <= set(uploaded)
    assert json.loads(uploaded["config.json"])["auto_map"] == AUTO_MAP
    assert b"from .configuration_ltg_gpt import" in uploaded["modeling_ltg_gpt.py"]
    assert b"from hf_ltg" not in uploaded["modeling_ltg_gpt.py"] and b"import hf_ltg" not in uploaded["modeling_ltg_gpt.py"]
