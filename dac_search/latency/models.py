"""Candidate models written in the device's runtime format and timed end to end on a ``DevicePool``.

The pool measures files (``profilers`` knows nothing of torch modules or plans); the export to the
runtime's format is this side's job, in a private temporary directory removed afterwards.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from torch import nn

from dac_search.export import export_for
from profilers.base import LatencyResult
from profilers.pool import DevicePool, Paired


@contextlib.contextmanager
def _exported(runtime: str, models: Sequence[nn.Module], input_shape: Sequence[int]) -> Iterator[list[Path]]:
    """The models' files for ``runtime``, in a private temporary directory removed on exit."""
    with tempfile.TemporaryDirectory(prefix="dac-search-measure-") as tmp:
        yield [export_for(runtime, m, Path(tmp) / f"model-{i}", input_shape) for i, m in enumerate(models)]


def measure_models(pool: DevicePool, models: Sequence[nn.Module], input_shape: Sequence[int]) -> list[LatencyResult]:
    """Each model timed end to end, spread over the pool's healthy hosts."""
    with _exported(pool.config.runtime, models, input_shape) as paths:
        return pool.measure(paths, input_shape)


def measure_beside(pool: DevicePool, reference: nn.Module, models: Sequence[nn.Module],
                   input_shape: Sequence[int]) -> list[Paired]:
    """Each model timed in one interleaved session with ``reference`` on the same host
    (``DevicePool.measure_beside``)."""
    if not models:
        return []
    with _exported(pool.config.runtime, [reference, *models], input_shape) as paths:
        return pool.measure_beside(paths[0], paths[1:], input_shape)
