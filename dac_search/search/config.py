"""Settings of one search, grouped in one frozen dataclass (not thirty keywords)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dac_search.budget import Budget
from dac_search.errors import ConfigError
from dac_search.methods import METHODS, PLAN_METHODS
from dac_search.plan import CORRECTIONS
from dac_search.precision import FP32, INT8, PRECISIONS

AUTO_CORRECTION = "auto"  # the search's default correction, resolved by the budget's kind

_DURATION = re.compile(r"^(?P<num>[0-9]*\.?[0-9]+)(?P<unit>s|m|h|d)?$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


@dataclass(frozen=True)
class SearchConfig:
    model: str
    budget: Budget
    device: str = "local"  # a device name, a path to a TOML file, or "none"
    weights: str | None = None
    input_shape: tuple[int, ...] | None = None
    trials: int = 100
    timeout_s: float | None = None
    out: Path | None = None
    storage: str | None = None
    study: str | None = None  # the study's name in the storage (default: read off the settings)
    heartbeat_s: float = 120.0  # a trial its worker stopped beating for this long is failed and retried
    seed: int = 0
    # None: every method under a latency budget, pruning included (the device's table prices each layer's
    # options: removing channels converts to time 1:1, a factorisation adds operators); every factorisation
    # under a FLOPs or parameter budget, where each beat or tied DAC alone in all six search cells of
    # benchmarks/quality.py (README) and pruning was not measured to help.
    methods: tuple[str, ...] | None = None
    # "auto": stream under a latency budget, where it beat refit at all five budgets of
    # benchmarks/latency_quality.py; refit under a FLOPs or parameter budget, where stream was not better in
    # every cell of benchmarks/quality.py (ResNet-20 at 40% FLOPs: 85.46% against 86.60%). None: no correction.
    correction: str | None = AUTO_CORRECTION
    inputs: str = "auto"  # the kind of synthetic inputs (dac_search.proxies.synthetic)
    # None: fp32 and int8 under a latency budget (the deployed model is int8 wherever it pays, and only the
    # device can say where), fp32 alone under a FLOPs or parameter budget (counts that precision does not change)
    precisions: tuple[str, ...] | None = None
    proxy_images: int = 64
    measure_points: int = 8  # Pareto candidates measured end to end per round at the end, and judged
    fit_images: int | None = None  # synthetic images each plan's own model is fitted on (None: fit_of's default)
    agreement_images: int | None = None  # held-out synthetic images the front is judged on (None: by size; 0: none)
    reconstruct_s: float | None = None  # wall time of the reconstruction stage after the search (None: none)
    reconstruct_images: int | None = None  # synthetic images it fits on (None: by input size)
    eval_data: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    command: str = ""

    def __post_init__(self) -> None:
        if self.methods is None:
            object.__setattr__(self, "methods", PLAN_METHODS if self.budget.kind == "latency" else METHODS)
        if self.precisions is None:
            object.__setattr__(self, "precisions", PRECISIONS if self.budget.kind == "latency" else (FP32,))
        elif INT8 in self.precisions and self.budget.kind != "latency":
            raise ConfigError(f"--precision int8 needs a latency budget: int8 changes no FLOPs or parameter count "
                              f"(budget {self.budget.text!r})")
        if self.correction == AUTO_CORRECTION:
            object.__setattr__(self, "correction", "stream" if self.budget.kind == "latency" else "refit")
        if self.correction is not None and self.correction not in CORRECTIONS:
            raise ConfigError(f"--correction takes {AUTO_CORRECTION}, none or one of {', '.join(CORRECTIONS)}, "
                              f"got {self.correction!r}")
        unknown = [m for m in self.methods if m not in PLAN_METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"--methods takes a comma list of {', '.join(PLAN_METHODS)}, "
                              f"got {','.join(self.methods)}")
        if self.fit_images is not None and self.fit_images < 1:
            raise ConfigError(f"--fit-images must be at least 1, got {self.fit_images}")
        if self.fit_images is not None and self.correction is None:
            raise ConfigError("--fit-images sets the images a correction is fitted on: it needs --correction "
                              "other than none")
        if self.agreement_images is not None and self.agreement_images < 0:
            raise ConfigError(f"--agreement-images must be 0 or more, got {self.agreement_images}")
        if self.trials < 1:
            raise ConfigError(f"--trials must be at least 1, got {self.trials}")
        from dac_search.proxies.synthetic import AUTO, KINDS

        if self.inputs != AUTO and self.inputs not in KINDS:
            raise ConfigError(f"--inputs takes {AUTO} or one of {', '.join(KINDS)}, got {self.inputs!r}")
        if self.study is not None and not self.study.strip():
            raise ConfigError("--study needs a name")
        if self.heartbeat_s < 2:
            raise ConfigError(f"--heartbeat must be at least 2s (workers beat every quarter of it), "
                              f"got {self.heartbeat_s:g}s")
        check_reconstruct_images(self.reconstruct_images)
        if self.proxy_images < 2:
            raise ConfigError(f"--proxy-images must be at least 2, got {self.proxy_images}")
        if self.budget.kind == "latency" and self.device == "none":
            raise ConfigError(f"budget {self.budget.text!r} is a latency: it needs a --device, not none")

    @property
    def plan_inputs(self) -> str | None:
        """What every plan records as its ``inputs``: None for auto, which the plan format's default is."""
        return None if self.inputs == "auto" else self.inputs

    @property
    def has_device(self) -> bool:
        return self.device != "none"

    @property
    def model_label(self) -> str:
        """The model as a short name: a file spec's stem, else the spec."""
        return Path(self.model.split(":")[0]).stem if ("/" in self.model or ":" in self.model) else self.model

    @property
    def device_label(self) -> str:
        return Path(self.device).stem if self.device.endswith(".toml") else self.device

    def default_out(self, root: Path = Path("reports")) -> Path:
        budget = self.budget.text.replace("%", "pct").replace(" ", "")
        return root / f"{self.model_label}-{self.device_label}-{budget}"


def check_reconstruct_images(images: int | None) -> None:
    if images is not None and images < 1:
        raise ConfigError(f"--reconstruct-images must be at least 1, got {images}")


def parse_duration(text: str) -> float:
    match = _DURATION.match(text.strip().lower())
    if not match or float(match["num"]) <= 0:
        raise ConfigError(f"cannot read duration {text!r}: use e.g. 90s, 30m, 8h")
    return float(match["num"]) * _SECONDS[match["unit"]]
