"""Device leases: measurements of one device never overlap, whoever asks (two workers, two searches), a
lease held too long is reported with its holder, and a killed holder frees the device at once."""

from __future__ import annotations

import fcntl
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from profilers import DeviceBusy, LatencyResult, LocalProfiler, SshProfiler, load_device
from profilers.local import local_lease_path

from .conftest import SshServer, write_device

SLOW_ENOUGH = {"warmup_s": 0.3, "repeat_s": 0.02, "repeats": 5, "max_attempts": 1, "max_cov": 1.0}


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # this test's own local lease


def _local(tmp_path: Path, name: str, **keys: object) -> LocalProfiler:
    return LocalProfiler(load_device(write_device(tmp_path / f"{name}.toml", SLOW_ENOUGH, kind="local", threads=1,
                                                  **keys)))


def _at_once(profilers: list, model: Path) -> list[LatencyResult]:
    with ThreadPoolExecutor(len(profilers)) as pool:
        futures = [pool.submit(p.measure, model, (1, 3, 16, 16)) for p in profilers]
        return [future.result() for future in futures]


def _disjoint(results: list[LatencyResult]) -> bool:
    windows = sorted(result.window for result in results)
    return all(earlier[1] <= later[0] for earlier, later in zip(windows, windows[1:]))


def test_two_local_devices_of_one_machine_measure_one_at_a_time(tmp_path: Path, tiny_models) -> None:
    first, second = _local(tmp_path, "local-a"), _local(tmp_path, "local-b")  # two configs, one machine
    results = _at_once([first, second], tiny_models[1])
    assert all(result.window is not None for result in results) and _disjoint(results)
    assert max(result.lease_waited_s for result in results) > 0.1  # one of them waited for the other


@pytest.mark.slow  # two SSH sessions to the loopback sshd
def test_two_workers_on_one_ssh_device_measure_one_at_a_time(sshd: SshServer, tmp_path: Path, tiny_models) -> None:
    config = load_device(sshd.device_toml(tmp_path / "device.toml", measure=SLOW_ENOUGH))
    with SshProfiler(config, backoff_s=0.1) as first, SshProfiler(config, backoff_s=0.1) as second:
        results = _at_once([first, second], tiny_models[1])
    assert _disjoint(results) and max(result.lease_waited_s for result in results) > 0.1


def test_a_lease_held_too_long_is_one_line_naming_its_holder(tmp_path: Path, tiny_models) -> None:
    path = local_lease_path()
    with path.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("nightly-worker:4242 since 2026-12-01 03:00:00\n")
        held.flush()
        started = time.monotonic()
        with pytest.raises(DeviceBusy) as raised:
            _local(tmp_path, "local-test", lease_wait_s=1).measure(tiny_models[0], (1, 3, 16, 16))
    assert time.monotonic() - started < 20
    message = str(raised.value)
    assert "nightly-worker:4242" in message and "\n" not in message and "local-test" in message


def test_a_holder_killed_mid_measurement_frees_the_device_at_once(tmp_path: Path, tiny_models) -> None:
    path = local_lease_path()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from profilers.runner import take_lease; "
         f"take_lease({{'path': {str(path)!r}, 'holder': 'doomed'}}); print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    result = _local(tmp_path, "local-test", lease_wait_s=30).measure(tiny_models[0], (1, 3, 16, 16))
    assert result.lease_waited_s < 1.0  # the kernel released the dead holder's lock


def test_a_host_waiting_for_its_lease_says_so_in_the_pools_status(tmp_path: Path, tiny_models) -> None:
    """What the live view shows while another search measures the device: who holds it."""
    from profilers.pool import DevicePool

    path = local_lease_path()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from profilers.runner import take_lease; "
         f"take_lease({{'path': {str(path)!r}, 'holder': 'overnight-search:77'}}); print('held', flush=True); "
         "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        profiler = _local(tmp_path, "local-test", lease_wait_s=60)
        pool = DevicePool(profiler.config, lambda _: None, {"local": profiler})
        with ThreadPoolExecutor(1) as executor:
            measuring = executor.submit(pool.measure, [tiny_models[0]], (1, 3, 16, 16))
            deadline = time.monotonic() + 20
            while "overnight-search:77" not in pool.status()["local"]:
                assert time.monotonic() < deadline and not measuring.done(), pool.status()
                time.sleep(0.05)
            assert pool.status()["local"].startswith("waiting for the lease held by overnight-search:77")
            holder.send_signal(signal.SIGKILL)
            (result,) = measuring.result(timeout=60)
        assert result.lease_waited_s > 0 and pool.status()["local"] == "idle, 1 measured"
    finally:
        holder.kill()
        holder.wait()
