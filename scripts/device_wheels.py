"""Download the wheels the GPU device check carries (benchmarks/gpu_check.py).

    python scripts/device_wheels.py            # into .device-wheels/ (git-ignored)

The device image has Python 3.12, torch 2.11 (CUDA 13), transformers 5.17 and no network;
hf_ltg needs transformers >= 5.23 and peft >= 0.21. This fetches, for CPython 3.12 on x86-64 and
without their dependencies (the image has them: huggingface_hub, tokenizers, safetensors,
accelerate, regex, typer), the versions installed here, so that the device runs what the test
suite ran. Never torch. gpu_check.py installs them with
`pip install --no-index --no-deps --target` and puts that folder first on PYTHONPATH.
The carried working tree (the repository plus these wheels) must stay under 64 MiB.
"""

import argparse
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("transformers", "peft")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
LIMIT_MIB = 64


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dest", default=str(REPO / ".device-wheels"))
    parser.add_argument("--python-version", default="3.12", help="the device's Python (3.12)")
    args = parser.parse_args(argv)
    dest = Path(args.dest)
    partial = dest.with_name(dest.name + ".incomplete")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    pins = [f"{name}=={version(name)}" for name in PACKAGES]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", args.python_version, "--implementation", "cp", "-d", str(partial), *pins]
    for platform in PLATFORMS:
        command[4:4] = ["--platform", platform]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    wheels = sorted(dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"  {wheel.name}  {wheel.stat().st_size / 2**20:.1f} MiB")
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MiB in {dest} (the carried tree must stay under {LIMIT_MIB} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
