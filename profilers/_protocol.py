"""What both profilers say to runner.py and how they read its answer: the job, the exit codes, the results.

Kept apart from the transports so local and SSH runs turn the same runner outcome into the same
``LatencyResult`` or the same typed error.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from profilers import errors, runner
from profilers.base import Conditions, LatencyResult, MeasureSettings

RUNNER_PATH = Path(runner.__file__).resolve()
_TIMEOUT_STATUS = (124, 128 + signal.SIGKILL)  # coreutils timeout: TERM worked / KILL was needed
NOT_RUNNABLE_STATUS = (126, 127)  # command found but not executable / not found


@dataclass(frozen=True)
class RunnerOutcome:
    """How one runner process ended, whatever carried it."""

    status: int  # exit status; negative = killed by that signal (local only)
    stdout: str
    stderr: str
    elapsed_s: float
    limit_s: float  # the timeout it ran under


@dataclass(frozen=True)
class Context:
    """Names used in error messages and results."""

    device: str
    python: str
    runtime: str
    host: str | None = None
    local_names: tuple[tuple[str, str], ...] = ()  # (path on the device, the user's file): said in errors

    def named(self, paths: Sequence[str], locals_: Sequence[Path]) -> Context:
        return replace(self, local_names=tuple((remote, str(local)) for remote, local in zip(paths, locals_)))


def runner_digest() -> str:
    """Content hash of runner.py: a changed runner gets a new name on the device."""
    return hashlib.sha256(RUNNER_PATH.read_bytes()).hexdigest()[:16]


def shapes(input_shape: Sequence[int] | Sequence[Sequence[int]], count: int) -> list[tuple[int, ...]]:
    """One shape per artifact, from one shared shape or a list of them."""
    if input_shape and all(isinstance(item, Sequence) for item in input_shape):
        listed = [tuple(int(dim) for dim in item) for item in input_shape]  # type: ignore[union-attr]
        if len(listed) != count:
            raise ValueError(f"{len(listed)} input shapes for {count} artifacts")
        return listed
    return [tuple(int(dim) for dim in input_shape)] * count  # type: ignore[arg-type]


def job(
    models: Sequence[str],
    input_shapes: Sequence[tuple[int, ...]],
    runtime: str,
    threads: int | None,
    settings: MeasureSettings,
    lease: dict[str, Any] | None = None,
) -> dict[str, Any]:
    document = {
        "models": list(models),
        "input_shape": [list(shape) for shape in input_shapes],
        "runtime": runtime,
        "threads": threads,
        "settings": settings.to_dict(),
    }
    return {**document, "lease": lease} if lease else document


LEASE_FILE = "lease"  # in the device's workdir (the local device: in this user's cache dir)
HOLDER = f"{socket.gethostname()}:{os.getpid()}"  # who measures: written into the lease file


def lease(path: str, wait_s: float, *, holder: str = HOLDER, evict: bool = False) -> dict[str, Any]:
    """The job's lease: the device is measured by one runner at a time (see runner.py). ``evict`` takes it
    from an orphaned runner of the same ``holder`` (a retry after a dropped connection)."""
    return {"path": path, "holder": holder, "wait_s": wait_s, "evict": evict}


def info_argument(runtime: str, threads: int | None) -> str:
    return json.dumps({"runtime": runtime, "threads": threads})


def decode(outcome: RunnerOutcome, ctx: Context) -> dict[str, Any]:
    """The runner's JSON document, or the typed error its exit says."""
    where = f"{ctx.device}" + (f" ({ctx.host})" if ctx.host and ctx.host != ctx.device else "")
    document = _last_json_line(outcome.stdout)
    message = str(document.get("message", "")) if document else ""
    for remote, local in ctx.local_names:  # the device's cache names mean nothing to the user
        message = message.replace(remote, local).replace(remote.rpartition("/")[2], local)
    status = outcome.status
    if status in _TIMEOUT_STATUS and outcome.elapsed_s >= outcome.limit_s - 1.0:
        raise errors.MeasurementTimeout(
            f"runner on {where} did not finish within {outcome.limit_s:.0f} s and was killed"
        )
    if status == runner.EXIT_RUNTIME_MISSING:
        raise errors.RuntimeMissing(f"{ctx.runtime} is not importable by {ctx.python} on {where}")
    if status in NOT_RUNNABLE_STATUS:
        raise errors.RuntimeMissing(f"{ctx.python} is not an executable python on {where}")
    if status == runner.EXIT_OUT_OF_MEMORY:
        raise errors.DeviceOutOfMemory(f"out of memory on {where}: {message}")
    if status in (-signal.SIGKILL, 128 + signal.SIGKILL):
        raise errors.DeviceOutOfMemory(f"runner on {where} was killed (SIGKILL), most likely out of memory")
    if status == runner.EXIT_BAD_MODEL:
        raise errors.BadModel(f"{ctx.runtime} cannot run {message} on {where}")
    if status == runner.EXIT_LEASE_TIMEOUT:
        raise errors.DeviceBusy(f"{where} is being measured by {message}: its lease was not released in time")
    if status == runner.EXIT_ORPHANED:
        raise errors.RunnerFailed(f"runner on {where} lost its caller and stopped")
    if status != 0 or document is None or not document.get("ok"):
        detail = message or last_line(outcome.stderr) or "no output"
        raise errors.RunnerFailed(f"runner on {where} failed (exit status {status}): {detail}")
    return document


def results(
    document: dict[str, Any], artifacts: Sequence[Path], input_shapes: Sequence[tuple[int, ...]], ctx: Context
) -> list[LatencyResult]:
    """One ``LatencyResult`` per artifact, in order, from a measurement document."""
    cond = Conditions.from_dict(
        {
            **document.get("conditions", {}),
            "runtime": document["runtime"],
            "runtime_version": document["runtime_version"],
            "threads": document.get("threads"),
            "host": ctx.host,
        }
    )
    rows = document["results"]
    held = document.get("lease") or {}
    window = (float(held["start"]), float(held["end"])) if "start" in held and "end" in held else None
    if len(rows) != len(artifacts):
        raise errors.RunnerFailed(f"runner on {ctx.device} returned {len(rows)} results for {len(artifacts)} models")
    return [
        LatencyResult(
            artifact=Path(artifact).name,
            device=ctx.device,
            input_shape=shape,
            samples_ms=tuple(float(s) for s in row["samples_ms"]),
            conditions=cond,
            number=int(row["number"]),
            attempts=int(row["attempts"]),
            stable=bool(row["stable"]),
            lease_waited_s=float(held.get("waited_s", 0.0)),
            window=window,
        )
        for artifact, shape, row in zip(artifacts, input_shapes, rows)
    ]


def _last_json_line(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
    return None


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
