"""Remote command execution and uploads over one paramiko connection.

Only transport mechanics live here: no retries, no policy. Connection faults surface as the exceptions in
``TRANSIENT`` so the caller can reconnect; a command running past its deadline raises ``DeadlineExceeded``.
"""

from __future__ import annotations

import io
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko.ssh_exception import NoValidConnectionsError

# Faults worth a reconnect and a retry: the connection broke, not the work.
TRANSIENT: tuple[type[BaseException], ...] = (
    EOFError,
    ConnectionError,
    NoValidConnectionsError,
    TimeoutError,
    socket.timeout,
    paramiko.SSHException,
)
_CHUNK = 1 << 16
_POLL_S = 0.1


class ConnectionLost(ConnectionError):
    """The device stopped answering keepalives: the connection is dead though TCP has not noticed."""


class Keepalive:
    """OpenSSH's ``ServerAliveInterval``/``ServerAliveCountMax`` for paramiko, whose own keepalive wants no
    reply and so never notices a board that dropped off the network: every ``interval_s`` a
    ``keepalive@openssh.com`` request that wants one; ``misses`` intervals without an answer and the
    connection is dead (``dead``), minutes before any measurement limit."""

    def __init__(self, transport: paramiko.Transport, interval_s: float, misses: int) -> None:
        self.transport, self.interval_s, self.misses = transport, interval_s, misses
        self._answered = time.monotonic()
        threading.Thread(target=self._loop, name="ssh-keepalive", daemon=True).start()

    @property
    def dead(self) -> bool:
        return time.monotonic() - self._answered > self.interval_s * self.misses

    def _loop(self) -> None:
        while self.transport.is_active():
            asked = time.monotonic()
            # any answer counts, a refusal too; returns early only when the transport closes
            self.transport.global_request("keepalive@openssh.com", wait=True)
            if not self.transport.is_active():
                return
            self._answered = time.monotonic()
            time.sleep(max(0.0, self.interval_s - (self._answered - asked)))


class DeadlineExceeded(Exception):
    """The command did not finish before the local deadline (the remote ``timeout`` should have fired first)."""


@dataclass(frozen=True)
class Completed:
    status: int
    stdout: str
    stderr: str
    elapsed_s: float


def run(client: paramiko.SSHClient, command: str, deadline_s: float, *, open_timeout_s: float = 30.0,
        keepalive: Keepalive | None = None, on_stderr_line: Callable[[str], None] | None = None) -> Completed:
    """Run ``command``; read stdout and stderr together as they come, so neither pipe fills and blocks the
    remote side, and only then take the exit status. The channel's stdin stays open until we return: the
    runner treats its EOF as "caller gone". A ``keepalive`` that finds the connection dead closes it and
    raises ``ConnectionLost``, a transient fault. ``on_stderr_line`` hears each stderr line as it comes."""
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise EOFError("the SSH connection is closed")
    start = time.monotonic()
    channel = transport.open_session(timeout=open_timeout_s)
    try:
        channel.exec_command(command)
        out, err = bytearray(), bytearray()
        heard = 0  # bytes of err already handed to on_stderr_line
        fd = channel.fileno()
        while True:
            _drain(channel, out, err)
            if on_stderr_line is not None and b"\n" in err[heard:]:
                complete = err.rindex(b"\n") + 1
                for line in err[heard:complete].decode("utf-8", "replace").splitlines():
                    on_stderr_line(line)
                heard = complete
            if channel.exit_status_ready() and (channel.eof_received or channel.closed):
                _drain(channel, out, err)
                break
            if channel.closed or not transport.is_active():
                break
            if keepalive is not None and keepalive.dead:
                transport.close()
                raise ConnectionLost(f"no answer to {keepalive.misses} keepalives in "
                                     f"{keepalive.interval_s * keepalive.misses:.0f} s")
            if time.monotonic() - start > deadline_s:
                raise DeadlineExceeded(f"no answer within {deadline_s:.0f} s")
            select.select([fd], [], [], _POLL_S)
        # paramiko reports -1 when the channel closed without an exit status: the connection broke.
        status = channel.recv_exit_status() if channel.exit_status_ready() else -1
        if status == -1:
            raise EOFError("the connection closed before the command finished")
        stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        return Completed(status, stdout, stderr, time.monotonic() - start)
    finally:
        channel.close()


def _drain(channel: paramiko.Channel, out: bytearray, err: bytearray) -> None:
    while channel.recv_ready():
        out += channel.recv(_CHUNK)
    while channel.recv_stderr_ready():
        err += channel.recv_stderr(_CHUNK)


def upload(sftp: paramiko.SFTPClient, local: Path, remote: str) -> None:
    """Put ``local`` at ``remote``, private. Written under a temporary name and renamed, so a reader never
    sees half a file; a leftover of a dropped connection is removed by the cache's pruning."""
    partial = f"{remote}.part-{secrets.token_hex(4)}"
    try:
        sftp.put(str(local), partial, confirm=True)
        sftp.chmod(partial, 0o600)
        sftp.posix_rename(partial, remote)
    except BaseException:
        _remove_quietly(sftp, partial)
        raise


def write_private(sftp: paramiko.SFTPClient, remote: str, data: bytes) -> None:
    """Write a small file readable by its owner only."""
    sftp.putfo(io.BytesIO(data), remote, file_size=len(data), confirm=True)
    sftp.chmod(remote, 0o600)


def _remove_quietly(sftp: paramiko.SFTPClient, remote: str) -> None:
    try:
        sftp.remove(remote)
    except (OSError, *TRANSIENT):
        pass
