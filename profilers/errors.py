"""Typed profiler failures, each printed by the CLI as one line with its ``exit_code``.

``profilers`` imports nothing of ``dac_search``, so it has its own two roots: ``DeviceConfigError`` for
bad input (a device file, a key path, a host not in the config: exit code 2) and ``ProfilerError`` for
failures while talking to a device or measuring on it (exit code 1). ``dac_search.errors`` names both
beside its own tree. Transient network faults never surface as their own type; they are retried, and
what remains is ``DeviceUnreachable``.
"""

from __future__ import annotations


class DeviceConfigError(ValueError):
    """A device config, or a file it names, that cannot be used as given: bad input."""

    exit_code = 2


class ProfilerError(Exception):
    """Root of every failure while talking to a device or measuring on it."""

    exit_code = 1


class DeviceUnreachable(ProfilerError):
    """No connection could be made, or it kept breaking after the retries."""


class AuthFailed(ProfilerError):
    """The device refused every key (and the agent's keys)."""


class HostKeyMismatch(ProfilerError):
    """The device presented a host key different from the one in known_hosts: possibly an attack."""


class UnknownHost(ProfilerError):
    """The device is not in known_hosts and the config does not say ``host_key = "accept-new"``."""


class UnsafeWorkdir(ProfilerError):
    """The device's workdir belongs to another user or others may write to it: a runner there could be
    someone else's."""


class NoSftp(ProfilerError):
    """The device's sshd offers no SFTP subsystem, which uploads need."""


class RuntimeMissing(ProfilerError):
    """The device's python cannot import the runtime (or the python itself is missing)."""


class MeasurementTimeout(ProfilerError):
    """The runner ran past its time limit and was killed; not retried, a rerun would time out again."""


class DeviceOutOfMemory(ProfilerError):
    """The runner ran out of memory (MemoryError, a runtime allocation failure or the OOM killer)."""


class BadModel(ProfilerError):
    """The runtime refused to load or run the model file."""


class DeviceBusy(ProfilerError):
    """Another measurement held the device's lease past the wait allowed (its holder is named)."""


class RunnerFailed(ProfilerError):
    """The runner stopped in a way none of the other errors describe."""
