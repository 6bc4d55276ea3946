"""One exception tree, so the CLI can turn any expected failure into one line and an exit code.

``ConfigError`` (and its children) is bad input: exit code 2. Everything else under
``DacSearchError`` is a failure of the device or the environment: exit code 1. ``profilers``, which
imports nothing of this package, has its own two roots (``DeviceConfigError``: exit 2,
``ProfilerError``: exit 1); ``EXPECTED`` is every root the CLI turns into one line.
"""

from __future__ import annotations

from profilers.errors import DeviceConfigError, ProfilerError


class DacSearchError(Exception):
    """Root of every error dac-search raises on purpose."""

    exit_code = 1


class ConfigError(DacSearchError, ValueError):
    """Bad input from the user: a flag, a file, a plan, a budget."""

    exit_code = 2


class ModelLoadError(ConfigError):
    """A model spec or weights file that cannot be turned into a model."""


class PlanError(ConfigError):
    """A rank plan that does not fit the model it is applied to."""


class DecompositionError(ConfigError):
    """A layer that cannot be decomposed as asked (1x1 kernel, depthwise, rank out of range)."""


class StorageUnavailableError(DacSearchError):
    """A study storage still unreachable or failing after the retries: the environment, not the input."""

    exit_code = 1


class WeightsUnavailableError(DacSearchError):
    """Pretrained weights are neither cached nor downloadable (offline machine)."""

    exit_code = 1


EXPECTED: tuple[type[Exception], ...] = (DacSearchError, DeviceConfigError, ProfilerError)
