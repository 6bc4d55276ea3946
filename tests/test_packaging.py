"""What ``pip install .`` gives a user: every package, the device configs, and a CLI that finds them.

The wheel is built from a copy of the sources (the build writes ``build/`` and ``*.egg-info`` where it
runs, which must not be the shared checkout), without build isolation when setuptools is at hand.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "configs", "dac_search", "profilers")
DEVICE_CONFIGS = sorted(path.name for path in (ROOT / "configs" / "devices").glob("*.toml"))


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []  # else: from PyPI
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(out), str(source)],
                   check=True, capture_output=True, text=True, timeout=300)
    (built,) = out.glob("*.whl")
    return built


def test_every_package_directory_is_listed_in_pyproject() -> None:
    """The package list is explicit (see pyproject.toml), so a new sub-package must be added there."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    on_disk = {".".join(path.parent.relative_to(ROOT).parts)
               for root in ("dac_search", "profilers") for path in (ROOT / root).rglob("__init__.py")}
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert {"profilers.configs", "profilers.configs.devices"} <= listed


def test_wheel_ships_every_module_and_the_device_configs(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"profilers/configs/devices/{name}" for name in DEVICE_CONFIGS} <= names
    assert {"local.toml", "loopback.toml", "pi4.toml"} <= set(DEVICE_CONFIGS)
    modules = {path.relative_to(ROOT).as_posix() for root in ("dac_search", "profilers")
               for path in (ROOT / root).rglob("*.py") if "__pycache__" not in path.parts}
    assert modules - names == set()
    assert not any(name.startswith(("configs/", "tests/", "benchmarks/")) for name in names)
    metadata = next(zipfile.Path(wheel, name).read_text() for name in names if name.endswith(".dist-info/METADATA"))
    assert "License-Expression: MIT" in metadata


@pytest.mark.slow
def test_installed_wheel_finds_its_devices_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    """A fresh venv holding only the wheel; the dependencies come from this venv through a .pth file,
    which (unlike PYTHONPATH) ranks after the fresh venv's own site-packages."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_dac_search_test_deps.pth").write_text("\n".join(sorted(ours)) + "\n")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DAC_SEARCH_DEVICES_DIR")}

    def run(*args: str) -> str:
        done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    where = run(str(python), "-c", "import profilers; print(profilers.load_device('local').source)")
    assert Path(where.strip()) == site / "profilers" / "configs" / "devices" / "local.toml"
    listing = run(str(venv / "bin" / "dac-search"), "devices")
    assert "local" in listing and "pi4" in listing
    check = run(str(venv / "bin" / "dac-search"), "devices", "check", "local")  # the runner ships too
    assert "device local" in check and "onnxruntime" in check
