"""Fixtures for the profiler tests: tiny ONNX models, fast measure settings and a real OpenSSH server."""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import require

SSHD = Path("/usr/sbin/sshd")
# Short settings so each measurement takes a fraction of a second.
FAST_MEASURE = {"warmup_s": 0.05, "repeat_s": 0.005, "repeats": 5, "max_attempts": 2, "max_cov": 0.5}


def tiny_onnx(path: Path, channels: int = 8, hw: int = 16) -> Path:
    """A conv + relu model built directly as an ONNX graph (no exporter: fast and deterministic)."""
    weight = numpy_helper.from_array(np.random.default_rng(channels).random((channels, 3, 3, 3), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["y"], ["z"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, hw, hw])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_device(path: Path, measure: dict[str, float] | None = None, **keys: object) -> Path:
    """Write a device toml (top-level keys, then a [measure] table)."""
    lines = [f"{key} = {toml_value(value)}" for key, value in keys.items()]
    lines.append("[measure]")
    lines += [f"{key} = {toml_value(value)}" for key, value in (measure or FAST_MEASURE).items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def python_without_onnxruntime(directory: Path) -> Path:
    """This python, but ``import onnxruntime`` fails: a device python without the runtime on any machine
    (a shadowing package first on PYTHONPATH), so the test never depends on what /usr/bin/python3 has."""
    shadow = directory / "shadow"
    (shadow / "onnxruntime").mkdir(parents=True, exist_ok=True)
    (shadow / "onnxruntime" / "__init__.py").write_text('raise ImportError("No module named \'onnxruntime\'")\n')
    python = directory / "python-without-onnxruntime"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={shlex.quote(str(shadow))} exec {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(0o755)
    return python


def processes_matching(marker: str) -> list[int]:
    """Pids whose command line contains ``marker`` (the device is this machine in these tests)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    return found


def wait_until_gone(marker: str, timeout_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := processes_matching(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that starts the real sshd is marked ``ssh`` (deselect with ``-m "not ssh"``)."""
    for item in items:
        if "sshd" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ssh)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("models")
    return tiny_onnx(directory / "small.onnx", 4), tiny_onnx(directory / "large.onnx", 32)


@dataclass
class SshServer:
    """A running OpenSSH server on 127.0.0.1 that a test may stop and start again (same port and keys)."""

    directory: Path
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    host_public_key: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.directory / "sshd_config"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=(self.directory / "sshd.log").open("ab"),
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.directory / 'sshd.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    if conn.recv(64).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening")

    def kill_all(self) -> None:
        """Kill the listener and every sshd session it forked (what a crash or a network loss looks like);
        the commands those sessions started are left alone, to see that they stop by themselves."""
        if self.process is None:
            return
        victims = [self.process.pid, *_descendants(self.process.pid, only_comm="sshd")]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        self.process = None

    def device_toml(self, path: Path, **overrides: object) -> Path:
        keys: dict[str, object] = {
            "name": "loopback-test",
            "kind": "ssh",
            "host": "127.0.0.1",
            "port": self.port,
            "user": self.user,
            "key": str(self.client_key),
            "known_hosts": str(self.known_hosts),
            "python": sys.executable,
            "threads": 1,
            "workdir": str(path.parent / "device-cache"),
            "timeout_s": 60,
            "connect_timeout_s": 5,
            "retries": 2,
        }
        keys.update(overrides)
        measure = keys.pop("measure", None)
        return write_device(path, measure, **{k: v for k, v in keys.items() if v is not None})


def _descendants(root: int, only_comm: str) -> list[int]:
    children: dict[int, list[int]] = {}
    comms: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
        comms[int(entry.name)] = comm
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            stack.append(child)
            if comms.get(child) == only_comm:
                found.append(child)
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().split()[1]


def make_sshd(directory: Path, *, sftp: bool = True) -> SshServer:
    """OpenSSH's sshd on 127.0.0.1 at a free port, with generated host and client keys (not started)."""
    require(SSHD.exists() and shutil.which("ssh-keygen") is not None,
            f"{SSHD} or ssh-keygen is missing (install the openssh-server package)")
    host_public = _keygen(directory / "host_ed25519")
    _keygen(directory / "client_ed25519")
    (directory / "authorized_keys").write_text((directory / "client_ed25519.pub").read_text())
    port = _free_port()
    (directory / "sshd_config").write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {directory / 'host_ed25519'}",
                f"PidFile {directory / 'sshd.pid'}",
                f"AuthorizedKeysFile {directory / 'authorized_keys'}",
                "StrictModes no",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                *(["Subsystem sftp internal-sftp"] if sftp else []),
                "MaxStartups 100",
                "MaxSessions 50",
                "LogLevel ERROR",
            ]
        )
        + "\n"
    )
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} ssh-ed25519 {host_public}\n")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    return SshServer(directory, port, getpass.getuser(), directory / "client_ed25519", known_hosts, host_public)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """The real sshd most SSH tests share (same port and keys for the whole session)."""
    server = make_sshd(tmp_path_factory.mktemp("sshd"))
    server.start()
    try:
        yield server
    finally:
        server.kill_all()
