"""Silence for the converters and quantizers dac-search calls: they print progress, log advice at WARNING
and raise warnings, none of which the user can act on, and any of which would break the live view."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_tools(*loggers: str) -> Iterator[None]:
    """Stdout swallowed, warnings ignored, the root logger and ``loggers`` at ERROR, for the block."""
    targets = [logging.getLogger(), *(logging.getLogger(name) for name in loggers)]
    levels = [log.level for log in targets]
    for log in targets:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(targets, levels):
            log.setLevel(level)
