"""Progress of a long step as one line: what it does, how far it is, when it ends.

Long loops (the latency table, distillation, single-layer proxies, reconstruction) report ``(done, total)`` to an
``OnProgress`` callback and know nothing of screens; ``Progress`` turns that into a line for the live view,
"measuring the proxy of single-layer changes: 120/789, ETA 210 s", at most once per ``interval_s``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Say = Callable[[str], None]
OnProgress = Callable[[int, int], None]  # (units done, units in all)


@dataclass
class Progress:
    """One line of progress every ``interval_s`` at most (twice a second on a live view, rarely in a log), and
    always at the end. The clock starts when it is made, just before the step; a count that starts again (the
    int8 rounding after the float fit) restarts it."""

    say: Say
    label: str
    interval_s: float = 0.5
    unit: str = ""  # before the count: "step " reads "step 3/40"
    started: float = field(default_factory=lambda: time.monotonic())
    shown: float = -math.inf
    last: int = 0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < self.last:
            self.started = now
        self.last = done
        if now - self.shown < self.interval_s and done < total:
            return
        self.shown = now
        eta = f", ETA {(now - self.started) / done * (total - done):.0f} s" if 0 < done < total else ""
        self.say(f"{self.label}: {self.unit}{done}/{total}{eta}")


def part_of(on_progress: OnProgress | None, index: int, parts: int) -> OnProgress | None:
    """Progress of part ``index`` of ``parts`` equal parts (the batches of a distillation) as progress of the
    whole."""
    if on_progress is None:
        return None
    return lambda done, total: on_progress(index * total + done, parts * total)
