"""A throwaway PostgreSQL cluster on 127.0.0.1 for the shared-study tests: Debian's server binaries, run
as their own user when the tests run as root (PostgreSQL refuses root), with a password login over TCP
as a real shared study would have, the password given the libpq way (PGPASSWORD), never in the URL."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

USER = "dac"


@dataclass(frozen=True)
class PostgresServer:
    url: str  # no password in it: workers get PGPASSWORD
    password: str

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password}

    def fresh_database(self, prefix: str) -> str:
        """The URL of a new, empty database on this server: no schema, as a first worker finds it."""
        import psycopg

        name = f"{prefix}_{secrets.token_hex(4)}"
        with psycopg.connect(self.url, password=self.password, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"


def server_binaries() -> Path | None:
    """The newest installed server's bin dir (Debian keeps them off PATH), or where initdb is on PATH."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def postgres_server(bin_dir: Path, max_connections: int = 60) -> Iterator[PostgresServer]:
    as_root = os.geteuid() == 0
    owner = pwd.getpwnam("postgres") if as_root else None
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    root = Path(tempfile.mkdtemp(prefix="dac-search-pg-"))
    password = secrets.token_urlsafe(16)
    port = _free_port()
    try:
        (root / "pw").write_text(password + "\n")
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
            os.chown(root / "pw", owner.pw_uid, owner.pw_gid)
        root.chmod(0o700)
        data = root / "data"

        def run(*args: str) -> None:
            subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120, cwd=root)

        run(str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=scram-sha-256",
            f"--pwfile={root / 'pw'}", "-E", "UTF8")
        # max_connections: several workers, each with a pooled connection and a heartbeat thread
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
            f"-h 127.0.0.1 -p {port} -k {root} -c max_connections={max_connections} -c fsync=off", "start")
        try:
            yield PostgresServer(f"postgresql://{USER}@127.0.0.1:{port}/postgres", password)
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
