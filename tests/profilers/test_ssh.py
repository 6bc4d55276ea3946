"""The SSH profiler against a real OpenSSH server on 127.0.0.1 (no mocks), including its failure modes."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paramiko
import pytest

from profilers import (
    AuthFailed,
    DeviceUnreachable,
    HostKeyMismatch,
    LatencyResult,
    MeasurementTimeout,
    NoSftp,
    RuntimeMissing,
    SshProfiler,
    UnknownHost,
    UnsafeWorkdir,
    _cache,
    load_device,
    make_profiler,
)
from profilers import runner as runner_module
from tests.conftest import require

from .conftest import (
    SshServer,
    _descendants,
    make_sshd,
    processes_matching,
    python_without_onnxruntime,
    tiny_onnx,
    wait_until_gone,
)


def _profiler(sshd: SshServer, tmp_path: Path, **overrides: object) -> SshProfiler:
    config = load_device(sshd.device_toml(tmp_path / "device.toml", **overrides))
    return SshProfiler(config, backoff_s=0.1)


def _dac_tmp_dirs() -> set[str]:
    return {path.name for path in Path("/tmp").glob("dac-search.*")}


def test_measures_end_to_end(sshd: SshServer, tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    before = _dac_tmp_dirs()
    with _profiler(sshd, tmp_path) as profiler:
        small, large = profiler.measure_many(list(tiny_models), (1, 3, 16, 16))
        info = profiler.info()
    assert isinstance(small, LatencyResult) and small.artifact == "small.onnx" and large.artifact == "large.onnx"
    assert small.n == 5 and small.median_ms > 0 and small.conditions.runtime == "onnxruntime"
    assert small.conditions.runtime_version and small.conditions.threads == 1
    assert small.device == "loopback-test" and small.conditions.host == "127.0.0.1"
    assert info["python"] == sys.executable and info["runtime_version"] == small.conditions.runtime_version
    assert info["machine"] and info["cpu_count"] >= 1
    assert _dac_tmp_dirs() <= before  # the private temp dirs were removed


def test_upload_is_skipped_when_device_has_the_file(
    sshd: SshServer, tmp_path: Path, tiny_models: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    small = tiny_models[0]
    caplog.set_level(logging.INFO, logger="profilers.ssh")
    with _profiler(sshd, tmp_path) as profiler:
        profiler.measure(small, (1, 3, 16, 16))
        first = [r.message for r in caplog.records if "uploaded" in r.message]
        caplog.clear()
        profiler.close()  # a new connection must still find the cached files
        profiler.measure(small, (1, 3, 16, 16))
        second = [r.message for r in caplog.records if "uploaded" in r.message]
    assert len(first) == 2  # the runner and the model
    assert second == []
    cached = list((tmp_path / "device-cache" / "models").iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".onnx" and (cached[0].stat().st_mode & 0o077) == 0


def test_a_planted_or_torn_file_in_the_cache_is_replaced_before_it_runs(
    sshd: SshServer, tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    """Names are content hashes, but a name proves nothing: the bytes are checked on the device."""
    small = tiny_models[0]
    with _profiler(sshd, tmp_path) as profiler:
        profiler.measure(small, (1, 3, 16, 16))
    cache = tmp_path / "device-cache"
    runner = next(cache.glob("runner-*.py"))
    (model,) = (cache / "models").iterdir()
    runner.write_text("import pathlib; pathlib.Path(__file__).with_name('planted').touch()\n")
    model.write_bytes(model.read_bytes()[:10])  # same name, other bytes: a torn or planted upload
    with _profiler(sshd, tmp_path) as profiler:
        assert profiler.measure(small, (1, 3, 16, 16)).n == 5
    assert not (cache / "planted").exists()
    assert runner.read_bytes() == Path(runner_module.__file__).read_bytes()
    assert model.stat().st_size == small.stat().st_size


@pytest.mark.parametrize(("setup", "message"), [
    (lambda cache: (cache / "models").mkdir(parents=True) or os.chmod(cache, 0o777), "writable by others"),
    (lambda cache: cache.mkdir() or os.chown(cache, 12345, -1), "belongs to uid 12345"),
])
def test_a_workdir_others_can_write_is_refused(sshd: SshServer, tmp_path: Path, setup, message: str) -> None:
    cache = tmp_path / "device-cache"
    if message.startswith("belongs") and os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    setup(cache)
    with _profiler(sshd, tmp_path) as profiler:
        with pytest.raises(UnsafeWorkdir, match=message):
            profiler.info()
    assert not list(cache.glob("runner-*.py"))


def test_the_device_cache_evicts_least_recently_used_models_above_its_cap(sshd: SshServer, tmp_path: Path) -> None:
    models = [tiny_onnx(tmp_path / f"m{i}.onnx", channels=8 + i) for i in range(3)]
    cache = tmp_path / "device-cache" / "models"
    with _profiler(sshd, tmp_path, cache_mb=1.5 * max(p.stat().st_size for p in models) / 1e6) as profiler:
        profiler.measure(models[0], (1, 3, 16, 16))
        profiler.measure(models[1], (1, 3, 16, 16))
        old = time.time() - 2 * _cache.MIN_AGE_S
        for index, path in enumerate(sorted(cache.iterdir(), key=lambda p: p.stat().st_mtime)):
            os.utime(path, (old + index, old + index))  # both unused for long; m0 the least recently
        (cache / "x.onnx.part-dead").write_bytes(b"torn")
        os.utime(cache / "x.onnx.part-dead", (old, old))
        (cache / "y.onnx.part-live").write_bytes(b"uploading now")
        profiler.measure(models[2], (1, 3, 16, 16))
    names = sorted(p.name for p in cache.iterdir())
    assert len(names) == 3 and "x.onnx.part-dead" not in names and "y.onnx.part-live" in names
    digests = {hashlib.sha256(p.read_bytes()).hexdigest()[:32] for p in models}
    kept = {name.split(".")[0] for name in names if name.endswith(".onnx")}
    assert len(kept) == 2 and kept < digests
    assert hashlib.sha256(models[0].read_bytes()).hexdigest()[:32] not in kept  # the least recently used went


def test_ssh_config_alias_is_honoured(sshd: SshServer, tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(
        f"Host testbox\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {sshd.client_key}\n"
    )
    config = load_device(sshd.device_toml(tmp_path / "d.toml", host="testbox", port=None, user=None, key=None))
    with SshProfiler(config, ssh_config=ssh_config) as profiler:
        assert str(profiler.target) == f"{sshd.user}@127.0.0.1:{sshd.port}"
        assert profiler.measure(tiny_models[0], (1, 3, 16, 16)).n == 5


def test_aliases_resolve_as_openssh_does_with_include_and_proxyjump(
    sshd: SshServer, tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    """The alias lives in an included file and reaches the board through a jump host (here the same sshd):
    ``ssh -G`` resolves both, and the connection is a channel of the jump host's."""
    require(shutil.which("ssh") is not None, "the OpenSSH client (ssh) is missing")
    (tmp_path / "config.d").mkdir()
    (tmp_path / "config.d" / "boards").write_text(
        f"Host jumpbox\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {sshd.client_key}\n"
        f"Host board\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n  IdentityFile {sshd.client_key}\n"
        f"  ProxyJump jumpbox\n"
    )
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(f"Include {tmp_path / 'config.d'}/*\n")
    config = load_device(sshd.device_toml(tmp_path / "d.toml", host="board", port=None, user=None, key=None))
    with SshProfiler(config, ssh_config=ssh_config) as profiler:
        assert str(profiler.target) == f"{sshd.user}@127.0.0.1:{sshd.port}"
        assert [str(hop) for hop in profiler.target.jumps] == [f"{sshd.user}@127.0.0.1:{sshd.port}"]
        assert profiler.measure(tiny_models[0], (1, 3, 16, 16)).n == 5
        assert isinstance(profiler._connection().get_transport().sock, paramiko.Channel)


