"""Reading weights from the files users bring, and writing checkpoint folders atomically."""

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = ("pytorch_model.bin", "model.bin", "model.pt", "model.pth")


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a weights file or checkpoint folder.

    Accepts `.safetensors`, a sharded safetensors index, or a PyTorch pickle (`.bin`, `.pt`,
    `.pth`, loaded with `weights_only=True`, never executing code). A folder is searched for
    those names in that order.
    """
    path = Path(path)
    if path.is_dir():
        path = _weights_file_in(path)
    if not path.is_file():
        raise FileNotFoundError(f"No weights file at {path}.")
    if path.name.endswith(".index.json"):
        index = json.loads(path.read_text())
        tensors = {}
        for shard in sorted(set(index["weight_map"].values())):
            tensors.update(load_file(path.parent / shard))
        return tensors
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except Exception as error:
            raise ValueError(f"{path} is not a readable safetensors file: {error}") from error
    if path.suffix in (".bin", ".pt", ".pth"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(
                f"{path} is not a PyTorch state dict loadable with weights_only=True: {error}"
            ) from error
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if isinstance(state, dict) and "model_state_dict" in state and isinstance(state["model_state_dict"], dict):
            state = state["model_state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors).")
        return state
    raise ValueError(
        f"{path} has an unknown weights format {path.suffix!r}; expected .safetensors, .bin, .pt or .pth."
    )


def _weights_file_in(folder: Path) -> Path:
    for name in (SAFE_WEIGHTS, SAFE_INDEX, *PICKLE_WEIGHTS):
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.iterdir())
    raise FileNotFoundError(
        f"Checkpoint folder {folder} has no weights: expected {SAFE_WEIGHTS}, {SAFE_INDEX} or one of "
        f"{', '.join(PICKLE_WEIGHTS)}; it contains {found or 'nothing'}."
    )


@contextlib.contextmanager
def atomic_directory(out_dir: str | os.PathLike):
    """Yield a temporary folder beside `out_dir` that replaces `out_dir` only on success.

    A failure leaves `out_dir` as it was (absent, or its old contents), never half-written.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(model, out_dir, tokenizer=None, generation_config=None) -> Path:
    """Write a complete, self-contained checkpoint folder atomically.

    `model.save_pretrained` writes config (with the family's full auto_map), code and
    safetensors weights; the tokenizer and generation config are added when given.
    """
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if generation_config is not None:
            generation_config.save_pretrained(tmp)
    return Path(out_dir)
