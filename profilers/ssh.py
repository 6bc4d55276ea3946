"""Measure on a remote device over SSH (paramiko), running the same runner.py as the local profiler.

Security: host keys are verified against known_hosts (unknown hosts refused unless the config says
``host_key = "accept-new"``); keys or the agent only, never a password; every remote command is built
with ``shlex`` quoting and wrapped in ``timeout``; job files live in a private ``mktemp -d`` directory that
is removed when the runner exits, whatever happens to the connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shlex
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import paramiko
from paramiko.ssh_exception import NoValidConnectionsError

from profilers import _cache, _known_hosts, _protocol, _sshio, errors
from profilers._ssh_target import SshTarget, resolve_target
from profilers.base import LatencyResult, MeasureSettings, Profiler
from profilers.devices import DeviceConfig
from profilers.errors import DeviceConfigError

log = logging.getLogger(__name__)
T = TypeVar("T")

KILL_AFTER_S = 5  # the runner gets TERM at its limit and KILL this much later
DEADLINE_GRACE_S = 30.0  # local patience beyond the remote limit before giving up on the channel
# Run in a private temp dir ($1), removed on exit even when the connection drops (the runner then sees
# stdin EOF and stops). Arguments stay positional, so nothing is ever spliced into the script.
_RUN_SCRIPT = 'd="$1"; shift; trap \'rm -rf -- "$d"\' EXIT; cd -- "$d" || exit 90; TMPDIR="$d" "$@"'
_MKTEMP_SCRIPT = 'umask 077; mktemp -d "${TMPDIR:-/tmp}/dac-search.XXXXXXXXXX"'
# Prints: our uid, then owner and octal mode of the workdir and its models dir (busybox stat has -c too).
_WORKDIR_SCRIPT = 'umask 077; mkdir -p -- "$1/models" && id -u && stat -c "%u %a" -- "$1" "$1/models"'


class _UnknownHostKey(Exception):
    def __init__(self, key: paramiko.PKey) -> None:
        super().__init__(key.get_name())
        self.key = key


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise _UnknownHostKey(key)


class _RevokedKey(Exception):
    def __init__(self, key: paramiko.PKey) -> None:
        super().__init__(key.get_name())
        self.key = key


class _AcceptNew(paramiko.MissingHostKeyPolicy):
    """OpenSSH's ``StrictHostKeyChecking=accept-new``: trust a host seen for the first time and record it;
    a changed key is still refused (paramiko raises BadHostKeyException before asking a policy), and so is
    a revoked one."""

    def __init__(self, known_hosts: Path, revoked: _known_hosts.Revoked) -> None:
        self.known_hosts = known_hosts
        self.revoked = revoked

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if key in self.revoked:
            raise _RevokedKey(key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self.known_hosts.open("a", encoding="utf-8") as handle:
            handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        self.known_hosts.chmod(0o600)
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning("added the host key of %s (%s) to %s", hostname, key.get_name(), self.known_hosts)


class SshProfiler(Profiler):
    """One device over SSH: one connection, opened lazily, reused, re-opened after a transient fault."""

    def __init__(
        self,
        config: DeviceConfig,
        *,
        host: str | None = None,
        ssh_config: Path | None = None,
        backoff_s: float = 1.0,
    ) -> None:
        if config.kind != "ssh" or not config.hosts:
            raise DeviceConfigError(f"device {config.name} is not an ssh device with a host")
        if host is not None and host not in config.hosts:
            raise DeviceConfigError(
                f"host {host!r} is not one of device {config.name}'s hosts: {', '.join(config.hosts)}"
            )
        self.config = config
        self.name = config.name
        self.runtime = config.runtime
        self.threads = config.threads
        self.target = resolve_target(host or config.hosts[0], port=config.port, user=config.user, key=config.key,
                                     ssh_config=ssh_config)
        # the config's known_hosts, else the ssh config's UserKnownHostsFile list; the first is written to
        listed = (config.known_hosts,) if config.known_hosts else self.target.known_hosts
        self.known_hosts_files = (*(listed or (Path("~/.ssh/known_hosts").expanduser(),)),
                                  _known_hosts.SYSTEM_KNOWN_HOSTS)
        self.known_hosts = self.known_hosts_files[0]
        self.backoff_s = backoff_s
        self._client: paramiko.SSHClient | None = None
        self._jump_clients: list[paramiko.SSHClient] = []  # ProxyJump hops of the open connection
        self._sftp: paramiko.SFTPClient | None = None
        self._workdir: str | None = None
        self._digests: dict[tuple[str, int, int], str] = {}
        self._verified: set[str] = set()  # remote files hashed on the device since this connection opened
        self._keepalive: _sshio.Keepalive | None = None
        self._holder = f"{_protocol.HOLDER} {self.target}"  # this profiler's runners, in the device's lease

    # ------------------------------------------------------------------------------------------ interface

    def measure_many(
        self,
        artifacts: Sequence[Path],
        input_shape: Sequence[int] | Sequence[Sequence[int]],
        *,
        runtime: str | None = None,
        settings: MeasureSettings | None = None,
    ) -> list[LatencyResult]:
        if not artifacts:
            return []
        paths = [Path(artifact).resolve() for artifact in artifacts]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise errors.BadModel(f"no such model file: {missing[0]}")
        shapes = _protocol.shapes(input_shape, len(paths))
        ctx = self._context(runtime)
        wait = self.config.lease_wait(len(paths), settings)
        limit = self.config.runner_timeout(len(paths), settings) + wait  # the lease's wait, then the measuring

        staged: list[str] = []

        def attempt(retrying: bool) -> _protocol.RunnerOutcome:
            runner, *models = self._staged(paths)
            staged[:] = models
            # on a retry, our runner of the dropped connection may still be measuring: take the lease from it
            lease = _protocol.lease(f"{self._remote_workdir()}/{_protocol.LEASE_FILE}", wait, holder=self._holder,
                                    evict=retrying)
            job = _protocol.job(staged, shapes, ctx.runtime, self.config.threads, settings or self.config.measure,
                                lease)
            tmp = self._mktemp()
            try:
                _sshio.write_private(self._sftp_client(), f"{tmp}/job.json", json.dumps(job).encode())
                return self._run_runner(tmp, [runner, "--job", "job.json", "--watch-stdin"], limit)
            finally:
                self._remove(tmp)

        outcome = self._with_retries(attempt)
        return _protocol.results(_protocol.decode(outcome, ctx.named(staged, paths)), paths, shapes, ctx)

    def info(self, *, runtime: str | None = None) -> dict[str, Any]:
        ctx = self._context(runtime)
        argument = _protocol.info_argument(ctx.runtime, self.config.threads)

        def attempt(retrying: bool) -> _protocol.RunnerOutcome:
            (runner,) = self._staged([])
            tmp = self._mktemp()
            try:
                return self._run_runner(tmp, [runner, "--info", argument], self.config.timeout_s)
            finally:
                self._remove(tmp)

        document = _protocol.decode(self._with_retries(attempt), ctx)
        described = {"device": self.name, "kind": "ssh", "target": str(self.target), "cpus": list(self.config.cpus)}
        return {**described, **document}

    def close(self) -> None:
        sftp, client, jumps = self._sftp, self._client, self._jump_clients
        self._client = self._sftp = None
        self._jump_clients = []
        self._workdir = None
        self._verified = set()
        for closable in (sftp, client, *reversed(jumps)):
            with contextlib.suppress(OSError, *_sshio.TRANSIENT):  # closing a broken connection may complain
                if closable is not None:
                    closable.close()

    # ------------------------------------------------------------------------------------------ connection

    def _with_retries(self, operation: Callable[[bool], T]) -> T:
        """Run ``operation`` on a live connection; on a transient fault reconnect and retry with backoff
        (``operation(True)``: a retry). A measurement timeout is not transient: it propagates at once."""
        attempts = self.config.retries + 1
        last: BaseException | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                self._connection()
                return operation(attempt > 0)
            except _sshio.DeadlineExceeded:
                self.close()  # closing the channel's connection makes the runner see EOF and stop
                raise errors.MeasurementTimeout(
                    f"{self._where()} did not answer within the measurement limit; connection dropped"
                ) from None
            except _sshio.TRANSIENT as exc:
                log.info("%s: transient fault (%s), attempt %d of %d", self._where(), _describe(exc), attempt + 1,
                         attempts)
                self.close()
                last = exc
            except OSError as exc:  # not a connection fault: a remote disk full, a file we cannot write
                raise errors.RunnerFailed(f"{self._where()}: {exc}") from None
        raise errors.DeviceUnreachable(
            f"{self._where()} is unreachable: {_describe(last)} (gave up after {attempts} attempts)"
        )

    def _connection(self) -> paramiko.SSHClient:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self) -> paramiko.SSHClient:
        """The device's connection, through its ProxyJump hops (each a direct-tcpip channel of the one before,
        each hop's host key checked like the device's)."""
        sock: paramiko.Channel | None = None
        hops = [*self.target.jumps, self.target]
        try:
            for hop, after in zip(hops, hops[1:]):
                jump = self._open(hop, sock, f"{self.name} jump host {hop.hostname}:{hop.port}")
                self._jump_clients.append(jump)
                transport = jump.get_transport()
                assert transport is not None
                sock = transport.open_channel("direct-tcpip", (after.hostname, after.port), ("127.0.0.1", 0),
                                              timeout=self.config.connect_timeout_s)
            client = self._open(self.target, sock, self._where())
        except BaseException:
            for jump in reversed(self._jump_clients):
                jump.close()
            self._jump_clients = []
            raise
        transport = client.get_transport()
        assert transport is not None
        self._keepalive = _sshio.Keepalive(transport, self.config.keepalive_s, self.config.keepalive_misses)
        return client

    def _open(self, target: SshTarget, sock: paramiko.Channel | None, where: str) -> paramiko.SSHClient:
        """One authenticated connection to ``target`` (over ``sock`` when it is behind a jump host)."""
        timeout = self.config.connect_timeout_s
        for key in target.key_files:
            if not Path(key).is_file():
                raise DeviceConfigError(f"{self._config_name()}: key: {key} does not exist")
        client = paramiko.SSHClient()
        try:
            revoked = _known_hosts.read_known_hosts(self.known_hosts_files, client.get_host_keys())
            if self.config.host_key == "accept-new":
                client.set_missing_host_key_policy(_AcceptNew(self.known_hosts, revoked))
            else:
                client.set_missing_host_key_policy(_RejectUnknown())
            client.connect(
                target.hostname,
                port=target.port,
                username=target.user,
                key_filename=list(target.key_files) or None,
                look_for_keys=not target.key_files,
                allow_agent=True,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
                sock=sock,
            )
            transport = client.get_transport()
            assert transport is not None
            if transport.get_remote_server_key() in revoked:
                raise _RevokedKey(transport.get_remote_server_key())
            return client
        except _RevokedKey as exc:
            client.close()
            raise errors.HostKeyMismatch(
                f"host key of {where} ({exc.key.get_name()} {exc.key.fingerprint}) is marked @revoked "
                f"in {' or '.join(map(str, self.known_hosts_files))}: refused"
            ) from None
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise errors.HostKeyMismatch(
                f"host key of {where} does not match {self.known_hosts} "
                f"(got {exc.key.get_name()} {exc.key.fingerprint}); if the device was reinstalled, "
                f"remove the old key with: ssh-keygen -R {shlex.quote(target.known_hosts_name)}"
            ) from None
        except _UnknownHostKey as exc:
            client.close()
            raise errors.UnknownHost(
                f"{where} is not in {self.known_hosts} ({exc.key.get_name()} {exc.key.fingerprint}); "
                f'connect once with ssh, or set host_key = "accept-new" in the device config'
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            keys = ", ".join(target.key_files) or "default keys and ssh-agent"
            raise errors.AuthFailed(f"{where} refused authentication with {keys}: {exc}") from None
        except socket.gaierror as exc:
            client.close()
            raise errors.DeviceUnreachable(
                f"{where}: cannot resolve {target.hostname}: {exc.strerror}"
            ) from None
        except BaseException:
            client.close()
            raise

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            client = self._connection()
            try:
                self._sftp = client.open_sftp()
            except paramiko.SSHException:
                transport = client.get_transport()
                if transport is None or not transport.is_active():
                    raise  # the connection broke: transient, retried
                raise errors.NoSftp(f"{self._where()} offers no SFTP subsystem, which uploads need: add "
                                    f"'Subsystem sftp internal-sftp' to its sshd_config") from None
            self._sftp.get_channel().settimeout(self.config.connect_timeout_s * 3)
        return self._sftp

    # ------------------------------------------------------------------------------------------ remote files

    def _remote_workdir(self) -> str:
        """The per-device cache dir (absolute), created private on first use of a connection, and refused
        when it is another user's or others may write to it (they could plant a runner there)."""
        if self._workdir is None:
            sftp = self._sftp_client()
            home = sftp.normalize(".")
            workdir = self.config.workdir
            if workdir == "~" or workdir.startswith("~/"):
                workdir = home + workdir[1:]
            elif not workdir.startswith("/"):
                workdir = f"{home}/{workdir}"
            completed = self._exec(shlex.join(["/bin/sh", "-c", _WORKDIR_SCRIPT, "sh", workdir]), 60.0)
            lines = completed.stdout.split()
            if completed.status != 0 or len(lines) != 5:
                raise errors.RunnerFailed(f"{self._where()}: cannot create {workdir}: {completed.stderr.strip()}")
            uid, owners = lines[0], lines[1::2]
            for path, owner, mode in zip((workdir, f"{workdir}/models"), owners, lines[2::2]):
                if owner != uid:
                    raise errors.UnsafeWorkdir(f"{self._where()}: workdir {path} belongs to uid {owner}, not to "
                                               f"{self.target.user} (uid {uid}): set a workdir of your own")
                if int(mode, 8) & 0o022:
                    raise errors.UnsafeWorkdir(f"{self._where()}: workdir {path} is writable by others (mode "
                                               f"{mode}): chmod 700 it, or set a workdir of your own")
            self._workdir = workdir
        return self._workdir

    def _staged(self, paths: Sequence[Path]) -> list[str]:
        """The runner and ``paths`` in the device's cache, checked by content (see ``_cache``): uploads what
        is missing or differs, prunes the cache. Returns the remote paths, the runner's first."""
        workdir = self._remote_workdir()
        names = [f"{workdir}/runner-{_protocol.runner_digest()}.py",
                 *(f"{workdir}/models/{self._digest(path)[:32]}{path.suffix}" for path in paths)]
        wanted = dict(zip(names, [_protocol.RUNNER_PATH, *paths]))  # a file listed twice is staged once
        check = {remote: self._digest(local) for remote, local in wanted.items() if remote not in self._verified}
        touch = [remote for remote in wanted if remote in self._verified]
        request = _cache.request(f"{workdir}/models", check, touch, int(self.config.cache_mb * 1e6))
        limit = self.config.timeout_s  # hashing a large model on a slow board takes seconds, not minutes
        command = _under_timeout([self.config.python_path, "-c", _cache.SCRIPT, request], limit)
        completed = self._exec(shlex.join(command), limit + DEADLINE_GRACE_S)
        if completed.status in _protocol.NOT_RUNNABLE_STATUS:
            raise errors.RuntimeMissing(f"{self.config.python_path} is not an executable python on {self._where()}")
        if completed.status != 0:
            raise errors.RunnerFailed(f"{self._where()}: cannot check the device's cache: "
                                      f"{_protocol.last_line(completed.stderr) or f'exit status {completed.status}'}")
        answer = _cache.answer(completed.stdout)
        if answer.evicted:
            log.info("%s: evicted %d file(s) from the cache (now %.0f MB)", self._where(), answer.evicted,
                     answer.bytes / 1e6)
        for remote, local in wanted.items():
            if remote not in answer.present:
                try:
                    _sshio.upload(self._sftp_client(), local, remote)
                except PermissionError as exc:
                    raise errors.RunnerFailed(f"{self._where()}: cannot write {remote}: {exc}") from None
                log.info("%s: uploaded %s -> %s", self._where(), local.name, remote)
            self._verified.add(remote)
        return names

    def _digest(self, path: Path) -> str:
        """sha256 of a local file, remembered while it is unchanged."""
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in self._digests:
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            self._digests[key] = digest.hexdigest()
        return self._digests[key]

    def _mktemp(self) -> str:
        completed = self._exec(shlex.join(["/bin/sh", "-c", _MKTEMP_SCRIPT]), 60.0)
        path = completed.stdout.strip()
        if completed.status != 0 or not path.startswith("/"):
            raise errors.RunnerFailed(f"{self._where()}: mktemp -d failed: {completed.stderr.strip()}")
        return path

    def _remove(self, tmp: str) -> None:
        """Best effort: if the connection is gone, the run script's trap removes the dir instead."""
        try:
            self._exec(shlex.join(["rm", "-rf", "--", tmp]), 60.0)
        except (_sshio.DeadlineExceeded, *_sshio.TRANSIENT) as exc:
            log.info("%s: could not remove %s now (%s)", self._where(), tmp, _describe(exc))

    # ------------------------------------------------------------------------------------------ commands

    def _run_runner(self, tmp: str, arguments: list[str], limit_s: float) -> _protocol.RunnerOutcome:
        """runner.py under ``timeout`` (TERM to its whole process group, KILL 5 s later) in ``tmp``."""
        pinned = ["taskset", "-c", ",".join(map(str, self.config.cpus))] if self.config.cpus else []
        command = _under_timeout([*pinned, self.config.python_path, *arguments], limit_s)
        script = shlex.join(["/bin/sh", "-c", _RUN_SCRIPT, "sh", tmp, *command])
        done = self._exec(script, limit_s + DEADLINE_GRACE_S, on_stderr_line=self.runner_said)
        return _protocol.RunnerOutcome(done.status, done.stdout, done.stderr, done.elapsed_s, limit_s)

    def _exec(self, command: str, deadline_s: float,
              on_stderr_line: Callable[[str], None] | None = None) -> _sshio.Completed:
        return _sshio.run(self._connection(), command, deadline_s, open_timeout_s=self.config.connect_timeout_s * 3,
                          keepalive=self._keepalive, on_stderr_line=on_stderr_line)

    def _context(self, runtime: str | None) -> _protocol.Context:
        return _protocol.Context(
            device=self.name,
            python=self.config.python_path,
            runtime=runtime or self.config.runtime,
            host=self.target.alias,
        )

    def _where(self) -> str:
        return f"{self.name} ({self.target.hostname}:{self.target.port})"

    def _config_name(self) -> str:
        return str(self.config.source) if self.config.source else f"device {self.name}"


def _under_timeout(command: list[str], limit_s: float) -> list[str]:
    """``command`` killed on the device at ``limit_s`` (TERM to its process group, KILL ``KILL_AFTER_S``
    later), in plain seconds, which busybox's ``timeout`` reads too."""
    return ["timeout", "-k", str(KILL_AFTER_S), str(math.ceil(limit_s)), *command]


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, NoValidConnectionsError):
        return "connection refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "connection timed out"
    if isinstance(exc, EOFError):
        return str(exc) or "connection closed"
    return f"{type(exc).__name__}: {exc}" if exc is not None else "unknown error"