def test_a_device_without_sftp_is_one_line_saying_so(tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    (tmp_path / "sshd").mkdir()
    server = make_sshd(tmp_path / "sshd", sftp=False)
    server.start()
    try:
        with _profiler(server, tmp_path) as profiler:
            with pytest.raises(NoSftp, match="offers no SFTP subsystem"):
                profiler.measure(tiny_models[0], (1, 3, 16, 16))
    finally:
        server.kill_all()


def test_wrong_host_key_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 {other.with_suffix('.pub').read_text().split()[1]}\n")
    with _profiler(sshd, tmp_path, known_hosts=str(known_hosts)) as profiler:
        with pytest.raises(HostKeyMismatch, match="does not match"):
            profiler.info()


def test_unknown_host_refused_by_default_and_accepted_with_accept_new(sshd: SshServer, tmp_path: Path) -> None:
    known_hosts = tmp_path / "ssh" / "known_hosts"
    with _profiler(sshd, tmp_path, known_hosts=str(known_hosts)) as profiler:
        with pytest.raises(UnknownHost, match="accept-new"):
            profiler.info()
    assert not known_hosts.exists()
    with _profiler(sshd, tmp_path, known_hosts=str(known_hosts), host_key="accept-new") as profiler:
        assert profiler.info()["runtime"] == "onnxruntime"
    assert known_hosts.read_text().split() == [f"[127.0.0.1]:{sshd.port}", "ssh-ed25519", sshd.host_public_key]
    with _profiler(sshd, tmp_path, known_hosts=str(known_hosts)) as profiler:  # now known: strict works
        assert profiler.info()["runtime"] == "onnxruntime"


def test_known_hosts_are_read_as_openssh_reads_them(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Markers and odd lines are skipped line by line; @revoked wins; the system file counts too."""
    from profilers import _known_hosts

    entry = f"[127.0.0.1]:{sshd.port} ssh-ed25519 {sshd.host_public_key}"
    user_file = tmp_path / "known_hosts"
    user_file.write_text(f"# a comment\n@cert-authority *.example.com ssh-ed25519 {sshd.host_public_key}\n"
                         f"garbage line that is no key\n{entry}\n")
    with _profiler(sshd, tmp_path, known_hosts=str(user_file)) as profiler:
        assert profiler.info()["runtime"] == "onnxruntime"
    system_file = tmp_path / "ssh_known_hosts"
    system_file.write_text(entry + "\n")
    monkeypatch.setattr(_known_hosts, "SYSTEM_KNOWN_HOSTS", system_file)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with _profiler(sshd, tmp_path, known_hosts=str(empty)) as profiler:
        assert profiler.info()["runtime"] == "onnxruntime"
    user_file.write_text(user_file.read_text() + f"@revoked * ssh-ed25519 {sshd.host_public_key}\n")
    for policy in ("strict", "accept-new"):
        with _profiler(sshd, tmp_path, known_hosts=str(user_file), host_key=policy) as profiler:
            with pytest.raises(HostKeyMismatch, match="marked @revoked"):
                profiler.info()
    assert "@revoked" in user_file.read_text().splitlines()[-1]  # accept-new added nothing


def test_closed_port_is_unreachable(sshd: SshServer, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    start = time.monotonic()
    with _profiler(sshd, tmp_path, port=closed_port) as profiler:
        with pytest.raises(DeviceUnreachable, match="connection refused"):
            profiler.info()
    assert time.monotonic() - start < 5


def test_wrong_key_fails_authentication(sshd: SshServer, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with _profiler(sshd, tmp_path, key=str(stranger)) as profiler:
        with pytest.raises(AuthFailed, match="refused authentication"):
            profiler.info()


def test_python_without_runtime(sshd: SshServer, tmp_path: Path, tiny_models: tuple[Path, Path]) -> None:
    bare = python_without_onnxruntime(tmp_path)
    with _profiler(sshd, tmp_path, python=str(bare)) as profiler:
        with pytest.raises(RuntimeMissing, match=f"onnxruntime is not importable by {bare} on loopback-test"):
            profiler.measure(tiny_models[0], (1, 3, 16, 16))


def test_hanging_runner_is_killed_on_the_device(
    sshd: SshServer, tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    marker = f"dac-hang-{uuid.uuid4().hex}"
    python = tmp_path / "hangpython"
    python.write_text(f'#!/bin/sh\ncase "$*" in *--job*) exec {sys.executable} -c "import time; time.sleep(600)" '
                      f'{marker} "$@";; esac\nexec {sys.executable} "$@"\n')  # the runner hangs, nothing else
    python.chmod(0o755)
    start = time.monotonic()
    with _profiler(sshd, tmp_path, python=str(python), timeout_s=1) as profiler:
        with pytest.raises(MeasurementTimeout, match="did not finish within"):
            profiler.measure(tiny_models[0], (1, 3, 16, 16))
    assert time.monotonic() - start < 15
    assert wait_until_gone(marker, timeout_s=2) == []


def test_sshd_killed_mid_measurement_then_reconnects(
    sshd: SshServer, tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    slow = {"warmup_s": 2.0, "repeat_s": 0.005, "repeats": 5, "max_attempts": 1}
    profiler = _profiler(sshd, tmp_path, measure=slow)
    marker = str(tmp_path / "device-cache")  # the runner's path on the device contains it
    outcome: dict[str, BaseException] = {}

    def measure() -> None:
        try:
            profiler.measure(tiny_models[0], (1, 3, 16, 16))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=measure)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not any("--job" in _cmdline(pid) for pid in processes_matching(marker)):
            assert time.monotonic() < deadline, "the runner never started"
            time.sleep(0.05)
        killed_at = time.monotonic()
        sshd.kill_all()
        thread.join(timeout=20)
        assert not thread.is_alive(), "measure hung after sshd died"
        assert time.monotonic() - killed_at < 10
        assert isinstance(outcome.get("error"), DeviceUnreachable)
        assert "loopback-test" in str(outcome["error"])
        assert wait_until_gone(marker) == []  # the orphaned runner stopped by itself
    finally:
        if sshd.process is None:
            sshd.start()
    try:
        assert profiler.measure(tiny_models[0], (1, 3, 16, 16), runtime="onnxruntime").n == 5
    finally:
        profiler.close()


def test_a_board_that_stops_answering_is_noticed_by_keepalives_and_its_orphaned_runner_stopped(
    sshd: SshServer, tmp_path: Path, tiny_models: tuple[Path, Path]
) -> None:
    """A board gone silent (its sshd stopped with SIGSTOP: TCP stays up, nothing answers) is noticed after
    two missed keepalives, not after the measurement limit; the retry stops the runner the dead connection
    left measuring before it measures, so the two never overlap."""
    slow = {"warmup_s": 8.0, "repeat_s": 0.005, "repeats": 5, "max_attempts": 1}
    profiler = _profiler(sshd, tmp_path, measure=slow, keepalive_s=0.5, keepalive_misses=2, timeout_s=120)
    marker = str(tmp_path / "device-cache")
    outcome: dict[str, object] = {}

    def measure() -> None:
        try:
            outcome["result"] = profiler.measure(tiny_models[0], (1, 3, 16, 16))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = exc

    def runners() -> list[int]:
        return [pid for pid in processes_matching(marker) if "--job" in _cmdline(pid)
                and Path(f"/proc/{pid}/comm").read_text().strip().startswith("python")]

    thread = threading.Thread(target=measure)
    thread.start()
    stopped: list[int] = []
    try:
        deadline = time.monotonic() + 20
        while not runners():
            assert time.monotonic() < deadline, "the runner never started"
            time.sleep(0.05)
        (orphan,) = runners()
        stopped = _descendants(sshd.process.pid, only_comm="sshd")
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        silent_at = time.monotonic()
        while Path(f"/proc/{orphan}").exists() and time.monotonic() - silent_at < 20:
            time.sleep(0.05)
        assert time.monotonic() - silent_at < 6, "the orphaned runner was not stopped by the retry"
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert isinstance(outcome.get("result"), LatencyResult), outcome
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        profiler.close()


def test_make_profiler_for_ssh_pool(sshd: SshServer, tmp_path: Path) -> None:
    config = load_device(sshd.device_toml(tmp_path / "pool.toml", host=None, hosts=["127.0.0.1", "localhost"]))
    assert config.hosts == ("127.0.0.1", "localhost")
    profiler = make_profiler(config, host="localhost")
    assert isinstance(profiler, SshProfiler) and profiler.target.hostname == "localhost"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize("openssh", [True, False])
def test_an_alias_resolves_with_openssh_or_with_paramikos_parser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, openssh: bool
) -> None:
    from profilers import _ssh_target

    if openssh:
        require(shutil.which("ssh") is not None, "the OpenSSH client (ssh) is missing")
    else:
        monkeypatch.setattr(_ssh_target.shutil, "which", lambda name: None)
    key = tmp_path / "id_board"
    key.write_text("not read here")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host pi4\n  HostName 10.1.2.3\n  Port 2222\n  User pi\n  IdentityFile {key}\n"
                      f"  UserKnownHostsFile {tmp_path / 'kh1'} {tmp_path / 'kh2'}\n  ProxyJump admin@gate:2200\n")
    target = _ssh_target.resolve_target("pi4", ssh_config=config)
    assert (target.hostname, target.port, target.user, target.key_files) == ("10.1.2.3", 2222, "pi", (str(key),))
    assert target.known_hosts == (tmp_path / "kh1", tmp_path / "kh2")
    assert [(hop.hostname, hop.port, hop.user) for hop in target.jumps] == [("gate", 2200, "admin")]
    assert _ssh_target.resolve_target("pi4", port=22, user="me", ssh_config=config).known_hosts_name == "10.1.2.3"
