"""The Python loop: search, read the front, pick a plan, build or export its model.

    import dac_search
    run = dac_search.search("cifar10-resnet20", budget="60%flops", device="none", trials=20)
    run.front                        # pandas: the Pareto points
    model = run.model()              # the best plan's model (``run.best()``), an nn.Module
    run.export("resnet20.onnx")      # what ``dac-search export`` writes

The same run dir as the command line (``dac_search.open_run`` reads one), the same files, the same resume.
No live view unless asked (``live=True``); a library's progress goes to the ``dac_search`` logger.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from dac_search.budget import parse_budget
from dac_search.errors import ConfigError
from dac_search.plan import RankPlan
from dac_search.rundir import RunInfo, load_run, read_run

log = logging.getLogger("dac_search")

# the settings a search takes as keywords: SearchConfig's fields less those search() names itself
_FIXED = {"model", "budget", "device", "trials", "out", "command"}


@dataclass(frozen=True, eq=False)
class Run:
    """A run dir: its trials and front as DataFrames (``read_run``'s columns), and each plan's model."""

    directory: Path
    info: RunInfo
    trials: pd.DataFrame
    front: pd.DataFrame | None  # None while a search is interrupted before its end

    def best(self) -> int:
        """The trial ``dac-search export`` picks: the lowest proxy within the budget (raises if none is)."""
        from dac_search.export.run import pick_trial

        return pick_trial(load_run(self.directory), "best").trial

    def plan(self, trial: int | None = None) -> RankPlan:
        """The plan of ``trial`` (None: the best) whose model it exports: the reconstructed one where made."""
        from dac_search.export.run import exported_plan, pick_trial

        results = load_run(self.directory)
        return exported_plan(results, pick_trial(results, _pick(trial)))

    def model(self, trial: int | None = None, *, original: str | None = None) -> nn.Module:
        """The model of ``trial`` (None: the best), built from the run's model and weights. ``original``: the
        model spec again, where the recorded one runs code (a ``file.py:fn``), as ``export --model`` asks."""
        from dac_search.export.run import exported_plan, original_model, pick_trial
        from dac_search.proxies.apply import decompose_model

        results = load_run(self.directory)
        plan = exported_plan(results, pick_trial(results, _pick(trial)))
        return decompose_model(original_model(results, original), plan)

    def export(self, path: str | Path, trial: int | None = None, format: str = "onnx", *,
               original: str | None = None) -> Path:
        """Write the model of ``trial`` (None: the best) as ``dac-search export`` does; returns the path."""
        from dac_search.export.run import export_run

        return export_run(self.directory, path, format, _pick(trial), original).path


def open_run(directory: str | Path) -> Run:
    """A run dir written by a search (``ConfigError`` naming the file if it is not one)."""
    frames = read_run(directory)
    return Run(Path(directory), frames.info, frames.trials, frames.pareto)


def search(model: str, budget: str, *, device: str = "local", trials: int = 100, out: str | Path | None = None,
           live: bool = False, **settings: Any) -> Run:
    """Search per-layer plans of ``model`` under ``budget`` (``"30ms"``, ``"0.6x"``, ``"50%flops"``) on
    ``device`` (a name from configs/devices, a .toml path, or ``"none"``), in ``out`` (default: the command
    line's ``reports/<model>-<device>-<budget>``); a run dir holding the same search resumes it.

    ``settings``: ``weights``, ``input_shape``, ``methods``, ``precisions``, ``correction``, ``seed``,
    ``proxy_images``, ``storage``, ``study``, ``timeout_s``, ``reconstruct_s``, ``eval_data`` ... (the fields
    of ``dac_search.search.config.SearchConfig``)."""
    from dac_search.search.config import SearchConfig
    from dac_search.search.controller import run_search
    from dac_search.search.live import LiveView

    known = {f.name for f in dataclasses.fields(SearchConfig)} - _FIXED
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}; settings are {', '.join(sorted(known))}")
    for key in ("methods", "precisions"):
        if isinstance(settings.get(key), str):
            settings[key] = tuple(p.strip() for p in settings[key].split(","))
    if settings.get("input_shape") is not None:
        settings["input_shape"] = tuple(settings["input_shape"])
    try:
        config = SearchConfig(model=model, budget=parse_budget(budget), device=device, trials=trials,
                              out=None if out is None else Path(out), command="dac_search.search()", **settings)
        outcome = run_search(config, view_factory=LiveView if live else _Logged)
    except ConfigError as error:
        raise ConfigError(_in_keywords(str(error))) from None
    if outcome.message:
        log.warning(outcome.message)
    return open_run(outcome.run_dir)


def _pick(trial: int | None) -> str:
    return "best" if trial is None else str(int(trial))


def _in_keywords(message: str) -> str:
    """A flag named in a message as the keyword of ``search()``: ``--proxy-images`` as ``proxy_images``."""
    return re.sub(r"--([a-z][a-z-]*)", lambda m: m[1].replace("-", "_"), message)


class _Logged:
    """The live view's interface, speaking to the ``dac_search`` logger instead of a screen."""

    progress_interval_s = 30.0

    def __init__(self, total: int, describe_cost: Any, hosts: Any = None) -> None:
        self.total, self.done, self.hosts = total, 0, hosts

    def __enter__(self) -> _Logged:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def say(self, message: str) -> None:
        log.info(message)

    def warn(self, message: str) -> None:
        log.warning(message)

    def trial_done(self, proxy: float, cost: float, feasible: bool) -> None:
        self.done += 1
