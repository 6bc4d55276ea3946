"""What made a result: the code (version and git commit), the packages, the machine, and the defaults that
shape a plan's model and its score. run.json and the benchmark records both say it from here, so a result
read later names what made it, and a record made at other defaults than today's can be told apart."""

from __future__ import annotations

import dataclasses
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


def _flat(prefix: str, value: Any) -> dict[str, str]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f"{prefix}.{k}": repr(v) for k, v in dataclasses.asdict(value).items()}
    return {prefix: repr(value)}


def shaping_defaults() -> dict[str, str]:
    """Every default that changes which plans a search finds, the model a plan builds or a score it gets, as
    ``name -> repr``. A result made when one of them read otherwise was made by another tool than today's."""
    from dac_search.latency.builder import TABLE_SETTINGS
    from dac_search.plan import PLAN_FORMAT
    from dac_search.precision import QuantScheme
    from dac_search.proxies.correction import (
        DEFAULT_INPUTS,
        DEFAULT_PIXELS,
        FIT_SCALE,
        MIN_DEFAULT_INPUTS,
        RefitSettings,
    )
    from dac_search.proxies.synthetic import DistillSettings, ImpressionSettings
    from dac_search.reconstruction.settings import ReconstructionSettings
    from dac_search.search.config import SearchConfig
    from profilers.base import MeasureSettings

    search = {f.name: f.default for f in dataclasses.fields(SearchConfig)
              if f.name in ("trials", "seed", "methods", "correction", "inputs", "precisions", "proxy_images",
                            "measure_points")}
    out: dict[str, str] = {"plan_format": repr(PLAN_FORMAT), "fit_scale": repr(FIT_SCALE),
                           "default_inputs": repr(dict(DEFAULT_INPUTS)), "default_pixels": repr(DEFAULT_PIXELS),
                           "min_default_inputs": repr(MIN_DEFAULT_INPUTS)}
    out.update({f"search.{k}": repr(v) for k, v in search.items()})
    for name, value in (("refit", RefitSettings()), ("distill", DistillSettings()),
                        ("impressions", ImpressionSettings()), ("int8", QuantScheme()),
                        ("reconstruction", ReconstructionSettings()), ("measure", MeasureSettings()),
                        ("table", TABLE_SETTINGS)):
        out.update(_flat(name, value))
    return out


def changed_defaults(recorded: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
    """The defaults that read otherwise today than in ``recorded``: name -> (then, now); None where absent."""
    today = shaping_defaults()
    return {key: (recorded.get(key), today.get(key)) for key in sorted(set(recorded) | set(today))
            if recorded.get(key) != today.get(key)}
