"""Where a search's time goes, host and device apart, and the two run at once where they can.

A user planning an overnight job on a board needs to know which to buy down: device seconds (the latency
table, its calibration, the final measurement) grow with the board's slowness; host seconds (distillation,
proxies, trials) with the model and this machine. With a remote device the table's timings and the host's
distillation share nothing, so they run at once, and the set-up takes the longer of the two, not their sum; so
do the front's end-to-end timings and the images the front is then judged with.
A local device times on the host's own cores: there they run one after the other, or each would slow the
other's timings.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from dac_search.rundir import StageTime

HOST, DEVICE = "host", "device"
A = TypeVar("A")
B = TypeVar("B")


@dataclass
class StageClock:
    """The stages of this session, in the order they ended; thread-safe, as stages may overlap."""

    started: float = field(default_factory=time.monotonic)
    stages: list[StageTime] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @contextmanager
    def stage(self, name: str, where: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            end = time.monotonic()
            with self._lock:
                self.stages.append(StageTime(name, where, round(start - self.started, 1), round(end - start, 1)))


def beside(device_step: Callable[[], A], host_step: Callable[[], B], overlap: bool) -> tuple[A, B]:
    """Both steps' results; with ``overlap`` the device step runs in a thread while the host step runs here.
    The device step's error is raised after the host step ends (what the host made is cached on disk)."""
    if not overlap:
        return device_step(), host_step()
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = device_step()
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name="device", daemon=True)  # daemon: Ctrl-C here does not wait for it
    thread.start()
    host = host_step()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"], host  # type: ignore[return-value]
