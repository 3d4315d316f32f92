"""Run the shipped checkpoints' code on every transformers release it supports, without hf_ltg.

    python scripts/version_matrix.py                       # 4.57.6, 5.0.0, 5.23.0, 5.24.0, 5.25.0
    python scripts/version_matrix.py --versions 5.0.0      # a subset
    python scripts/version_matrix.py --markdown            # the table as Markdown (for the README)

Builds one virtual environment per transformers release (torch 2.13.0 pinned, so pip never pulls
the CUDA build), reused from CACHE (default ~/.cache/hf_ltg-matrix) when it is already there.
Each checkpoint in checkpoints/ is copied with the package's current model and configuration files
over its own, so that the check covers the code that the next regeneration ships. In each
environment `scripts/matrix_checks.py` runs from an empty folder with PYTHONPATH cleared (hf_ltg
cannot be imported); it loads every Auto class of the folder's auto_map, compares fp32 logits with
those of this interpreter (the reference, <= 1e-5), checks greedy generation with the cache against
generation without it (and a left-padded prompt against the same prompt alone), calls
`model.generate(**tokenizer(text, return_tensors="pt"))` as a user does (whatever the tokenizer
returns, `token_type_ids` included), runs the README's
pipelines for the family and a bf16 forward + generate. Prints a table (release x check); exits 1
when any check fails. Standard library only.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKS_SCRIPT = Path(__file__).resolve().with_name("matrix_checks.py")
VERSIONS = ("4.57.6", "5.0.0", "5.23.0", "5.24.0", "5.25.0")
TORCH = "2.13.0"
FAMILY_CODE = {"ltg_gpt": REPO / "hf_ltg" / "gpt", "ltg_bert": REPO / "hf_ltg" / "ltg_bert"}
COLUMNS = (
    "config = config.json",
    "load + forward (every head)",
    "fp32 logits = reference",
    "greedy: cache = no cache, padded = alone",
    "greedy = reference",
    "generate(**tokenizer(text))",
    "pipelines",
    "bf16 forward + generate",
    "tokenizer (silent)",
)


def venv_python(cache: Path, version: str) -> Path:
    """An environment with torch TORCH and transformers `version`, built once and reused."""
    home = cache / f"transformers-{version}"
    python = home / "bin" / "python"
    probe = "import torch, transformers; print(torch.__version__.split('+')[0], transformers.__version__)"
    if python.exists():
        found = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd=cache)
        if found.returncode == 0 and found.stdout.split() == [TORCH, version]:
            return python
        shutil.rmtree(home)
    print(f"building {home} (about a minute with pip's cache warm)", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", home], check=True)
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"torch=={TORCH}", f"transformers=={version}"],
        capture_output=True, text=True,
    )
    if install.returncode != 0:
        shutil.rmtree(home, ignore_errors=True)
        raise SystemExit(f"pip could not install transformers=={version} with torch=={TORCH}:\n{install.stderr[-3000:]}")
    return python


def staged_checkpoints(work: Path, names: list[str] | None) -> list[Path]:
    """Copies of checkpoints/*/ carrying the package's current model and configuration files."""
    folders = []
    for source in sorted((REPO / "checkpoints").iterdir()):
        config = source / "config.json"
        if not config.is_file() or (names and source.name not in names):
            continue
        target = work / "checkpoints" / source.name
        shutil.copytree(source, target)
        code = FAMILY_CODE[json.loads(config.read_text())["model_type"]]
        for file in code.glob("*.py"):
            if file.name != "__init__.py":
                shutil.copy2(file, target / file.name)
        folders.append(target)
    if not folders:
        raise SystemExit(f"no checkpoint folders (with config.json) under {REPO / 'checkpoints'}")
    return folders


def run_checks(python, work: Path, label: str, folders: list[Path], reference: Path | None) -> dict:
    """matrix_checks.py in `python`'s environment, in an empty folder where hf_ltg is unimportable."""
    cwd = work / f"cwd-{label}"
    cwd.mkdir()
    result, tensors = work / f"result-{label}.json", work / f"tensors-{label}.pt"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_MODULES_CACHE=str(work / f"modules-{label}"), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    argv = [str(python), str(CHECKS_SCRIPT), str(result), str(tensors)]
    argv += [str(reference)] if reference else []
    run = subprocess.run(argv + [str(f) for f in folders], cwd=cwd, env=env, capture_output=True, text=True)
    if run.returncode != 0 or not result.exists():
        return {"error": (run.stderr or run.stdout)[-3000:]}
    data = json.loads(result.read_text())
    data["tensors"] = tensors
    return data


def cell(results: dict, column: str) -> tuple[str, list[str]]:
    """'ok' when every checkpoint passed the check, else 'FAIL' and the details."""
    if "error" in results:
        return "FAIL", [results["error"]]
    failures, seen = [], False
    for name, checks in results["checkpoints"].items():
        if column in checks:
            seen = True
            ok, detail = checks[column]
            if not ok:
                failures.append(f"{name}: {detail}")
    return ("FAIL" if failures else "ok" if seen else "-"), failures


def table(rows: dict, markdown: bool) -> str:
    header = ["transformers", *COLUMNS]
    body = [[version, *(cell(results, c)[0] for c in COLUMNS)] for version, results in rows.items()]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in [header, *body])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", nargs="+", default=list(VERSIONS), help="transformers releases")
    parser.add_argument("--checkpoints", nargs="+", help="names under checkpoints/ (default: all)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "hf_ltg-matrix",
                        help="where the environments live (default: %(default)s)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)

    start = time.monotonic()
    args.cache.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=len(args.versions)) as pool:  # pip mostly waits on I/O: build in parallel
        pythons = dict(zip(args.versions, pool.map(lambda v: venv_python(args.cache, v), args.versions)))
    with tempfile.TemporaryDirectory(prefix="hf_ltg-matrix-") as tmp:
        work = Path(tmp)
        folders = staged_checkpoints(work, args.checkpoints)
        reference = run_checks(sys.executable, work, "reference", folders, None)
        if "error" in reference:
            print(f"the reference run (this interpreter) failed:\n{reference['error']}", file=sys.stderr)
            return 1
        rows = {}
        for version, python in pythons.items():
            rows[version] = run_checks(python, work, version, folders, reference["tensors"])
            print(f"transformers {version}: done ({time.monotonic() - start:.0f} s)", file=sys.stderr, flush=True)
    print(table(rows, args.markdown))
    failed = False
    for version, results in rows.items():
        for column in COLUMNS:
            state, details = cell(results, column)
            if state == "FAIL":
                failed = True
                for detail in details[:3] if "error" not in results else details[:1]:
                    print(f"  {version} / {column}: {detail}", file=sys.stderr)
                if "error" in results:
                    break
    for version, results in rows.items():
        if "error" not in results:
            compared = {name: checks.get("fp32 logits = reference", [False, ""])[1] for name, checks in results["checkpoints"].items()}
            print(f"  {version} fp32 logits: " + "; ".join(f"{n} {d}" for n, d in compared.items()), file=sys.stderr)
    print(f"reference: this interpreter (transformers {reference['transformers']}); "
          f"{len(folders)} checkpoints; {time.monotonic() - start:.0f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
