"""The one interface every profiler implements, and the result it returns."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from profilers.runner import DEFAULT_SETTINGS, WAITING_PREFIX, summarize


@dataclass(frozen=True)
class MeasureSettings:
    """How long and how often the runner measures; tests shrink these, devices may lengthen them."""

    warmup_s: float = DEFAULT_SETTINGS["warmup_s"]
    repeat_s: float = DEFAULT_SETTINGS["repeat_s"]
    repeats: int = int(DEFAULT_SETTINGS["repeats"])
    max_cov: float = DEFAULT_SETTINGS["max_cov"]
    max_attempts: int = int(DEFAULT_SETTINGS["max_attempts"])
    cooldown_s: float = DEFAULT_SETTINGS["cooldown_s"]

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class Conditions:
    """What the device was like while measuring; None where the device does not expose it."""

    runtime: str
    runtime_version: str
    threads: int | None = None
    cpu_model: str | None = None
    governor: str | None = None
    freq_mhz: float | None = None
    temp_c: float | None = None
    temp_c_before: float | None = None
    throttled: str | None = None
    throttle_events: int = 0
    host: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Conditions:
        names = cls.__dataclass_fields__.keys()
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True)
class LatencyResult:
    """Latency of one model on one device: the raw samples (ms per inference, one per repeat) and their
    statistics, so a reader can re-derive or distrust the summary. Statistics are computed, not passed."""

    artifact: str
    device: str
    input_shape: tuple[int, ...]
    samples_ms: tuple[float, ...]
    conditions: Conditions
    number: int = 1  # inferences timed together in one repeat
    attempts: int = 1  # measurements made before the samples were steady enough (or retries ran out)
    stable: bool = True  # CoV within the limit and no throttling in the kept attempt
    lease_waited_s: float = 0.0  # how long the runner waited for another measurement of the device to end
    window: tuple[float, float] | None = None  # device clock (epoch s): the measurement's start and end
    median_ms: float = field(init=False)
    iqr_ms: float = field(init=False)
    p90_ms: float = field(init=False)
    cov: float = field(init=False)
    n: int = field(init=False)

    def __post_init__(self) -> None:
        stats = summarize(list(self.samples_ms))
        for key, value in stats.items():
            object.__setattr__(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        data["samples_ms"] = list(self.samples_ms)
        data["window"] = list(self.window) if self.window else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyResult:
        return cls(
            artifact=str(data["artifact"]),
            device=str(data["device"]),
            input_shape=tuple(int(dim) for dim in data["input_shape"]),
            samples_ms=tuple(float(sample) for sample in data["samples_ms"]),
            conditions=Conditions.from_dict(data["conditions"]),
            number=int(data.get("number", 1)),
            attempts=int(data.get("attempts", 1)),
            stable=bool(data.get("stable", True)),
            lease_waited_s=float(data.get("lease_waited_s", 0.0)),
            window=tuple(float(t) for t in data["window"]) if data.get("window") else None,
        )


class Profiler(abc.ABC):
    """Measures model artifacts on one device. Local and remote profilers share this interface.

    Rules for implementations:

    * ``measure_many`` measures all artifacts in ONE runner call, interleaved (round-robin repeats), and
      returns results in the order given. Artifacts are local paths (``.onnx`` for onnxruntime, a
      TorchScript file for torch, ``.tflite`` for litert); a remote profiler uploads them.
    * Only ``profilers.errors.ProfilerError`` subclasses escape; transient faults are retried inside, a
      real timeout is not.
    * ``runtime=None`` and ``settings=None`` mean the device's configured runtime and measure settings.
    * ``name``, ``runtime`` and ``threads`` describe the device (latency caches are keyed by them).
    * Connections and other resources are opened lazily, reused, and released by ``close()``, which is
      idempotent. Use one profiler per thread.
    """

    name: str
    runtime: str
    threads: int | None
    # Told what the runner says while it measures (it waits for the device's lease, held by someone):
    # a pool shows it in the live view. None: nobody listens.
    on_status: Callable[[str], None] | None = None

    @abc.abstractmethod
    def measure_many(
        self,
        artifacts: Sequence[Path],
        input_shape: Sequence[int] | Sequence[Sequence[int]],
        *,
        runtime: str | None = None,
        settings: MeasureSettings | None = None,
    ) -> list[LatencyResult]:
        """Measure several artifacts interleaved, in one runner call; ``input_shape`` is shared by all or
        given per artifact (a list of shapes)."""

    @abc.abstractmethod
    def info(self, *, runtime: str | None = None) -> dict[str, Any]:
        """Describe the device (cpu, python, runtime version, threads, conditions); checks the runtime."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; safe to call twice."""

    def runner_said(self, line: str) -> None:
        """A stderr line of the runner, as it comes: a wait for the lease is passed to ``on_status``."""
        if line.startswith(WAITING_PREFIX) and self.on_status is not None:
            self.on_status(f"waiting for the lease held by {line.removeprefix(WAITING_PREFIX).strip()}")

    def measure(
        self,
        artifact: Path,
        input_shape: Sequence[int],
        *,
        runtime: str | None = None,
        settings: MeasureSettings | None = None,
    ) -> LatencyResult:
        """Measure one artifact."""
        return self.measure_many([artifact], input_shape, runtime=runtime, settings=settings)[0]

    def __enter__(self) -> Profiler:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
