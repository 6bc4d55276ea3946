"""Budgets: ``30ms``, ``0.5x`` (of the original's latency), ``50%flops``, ``2.1GFLOPs``, ``40%params``, ``1.2Mparams``.

Parsed once into a frozen ``Budget``; relative forms become absolute once the baseline is known.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from dac_search.errors import ConfigError

_SCALE = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_PATTERNS = (
    (re.compile(r"^(?P<num>[0-9]*\.?[0-9]+)ms$"), "latency", "absolute"),
    (re.compile(r"^(?P<num>[0-9]*\.?[0-9]+)x$"), "latency", "ratio"),
    (re.compile(r"^(?P<num>[0-9]*\.?[0-9]+)%flops$"), "flops", "percent"),
    (re.compile(r"^(?P<num>[0-9]*\.?[0-9]+)(?P<scale>[kmgt]?)flops$"), "flops", "absolute"),
    (re.compile(r"^(?P<num>[0-9]*\.?[0-9]+)%params$"), "params", "percent"),
    (re.compile(r"^(?P<num>[0-9]*\.?[0-9]+)(?P<scale>[kmgt]?)params$"), "params", "absolute"),
)
UNITS = {"latency": "ms", "flops": "flops", "params": "params"}
FORMS = "30ms, 0.5x, 50%flops, 2.1GFLOPs, 40%params or 1.2Mparams"


@dataclass(frozen=True)
class Budget:
    """What must not be exceeded: ``kind`` (latency | flops | params) at ``value`` in its unit."""

    text: str
    kind: str
    value: float | None  # absolute, once known
    fraction: float | None = None  # of the original, for relative forms

    @property
    def unit(self) -> str:
        return UNITS[self.kind]

    @property
    def relative_latency(self) -> bool:
        """A latency budget as a share of the original's (``0.6x``): judged on a plan's ratio to it."""
        return self.kind == "latency" and self.fraction is not None

    @property
    def objective(self) -> str:
        """The cost the search minimises beside the proxy (parameters are a constraint on a FLOPs search)."""
        return "latency_ms" if self.kind == "latency" else "flops"

    def resolve(self, baseline: float | None) -> Budget:
        """The absolute budget for a baseline measured in this budget's unit."""
        if self.value is not None:
            return self
        if baseline is None or not math.isfinite(baseline):
            raise ConfigError(f"budget {self.text!r} is relative to the original's {self.kind}, which is unknown")
        return replace(self, value=self.fraction * baseline)

    def slack(self, cost: float) -> float:
        """Optuna's constraint convention: <= 0 is feasible."""
        assert self.value is not None, "resolve the budget first"
        return cost - self.value

    def to_dict(self) -> dict[str, object]:
        return {"text": self.text, "kind": self.kind, "value": self.value, "unit": self.unit,
                "fraction": self.fraction}


def parse_budget(text: str) -> Budget:
    """Parse a budget; anything else is one clear ConfigError."""
    compact = text.strip().lower().replace(" ", "")
    for pattern, kind, form in _PATTERNS:
        match = pattern.match(compact)
        if not match:
            continue
        number = float(match["num"])
        if number <= 0:
            break
        if form == "ratio":
            if number >= 1:
                raise ConfigError(f"budget {text!r}: a latency ratio must be below 1x (the original is 1x)")
            return Budget(text, kind, None, number)
        if form == "percent":
            if number >= 100:
                raise ConfigError(f"budget {text!r}: a percentage must be below 100%")
            return Budget(text, kind, None, number / 100)
        scale = _SCALE[match.groupdict().get("scale") or ""]
        return Budget(text, kind, number * scale)
    raise ConfigError(f"cannot read budget {text!r}: use a positive amount like {FORMS}")
