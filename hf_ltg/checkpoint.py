"""Reading weights from the files users bring, and writing checkpoint folders atomically."""

import contextlib
import json
import os
import re
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


# Damaged files: cut short by an interrupted download or copy, a full disk, or edited by hand.

class DamagedFileError(ValueError):
    """A checkpoint file that cannot be read as what its name says (see `check_files_readable`)."""


JSON_FILES = ("config.json", "generation_config.json", "adapter_config.json", "labels.json", "tokenizer.json",
              "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
              SAFE_INDEX, "adapter_model.safetensors.index.json")
SAFETENSORS_FILES = (SAFE_WEIGHTS, "adapter_model.safetensors")
ZIP_PICKLES = (*PICKLE_WEIGHTS, "adapter_model.bin")


def check_files_readable(path: str | os.PathLike) -> None:
    """Raise a `DamagedFileError` naming the first file of `path` (a checkpoint folder, or one of
    its files) that cannot be read: JSON files that are empty or invalid, safetensors files whose
    header or data is cut short, zip-format PyTorch pickles cut short, and the shards a safetensors
    index lists but the folder lacks. Reads headers only, never the tensors. Files with other names
    (a user's data files) are not looked at."""
    path = Path(path)
    known = (*JSON_FILES, *SAFETENSORS_FILES, *ZIP_PICKLES)
    if path.is_dir():
        folder, files = path, [path / name for name in known]
    else:
        folder, files = path.parent, [path] if path.name in known or path.suffix in (".safetensors", ".bin") else []
    for file in files:
        damage = _damage(file) if file.is_file() else None
        if damage:
            damaged, reason = damage
            raise DamagedFileError(f"{damaged} is {reason}; download or copy it again "
                                   f"(`hf-ltg doctor {folder}` lists every problem of the folder).")


def _damage(file: Path) -> tuple[Path, str] | None:
    """(the damaged file, why) for `file` or, for an index, a shard it lists; None if readable."""
    if file.name.endswith(".json"):
        text = file.read_bytes()
        if not text.strip():
            return file, "empty (JSON expected)"
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return file, f"not valid JSON ({error})"
        if not isinstance(value, dict):
            return file, f"a JSON {type(value).__name__}, not the JSON object expected"
        if file.name.endswith(".index.json"):
            weight_map = value.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                return file, "an index without a weight_map"
            for shard in sorted(set(map(str, weight_map.values()))):
                if not (file.parent / shard).is_file():
                    return file.parent / shard, f"missing (a shard that {file.name} lists)"
                damage = _damage(file.parent / shard)
                if damage:
                    return damage
        return None
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(file, framework="pt"):
                return None
        except Exception as error:  # noqa: BLE001 - any unreadable header or cut-short data is the finding
            detail = str(error).splitlines()[0] if str(error) else type(error).__name__
            return file, f"not a readable safetensors file, cut short or corrupt ({detail})"
    import zipfile

    with file.open("rb") as handle:
        if handle.read(4) != b"PK\x03\x04":
            return None  # a legacy (non-zip) pickle: only loading it tells
    try:
        with zipfile.ZipFile(file):
            return None
    except (zipfile.BadZipFile, OSError) as error:
        return file, f"not a readable PyTorch zip archive, cut short or corrupt ({error})"


# What hf_ltg writes into a checkpoint or adapter folder; a folder holding anything else is the
# user's, and is never replaced.
CHECKPOINT_FILE = re.compile(
    r"^(config\.json|generation_config\.json|adapter_config\.json|labels\.json|README\.md|training_curves\.png"
    r"|[\w.-]+\.safetensors|model\.safetensors\.index\.json|pytorch_model\.bin|adapter_model\.bin"
    r"|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|added_tokens\.json|tokenizer\.model"
    r"|vocab\.json|vocab\.txt|merges\.txt|chat_template\.jinja|chat_template\.json|\w+_ltg_(gpt|bert)\.py"
    r"|model\.onnx|model\.onnx\.data|genai_config\.json)$"  # the folders of `hf-ltg export --onnx`
)


def is_checkpoint_folder(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a checkpoint or adapter as hf_ltg writes them, and nothing else."""
    names = [p.name for p in Path(folder).iterdir()]
    return bool({"config.json", "adapter_config.json"} & set(names)) and all(
        CHECKPOINT_FILE.match(name) and (Path(folder) / name).is_file() for name in names
    )


def check_output_folder(out_dir: str | os.PathLike, *, overwrite: bool = False, sources=()) -> Path:
    """`out_dir`, resolved, if a checkpoint may be written there; else a ValueError saying why.

    Allowed: a new or empty folder, or (with `overwrite`) a previous checkpoint. Refused: a file,
    a folder holding anything else, and a folder that is or contains one of `sources`.
    """
    out = Path(out_dir).resolve()
    for source in sources:
        source = Path(source).resolve()
        if out == source or out in source.parents:
            relation = "is" if out == source else "contains"
            raise ValueError(f"The output folder {out} {relation} the source {source}; write to another folder.")
    if out.exists() and not out.is_dir():
        raise ValueError(f"The output {out} is a file, not a folder; choose a folder name.")
    if out.is_dir() and any(out.iterdir()):
        if not is_checkpoint_folder(out):
            foreign = sorted(p.name for p in out.iterdir() if not CHECKPOINT_FILE.match(p.name) or not p.is_file())
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise ValueError(f"The output folder {out} is not empty and not an hf_ltg checkpoint (it holds {shown}); "
                             "choose a new or empty folder (--overwrite replaces only a previous checkpoint).")
        if not overwrite:
            raise ValueError(f"The output folder {out} already holds a checkpoint; pass --overwrite to replace it, "
                             "or choose another folder.")
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _apply_umask(folder: Path) -> None:
    """Give `folder` and what it holds the permissions the user's umask gives new files
    (mkdtemp makes folders 0700 and temporary files are 0600)."""
    mask = _umask()
    folder.chmod(0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            Path(root, name).chmod(0o777 & ~mask)
        for name in files:
            Path(root, name).chmod(0o666 & ~mask)


@contextlib.contextmanager
def atomic_directory(out_dir: str | os.PathLike, *, overwrite: bool = True):
    """Yield a temporary folder beside `out_dir` that replaces `out_dir` only on success.

    `out_dir` may be absent, empty or a previous checkpoint (replaced only with `overwrite`);
    anything else is refused before and checked again before the rename (`check_output_folder`),
    so no file the user put there is ever deleted. A failure leaves `out_dir` as it was (absent,
    or its old contents), never half-written. Files get the permissions of the user's umask.
    """
    out_dir = check_output_folder(out_dir, overwrite=overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        _apply_umask(tmp)
        check_output_folder(out_dir, overwrite=overwrite)
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


def save_checkpoint(model, out_dir, tokenizer=None, generation_config=None, overwrite: bool = True) -> Path:
    """Write a complete, self-contained checkpoint folder atomically.

    `model.save_pretrained` writes config (with the family's full auto_map), code and
    safetensors weights; the tokenizer and generation config are added when given. `out_dir`
    may be new, empty or (with `overwrite`) a previous checkpoint, see `atomic_directory`.
    """
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            from .tokenization import save_tokenizer

            save_tokenizer(tokenizer, tmp, model.config)
        if generation_config is not None:
            generation_config.save_pretrained(tmp)
    return Path(out_dir)
