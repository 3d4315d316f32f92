"""`push_folder`: check a folder with the doctor, then create the Hub repo and upload it.

The list of files is the one `HfApi.upload_folder` itself uploads (every file under the folder
except huggingface_hub's default ignore patterns: `.git/`, `.cache/huggingface/`), so
`--dry-run` prints exactly what a real push sends. Offline it fails within seconds: offline mode
is checked first, then a short TCP probe of the endpoint, before any upload starts.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PROBE_TIMEOUT_S = 3.0


class HubUnreachable(RuntimeError):
    """The Hub cannot be reached (offline mode or no network)."""


def files_to_upload(folder: str | os.PathLike) -> list[tuple[str, int]]:
    """(path relative to `folder`, size in bytes) of every file `upload_folder` would send."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    folder = Path(folder).resolve()
    relative = {p.relative_to(folder).as_posix(): p for p in sorted(folder.glob("**/*")) if p.is_file()}
    kept = filter_repo_objects(relative.keys(), ignore_patterns=DEFAULT_IGNORE_PATTERNS)
    return [(name, relative[name].stat().st_size) for name in kept]


def check_repo_id(repo_id: str) -> None:
    if not REPO_ID.match(repo_id or "") or ".." in repo_id or len(repo_id) > 96:
        raise ValueError(
            f"--repo-id {repo_id!r} is not a Hub repository id: write USER/NAME (letters, digits, '-', '_', '.'; "
            "at most 96 characters), e.g. my-name/ltg-gpt-small."
        )


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def offline_mode() -> bool:
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or value.strip().upper() in ("1", "ON", "YES", "TRUE")


def ensure_hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise HubUnreachable within about `timeout` seconds when the Hub cannot be reached."""
    endpoint = hub_endpoint()
    if offline_mode():
        raise HubUnreachable(
            f"offline mode is on (HF_HUB_OFFLINE=1), so nothing can be pushed to {endpoint}. Unset HF_HUB_OFFLINE "
            "on a machine with network access, or use --dry-run to see what would be uploaded."
        )
    parsed = urlparse(endpoint)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    failure = []

    def probe():  # DNS has no timeout of its own, hence the thread
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as error:
            failure.append(error)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if thread.is_alive() or failure:
        reason = failure[0] if failure else f"no answer within {timeout:.0f} s"
        raise HubUnreachable(
            f"cannot reach the Hub at {endpoint} ({host}:{port}: {reason}). Check the network (or HF_ENDPOINT), "
            "or use --dry-run to see what would be uploaded."
        )


def push_folder(folder, repo_id: str, *, private: bool = False, revision: str | None = None,
                commit_message: str | None = None, token: str | None = None, dry_run: bool = False,
                run_doctor: bool = True, log=print):
    """Doctor, then create `repo_id` and upload `folder`. Returns the commit info, or the file
    list for a dry run. Raises ValueError when the doctor finds problems."""
    from . import doctor

    folder = Path(folder)
    check_repo_id(repo_id)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; give the folder to push (written by hf-ltg export).")
    if not dry_run:  # fail fast, before the doctor's minute of work
        ensure_hub_reachable()
        from huggingface_hub import HfApi, get_token

        token = token or get_token()
        if not token:
            raise ValueError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again.")
    if run_doctor:
        report = doctor.diagnose(folder)
        log(report.format())
        if not report.ok:
            raise ValueError(
                f"the doctor found {len(report.problems)} problem(s) in {folder} "
                f"({', '.join(c.name for c in report.problems)}); nothing was uploaded. Fix them (hf-ltg export "
                "writes a complete folder) and push again."
            )
    files = files_to_upload(folder)
    target = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    if dry_run:
        total = sum(size for _, size in files)
        log(f"dry run: would upload {len(files)} file(s), {total:,} bytes, to {target}:")
        for name, size in files:
            log(f"  {name}  {size:,} bytes")
        return files

    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    log(f"uploading {len(files)} file(s) to {target} ...")
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), revision=revision, repo_type="model",
        commit_message=commit_message or f"Upload {folder.resolve().name} with hf-ltg push",
    )
    log(f"pushed to {getattr(url, 'url', url)}: {getattr(commit, 'commit_url', commit)}")
    return commit
