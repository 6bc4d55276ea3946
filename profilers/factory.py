"""``make_profiler``: the backend for a device config.

Kept apart from ``devices.py`` so the dependency runs one way: the backends import the config
(``DeviceConfig``), this module imports the backends, and ``devices.py`` imports neither.
"""

from __future__ import annotations

from profilers.base import Profiler
from profilers.devices import DeviceConfig
from profilers.local import LocalProfiler
from profilers.ssh import SshProfiler


def make_profiler(config: DeviceConfig, *, host: str | None = None) -> Profiler:
    """The profiler for a device; ``host`` picks one of a pool (default: the first)."""
    if config.kind == "local":
        return LocalProfiler(config)
    return SshProfiler(config, host=host)
