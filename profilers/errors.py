"""Typed profiler failures, each printed by the CLI as one line (exit code 1).

A bad device config is not here: it is ``dac_search.errors.ConfigError`` (exit code 2). Transient network
faults never surface as their own type; they are retried, and what remains is ``DeviceUnreachable``.
"""

from __future__ import annotations

from dac_search.errors import DacSearchError


class ProfilerError(DacSearchError):
    """Root of every failure while talking to a device or measuring on it."""


class DeviceUnreachable(ProfilerError):
    """No connection could be made, or it kept breaking after the retries."""


class AuthFailed(ProfilerError):
    """The device refused every key (and the agent's keys)."""


class HostKeyMismatch(ProfilerError):
    """The device presented a host key different from the one in known_hosts: possibly an attack."""


class UnknownHost(ProfilerError):
    """The device is not in known_hosts and the config does not say ``host_key = "accept-new"``."""


class RuntimeMissing(ProfilerError):
    """The device's python cannot import the runtime (or the python itself is missing)."""


class MeasurementTimeout(ProfilerError):
    """The runner ran past its time limit and was killed; not retried, a rerun would time out again."""


class DeviceOutOfMemory(ProfilerError):
    """The runner ran out of memory (MemoryError, a runtime allocation failure or the OOM killer)."""


class BadModel(ProfilerError):
    """The runtime refused to load or run the model file."""


class RunnerFailed(ProfilerError):
    """The runner stopped in a way none of the other errors describe."""
