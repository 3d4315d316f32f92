"""`hf-ltg doctor`'s clean process drops exactly the source tree's import root from sys.path.

A virtual environment inside the checkout (`python -m venv .venv`) or beside it with a longer name
(`/x/rev` and `/x/rev-venv`) holds the packages the clean process needs; dropping every entry
that merely starts with the checkout's path made `doctor` (and so `push`) fail good folders.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

from hf_ltg.hub.doctor import _paths_to_strip
from hf_ltg.hub.isolated_checks import kept_paths

STDLIB = "/usr/lib/python3.11"


def fake_checkout(root: Path) -> Path:
    (root / "hf_ltg").mkdir(parents=True)
    return root / "hf_ltg"


def test_a_venv_inside_the_checkout_keeps_its_site_packages(tmp_path):
    package = fake_checkout(tmp_path / "proj")
    venv_site = tmp_path / "proj" / ".venv" / "lib" / "python3.11" / "site-packages"
    venv_site.mkdir(parents=True)

    roots = _paths_to_strip(package, site_dirs=[str(venv_site)])
    kept = kept_paths(["", str(tmp_path / "proj"), STDLIB, str(venv_site)], roots, site_dirs=[str(venv_site)])

    assert roots == [str((tmp_path / "proj").resolve())]
    assert kept == [STDLIB, str(venv_site)]


def test_a_venv_whose_path_extends_the_checkouts_path_is_kept(tmp_path):
    package = fake_checkout(tmp_path / "rev")
    venv_site = tmp_path / "rev-venv" / "lib" / "python3.11" / "site-packages"
    venv_site.mkdir(parents=True)
    sibling = tmp_path / "rev2"  # a plain folder on sys.path, not a site-packages
    sibling.mkdir()

    roots = _paths_to_strip(package, site_dirs=[str(venv_site)])
    entries = [str(tmp_path / "rev"), str(venv_site), str(sibling)]

    assert kept_paths(entries, roots, site_dirs=[]) == [str(venv_site), str(sibling)]


def test_the_checkout_is_dropped_however_its_path_is_spelled(tmp_path):
    package = fake_checkout(tmp_path / "proj")
    (tmp_path / "link").symlink_to(tmp_path / "proj")
    roots = _paths_to_strip(package, site_dirs=[])

    spellings = [str(tmp_path / "link"), str(tmp_path / "proj") + "/", str(tmp_path / "proj" / "hf_ltg" / "..")]
    assert kept_paths(spellings + [STDLIB], roots, site_dirs=[]) == [STDLIB]


def test_a_package_installed_in_site_packages_strips_nothing(tmp_path):
    site_packages = tmp_path / "lib" / "python3.11" / "site-packages"
    package = site_packages / "hf_ltg"
    package.mkdir(parents=True)

    assert _paths_to_strip(package, site_dirs=[str(site_packages)]) == []
    # and the clean process keeps a site-packages folder even if asked to drop it
    assert kept_paths([str(site_packages)], [str(site_packages)], site_dirs=[str(site_packages)]) == [
        str(site_packages)
    ]


@pytest.mark.slow
def test_doctor_passes_a_folder_when_the_venv_lives_inside_the_checkout(tmp_path):
    """End to end: hf_ltg run from a checkout whose `.venv` holds a package the folder's code imports."""
    proj = tmp_path / "proj"
    shutil.copytree(REPO / "hf_ltg", proj / "hf_ltg", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(proj / ".venv")],
                   check=True, timeout=120)
    python = proj / ".venv" / "bin" / "python"
    venv_site = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"],
                               capture_output=True, text=True, check=True).stdout.strip()
    assert Path(venv_site).resolve().is_relative_to(proj.resolve())
    (Path(venv_site) / "ltg_doctor_probe_dep.py").write_text("VALUE = 1\n")
    folder = tmp_path / "folder"
    shutil.copytree(REPO / "checkpoints" / "ltg-gpt-lm", folder)
    modeling = folder / "modeling_ltg_gpt.py"
    modeling.write_text("import ltg_doctor_probe_dep  # noqa: F401\n" + modeling.read_text())

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = ("import sys, hf_ltg; assert hf_ltg.__file__.startswith(sys.argv[1]), hf_ltg.__file__\n"
            "from hf_ltg.cli import main; sys.exit(main(['doctor', sys.argv[2]]))")
    done = subprocess.run([python, "-c", code, str(proj), str(folder)], cwd=proj, env=env,
                          capture_output=True, text=True, timeout=600)

    assert "PASS  code imports installed" in done.stdout, done.stdout + done.stderr[-3000:]
    assert done.returncode == 0 and "OK:" in done.stdout, done.stdout + done.stderr[-3000:]
