"""A device pool of several hosts against the real sshd on 127.0.0.1 (reached as 127.0.0.1 and localhost)."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch import nn

from dac_search.latency import measure_beside
from profilers import BadModel, HostKeyMismatch, UnknownHost, load_device
from profilers.base import Profiler
from profilers.errors import ProfilerError
from profilers.pool import DevicePool

from .conftest import SshServer, tiny_onnx

SHAPE = (1, 3, 8, 8)


def _models(tmp_path: Path, count: int) -> list[Path]:
    return [tiny_onnx(tmp_path / f"m{i}.onnx", channels=4 + 4 * i, hw=8) for i in range(count)]


def _pool(sshd: SshServer, tmp_path: Path, known: tuple[str, ...], warnings: list[str]) -> DevicePool:
    """Two names for the same server; only the ``known`` ones have its host key on record."""
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("".join(f"[{h}]:{sshd.port} ssh-ed25519 {sshd.host_public_key}\n" for h in known))
    device = sshd.device_toml(tmp_path / "pool.toml", host=None, hosts=["127.0.0.1", "localhost"],
                              known_hosts=str(known_hosts), retries=0)
    return DevicePool(load_device(device), warnings.append)


def test_pool_spreads_models_over_every_host(sshd: SshServer, tmp_path: Path) -> None:
    warnings: list[str] = []
    pool = _pool(sshd, tmp_path, ("127.0.0.1", "localhost"), warnings)
    try:
        results = pool.measure(_models(tmp_path, 6), SHAPE)
    finally:
        pool.close()
    assert len(results) == 6 and all(r.median_ms > 0 for r in results)
    assert {r.conditions.host for r in results} == {"127.0.0.1", "localhost"}
    assert pool.measured["127.0.0.1"] + pool.measured["localhost"] == 6 and min(pool.measured.values()) >= 1
    assert warnings == [] and set(pool.status()) == {"127.0.0.1", "localhost"}


def test_a_failing_host_is_set_aside_and_the_others_finish(sshd: SshServer, tmp_path: Path) -> None:
    warnings: list[str] = []
    pool = _pool(sshd, tmp_path, ("127.0.0.1",), warnings)  # localhost's key is unknown: refused
    try:
        results = pool.measure(_models(tmp_path, 4), SHAPE)
        again = pool.measure(_models(tmp_path, 1), SHAPE)  # the failed host is not tried again
    finally:
        pool.close()
    assert len(results) == 4 and {r.conditions.host for r in [*results, *again]} == {"127.0.0.1"}
    assert pool.state["localhost"] == "failed" and pool.measured == {"127.0.0.1": 5, "localhost": 0}
    assert len(warnings) == 1 and "host localhost set aside" in warnings[0] and "\n" not in warnings[0]


def test_a_bad_model_is_its_own_error_and_sets_no_host_aside(sshd: SshServer, tmp_path: Path) -> None:
    warnings: list[str] = []
    pool = _pool(sshd, tmp_path, ("127.0.0.1", "localhost"), warnings)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    try:
        with pytest.raises(BadModel, match="broken"):
            pool.measure([*_models(tmp_path, 3), broken], SHAPE)
        assert len(pool.measure(_models(tmp_path, 2), SHAPE)) == 2
    finally:
        pool.close()
    assert warnings == [] and set(pool.state.values()) == {"idle"}


def test_an_unexpected_error_in_a_host_thread_is_one_line_naming_the_host(tmp_path: Path) -> None:
    class Exploding(Profiler):
        name, runtime = "exploding", "onnxruntime"

        def measure_many(self, artifacts, input_shape, *, runtime=None, settings=None):
            raise KeyError("runtime_version")

        def info(self, *, runtime=None):
            return {}

        def close(self) -> None:
            pass

    pool = DevicePool(load_device("local"), lambda _: None, {"board-7": Exploding()})
    with pytest.raises(ProfilerError) as raised:
        pool.measure(_models(tmp_path, 1), SHAPE)
    assert str(raised.value) == "device local host board-7: KeyError: 'runtime_version'"


def test_a_pool_with_no_healthy_host_names_the_device(sshd: SshServer, tmp_path: Path) -> None:
    warnings: list[str] = []
    pool = _pool(sshd, tmp_path, (), warnings)
    try:
        with pytest.raises((UnknownHost, HostKeyMismatch, ProfilerError)) as raised:
            pool.measure(_models(tmp_path, 2), SHAPE)
    finally:
        pool.close()
    assert "loopback-test" in str(raised.value) or "127.0.0.1" in str(raised.value)
    assert len(warnings) == 2
    with pytest.raises(ProfilerError, match="every host of device loopback-test has failed"):
        _ = pool.primary


def test_paired_measurement_times_each_model_beside_the_reference_on_its_own_host(
        sshd: SshServer, tmp_path: Path) -> None:
    warnings: list[str] = []
    pool = _pool(sshd, tmp_path, ("127.0.0.1", "localhost"), warnings)
    big = nn.Sequential(*(nn.Conv2d(32, 32, 3, padding=1) for _ in range(6))).eval()
    small = nn.Sequential(nn.Conv2d(32, 8, 1), nn.Conv2d(8, 32, 1)).eval()
    try:
        pairs = measure_beside(pool, big, [small, small, big], (1, 32, 32, 32))
    finally:
        pool.close()
    assert len(pairs) == 3 and {p.host for p in pairs} == {"127.0.0.1", "localhost"}
    for pair in pairs:  # the reference was timed in the same session, on the same host
        assert pair.result.conditions.host == pair.reference.conditions.host == pair.host
    assert pairs[0].ratio < 0.5 and pairs[1].ratio < 0.5  # a few 1x1 convs against six 3x3 ones
    assert 0.5 < pairs[2].ratio < 2.0  # the reference against itself
    assert warnings == []
