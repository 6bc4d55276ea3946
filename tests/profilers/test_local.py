"""LocalProfiler: the runner in a subprocess, with the same results and errors as over SSH."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import pytest

from profilers import BadModel, LocalProfiler, MeasurementTimeout, RuntimeMissing, load_device, make_profiler
from tests.conftest import require

from .conftest import python_without_onnxruntime, wait_until_gone, write_device


def _local(tmp_path: Path, **keys: object) -> LocalProfiler:
    profiler = make_profiler(load_device(write_device(tmp_path / "local-test.toml", kind="local", threads=1, **keys)))
    assert isinstance(profiler, LocalProfiler)
    return profiler


def test_measures_and_describes(tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    with _local(tmp_path) as profiler:
        small, large = profiler.measure_many(list(tiny_models), [1, 3, 16, 16])
        info = profiler.info()
    assert small.artifact == "small.onnx" and small.device == "local-test" and small.n == 5
    assert large.median_ms > 0 and large.input_shape == (1, 3, 16, 16)
    assert info["python"] == sys.executable and info["runtime"] == "onnxruntime" and info["kind"] == "local"


def test_pins_cpus_with_taskset(tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    require(hasattr(os, "sched_getaffinity") and 0 in os.sched_getaffinity(0),
            "cpu 0 is not in this process's affinity mask")
    with _local(tmp_path, cpus="0") as profiler:
        assert profiler._command(["--info", "{}"])[1:3] == ["-c", "0"]
        assert profiler.measure(tiny_models[0], (1, 3, 16, 16)).n == 5


def test_python_without_runtime(tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    bare = python_without_onnxruntime(tmp_path)
    with _local(tmp_path, python=bare) as profiler, pytest.raises(
        RuntimeMissing, match=f"onnxruntime is not importable by {bare} on local-test"
    ):
        profiler.measure(tiny_models[0], (1, 3, 16, 16))


def test_missing_python(tmp_path: Path) -> None:
    with _local(tmp_path, python=str(tmp_path / "nope")) as profiler, pytest.raises(
        RuntimeMissing, match="is not an executable python"
    ):
        profiler.info()


def test_missing_model_file(tmp_path: Path) -> None:
    with _local(tmp_path) as profiler, pytest.raises(BadModel, match="no such model"):
        profiler.measure(tmp_path / "absent.onnx", (1, 3, 16, 16))


def test_hanging_runner_is_killed(tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    marker = f"dac-hang-{uuid.uuid4().hex}"
    python = tmp_path / "hangpython"
    python.write_text(f'#!/bin/sh\n{sys.executable} -c "import time; time.sleep(600)" {marker} "$@"\n')
    python.chmod(0o755)  # no exec: the sleeping child is a grandchild, which the group kill must reach
    start = time.monotonic()
    with _local(tmp_path, python=str(python), timeout_s=1) as profiler, pytest.raises(MeasurementTimeout):
        profiler.measure(tiny_models[0], (1, 3, 16, 16))
    assert time.monotonic() - start < 10
    assert wait_until_gone(marker, timeout_s=2) == []


def test_one_shape_per_artifact(tmp_path: Path) -> None:
    from .conftest import tiny_onnx

    models = [tiny_onnx(tmp_path / "a.onnx", 4, hw=8), tiny_onnx(tmp_path / "b.onnx", 4, hw=32)]
    with _local(tmp_path) as profiler:
        small, large = profiler.measure_many(models, [(1, 3, 8, 8), (1, 3, 32, 32)])
    assert small.input_shape == (1, 3, 8, 8) and large.input_shape == (1, 3, 32, 32)
