"""The live view of a running search: trials done, best feasible so far, ETA, each host's state."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text


class LiveView:
    """A small rich table on stderr, refreshed after each trial; silent when stderr is not a terminal."""

    def __init__(self, total: int, describe_cost: Callable[[float], str],
                 hosts: Callable[[], dict[str, str]] | None = None) -> None:
        self.console = Console(stderr=True, markup=False)  # device and user text as it is
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self.best: tuple[float, float] | None = None
        self.describe_cost = describe_cost
        self.hosts = hosts
        self.messages: dict[int, str] = {}  # the last line of each thread: a remote table is timed beside distillation
        # get_renderable: redrawn twice a second, so elapsed time and host states move between trials too
        self._live = Live(console=self.console, refresh_per_second=2, transient=False,
                          get_renderable=self._render) if self.console.is_terminal else None

    def __enter__(self) -> LiveView:
        if self._live:
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live:
            self._live.refresh()
            self._live.__exit__(None, None, None)

    def say(self, message: str) -> None:
        self.messages[threading.get_ident()] = message
        if self._live:
            self._live.refresh()
        else:
            self.console.print(Text(message, style="dim"), soft_wrap=True)  # one line a message in a log

    @property
    def progress_interval_s(self) -> float:
        """How often a long step's count is said: twice a second on screen, twice a minute in a log."""
        return 0.5 if self.console.is_terminal else 30.0

    def warn(self, message: str) -> None:
        """A warning that stays on screen (a host set aside, a host key added). Device and user text is
        printed as it is: ``[pi4]:2222`` is not rich markup."""
        self.console.print(Text(message, style="yellow"))

    def trial_done(self, proxy: float, cost: float, feasible: bool) -> None:
        self.done += 1
        if feasible and (self.best is None or proxy < self.best[0]):
            self.best = (proxy, cost)
        if self._live:
            self._live.refresh()

    def _render(self) -> Table:
        table = Table.grid(padding=(0, 2))
        elapsed = time.monotonic() - self.started
        eta = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        table.add_row("trials", f"{self.done}/{self.total}", "ETA", f"{eta:.0f} s" if self.done else "-")
        best = f"proxy {self.best[0]:.4f} at {self.describe_cost(self.best[1])}" if self.best else "none yet"
        table.add_row("best feasible", best, "elapsed", f"{elapsed:.0f} s")
        if self.hosts:
            table.add_row("device", ", ".join(f"{h}: {s}" for h, s in self.hosts().items()), "", "")
        alive = {thread.ident for thread in threading.enumerate()}
        for ident, message in list(self.messages.items()):
            if ident in alive and message:
                table.add_row("", message, "", "")
        return table
