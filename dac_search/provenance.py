"""What made a result: the code (version and git commit), the packages and the machine. run.json and the
benchmark records both say it from here, so a result read later names what made it (the defaults it ran at:
``dac_search.search.defaults``)."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def source_commit() -> str | None:
    """The git commit of the checkout this package runs from (``+dirty`` with uncommitted changes), or None for
    an installed package: a run then names the code that made it, not only a version string."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "") if head else None


def versions() -> tuple[tuple[str, str], ...]:
    """dac_search's version (and commit, from a checkout) and those of the packages a result depends on."""
    import numpy
    import onnxruntime
    import optuna
    import torch

    import dac_search

    commit = source_commit()
    return (("dac_search", dac_search.__version__), *((("dac_search_commit", commit),) if commit else ()),
            ("torch", torch.__version__), ("optuna", optuna.__version__), ("numpy", numpy.__version__),
            ("onnxruntime", onnxruntime.__version__), ("python", platform.python_version()))


def machine() -> dict[str, Any]:
    """The host a measurement ran on: enough to tell two machines apart, nothing identifying a person."""
    model = None
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                      if line.startswith("model name")), None)
    return {"system": platform.system(), "machine": platform.machine(), "cpu": model or platform.processor() or None,
            "cpus": os.cpu_count()}
