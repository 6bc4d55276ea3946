"""End-to-end latency of model files on a device or a pool of identical hosts.

Each host gets its own profiler and thread; batches of model files are handed out from one queue, each
measured in one interleaved session. A host that cannot be reached or used is set aside with a warning
naming it, and its batch goes back to the queue for the others; a batch that fails on a healthy host is
that batch's error (see ``_spread``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from profilers.base import LatencyResult, Profiler
from profilers.devices import DeviceConfig
from profilers.errors import (
    AuthFailed,
    DeviceUnreachable,
    HostKeyMismatch,
    NoSftp,
    ProfilerError,
    RuntimeMissing,
    UnknownHost,
    UnsafeWorkdir,
)
from profilers.factory import make_profiler

Warn = Callable[[str], None]
# Faults of the host, not of the batch it was given: the only ones that set a host aside.
HOST_FAULTS: tuple[type[ProfilerError], ...] = (
    DeviceUnreachable, AuthFailed, HostKeyMismatch, UnknownHost, UnsafeWorkdir, NoSftp, RuntimeMissing,
)


@dataclass(frozen=True)
class Paired:
    """A model and the reference it was interleaved with, in one session on one host."""

    result: LatencyResult
    reference: LatencyResult
    host: str

    @property
    def ratio(self) -> float:
        return self.result.median_ms / self.reference.median_ms


class DevicePool:
    """One profiler per host of a device config, opened lazily and kept for the whole search.

    ``profilers``: host -> profiler, to run the pool on other backends (an in-memory one in tests);
    by default one per host of ``config``, made by ``make_profiler``.
    """

    def __init__(self, config: DeviceConfig, warn: Warn, profilers: Mapping[str, Profiler] | None = None) -> None:
        self.config = config
        self.warn = warn
        if profilers is None:
            profilers = {host: make_profiler(config, host=None if config.kind == "local" else host)
                         for host in config.hosts or ("local",)}
        self._profilers: dict[str, Profiler] = dict(profilers)
        hosts = tuple(self._profilers)
        self.state: dict[str, str] = {host: "idle" for host in hosts}
        self.measured: dict[str, int] = {host: 0 for host in hosts}
        for host, profiler in self._profilers.items():  # "waiting for the lease held by ..." in the live view
            profiler.on_status = lambda status, host=host: self.state.__setitem__(host, status)

    def status(self) -> dict[str, str]:
        """Each host's state and how many models it measured, for the live view."""
        return {host: f"{state}, {self.measured[host]} measured" for host, state in self.state.items()}

    @property
    def primary(self) -> Profiler:
        """The first healthy host (layer tables and the baseline are measured there)."""
        for host, profiler in self._profilers.items():
            if self.state[host] != "failed":
                return profiler
        raise ProfilerError(f"every host of device {self.config.name} has failed")

    def measure(self, models: Sequence[Path], input_shape: Sequence[int]) -> list[LatencyResult]:
        """Measure each model file end to end; spread over the healthy hosts, in parallel."""
        batches = self._spread([[path] for path in models], input_shape)
        return [results[0] for _, results in batches]

    def measure_beside(self, reference: Path, models: Sequence[Path], input_shape: Sequence[int]) -> list[Paired]:
        """Each model timed in one interleaved session with ``reference`` on the same host.

        Their ratio is what a relative budget (``0.6x``) asks about: a slow spell of a shared machine
        slows both alike, and in a pool no candidate is compared with another host's original.
        One session per healthy host, the models dealt round-robin.
        """
        if not models:
            return []
        hosts = max(1, sum(state != "failed" for state in self.state.values()))
        deals = [list(range(start, len(models), hosts)) for start in range(min(hosts, len(models)))]
        batches = self._spread([[reference, *(models[i] for i in deal)] for deal in deals], input_shape)
        paired: dict[int, Paired] = {}
        for deal, (host, results) in zip(deals, batches):
            for index, result in zip(deal, results[1:]):
                paired[index] = Paired(result, results[0], host)
        return [paired[i] for i in range(len(models))]

    def _spread(self, batches: list[list[Path]], input_shape: Sequence[int]) -> list[tuple[str, list[LatencyResult]]]:
        """Each batch measured in one interleaved session on whichever healthy host is free.

        Only a fault of the host itself (no connection, refused keys or host key, no runtime) sets it aside
        and hands its batch to the others; a fault of one batch (a model the runtime refuses, out of
        memory, a timeout) is that batch's error, raised once the others are done, and the host stays.
        Anything else a thread meets is raised as one line naming the host.
        """
        if not batches:
            return []
        todo: queue.Queue[int] = queue.Queue()
        for index in range(len(batches)):
            todo.put(index)
        results: dict[int, tuple[str, list[LatencyResult]]] = {}
        host_faults: list[ProfilerError] = []
        batch_faults: list[ProfilerError] = []
        lock = threading.Lock()

        def work(host: str, profiler: Profiler) -> None:
            while True:
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                self.state[host] = "measuring"
                try:
                    measured = profiler.measure_many(batches[index], input_shape)
                except HOST_FAULTS as exc:
                    with lock:
                        host_faults.append(exc)
                    self.state[host] = "failed"
                    todo.put(index)
                    self.warn(f"device {self.config.name} host {host} set aside: {exc}")
                    return
                except ProfilerError as exc:
                    with lock:
                        batch_faults.append(exc)
                    self.state[host] = "idle"
                    continue
                except Exception as exc:  # a bug or an environment fault: one line naming the host, not silence
                    with lock:
                        batch_faults.append(ProfilerError(
                            f"device {self.config.name} host {host}: {type(exc).__name__}: {exc}"))
                    self.state[host] = "idle"
                    return
                with lock:
                    results[index] = (host, measured)
                    self.measured[host] += len(measured)
                self.state[host] = "idle"

        healthy = [(h, p) for h, p in self._profilers.items() if self.state[h] != "failed"]
        threads = [threading.Thread(target=work, args=item, daemon=True) for item in healthy]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if batch_faults:
            raise batch_faults[0]
        if len(results) < len(batches):
            raise host_faults[-1] if host_faults else ProfilerError(f"device {self.config.name}: no healthy host left")
        return [results[i] for i in range(len(batches))]

    def close(self) -> None:
        for profiler in self._profilers.values():
            profiler.close()
