"""LatencyResult: statistics derived from the raw samples, and a lossless dict round trip."""

from __future__ import annotations

import json

import pytest

from profilers import Conditions, LatencyResult


def test_statistics_and_round_trip() -> None:
    conditions = Conditions(runtime="onnxruntime", runtime_version="1.0", threads=4, cpu_model="Cortex-A72",
                            governor="ondemand", freq_mhz=1500.0, temp_c=51.2, throttled="0x0", host="pi4")
    result = LatencyResult(artifact="m.onnx", device="pi4", input_shape=(1, 3, 32, 32),
                           samples_ms=(2.0, 1.0, 3.0, 4.0), conditions=conditions, number=50, attempts=2)
    assert result.median_ms == 2.5 and result.n == 4 and result.iqr_ms == pytest.approx(1.5)
    assert result.p90_ms == pytest.approx(3.7) and result.cov > 0
    data = json.loads(json.dumps(result.to_dict()))
    assert data["median_ms"] == 2.5 and data["conditions"]["cpu_model"] == "Cortex-A72"
    assert LatencyResult.from_dict(data) == result


def test_no_samples_is_an_error() -> None:
    with pytest.raises(ValueError):
        LatencyResult(artifact="m", device="d", input_shape=(1,), samples_ms=(),
                      conditions=Conditions(runtime="onnxruntime", runtime_version="1"))
