"""Opening a study storage when many workers start at the same instant on an empty database.

Optuna's ``RDBStorage`` creates its schema on first use, from every process that opens it: two workers doing
so at once on PostgreSQL fail with a duplicate key in ``pg_type`` (optuna#1092, whose advice is to create the
schema first). Here the set-up - schema, study, its settings, its warm starts - runs under one lock per
storage: a PostgreSQL advisory lock, or a file lock beside a SQLite file; the other workers wait for it,
then find everything made. Storage errors while setting up are retried with a bounded backoff, and a storage
that stays unreachable is one line and exit 1 (a fault of the environment), never exit 2 (bad input).
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from dac_search.errors import ConfigError, StorageUnavailableError
from dac_search.redact import mask_url

T = TypeVar("T")
LOCK_KEY = 0x6461_632D_7365_7475  # "dac-setu": the advisory lock every dac-search worker takes for set-up
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)  # 7.5 s for a server that is restarting, then one line
SETUP_TIMEOUT_S = 600  # a worker holding the lock longer than this has hung: the waiting worker gives up


@contextlib.contextmanager
def setup_lock(storage_url: str, connect_args: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Exclusive among the workers of one storage for the block: set-up happens once, in order.
    ``connect_args``: the driver's, as the worker's own engine has them (its name in ``pg_stat_activity``)."""
    if storage_url.startswith("sqlite:///"):
        with _file_lock(Path(storage_url.removeprefix("sqlite:///") + ".lock")):
            yield
    elif storage_url.startswith("postgresql"):
        with _advisory_lock(storage_url, dict(connect_args or {})):
            yield
    else:  # other servers: the retries below cover a lost race
        yield


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:  # a folder that is not there is the URL's fault: one line, exit 2
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _advisory_lock(storage_url: str, connect_args: dict[str, Any]) -> Iterator[None]:
    """A session-level advisory lock on a connection of its own, released when the block ends (or when the
    worker dies: the server drops a dead session's locks)."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(storage_url, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f"SET statement_timeout = {SETUP_TIMEOUT_S * 1000}"))
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
            connection.execute(sqlalchemy.text("SET statement_timeout = 0"))
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
    finally:
        engine.dispose()


def with_retries(storage_url: str, step: Callable[[], T], sleep: Callable[[float], None] = time.sleep) -> T:
    """``step`` (which opens the storage and sets up the study under ``setup_lock``), again after a storage
    fault - a server not up yet, a connection dropped, a race another worker won - up to ``RETRY_DELAYS_S``.

    A URL that cannot name a storage (unknown scheme, missing driver) is bad input: one line, exit 2, at
    once. A storage still failing after the retries is the environment's fault: one line, exit 1.
    """
    for delay in (*RETRY_DELAYS_S, None):
        try:
            return step()
        except (ConfigError, StorageUnavailableError):
            raise
        except Exception as exc:  # sqlalchemy and its drivers raise many types
            if not transient(exc):
                raise ConfigError(f"cannot open the study storage {mask_url(storage_url)}: "
                                  f"{missing_driver(storage_url, exc) or reason(exc)}") from None
            if delay is None:
                raise StorageUnavailableError(
                    f"the study storage {mask_url(storage_url)} is unavailable after {len(RETRY_DELAYS_S) + 1} "
                    f"tries: {reason(exc)}") from None
            sleep(delay)
    raise AssertionError("unreachable")


def transient(exc: BaseException) -> bool:
    """Whether a retry may succeed: the database's faults (down, busy, a lost creation race), not a URL or a
    driver that can never work."""
    from sqlalchemy import exc as sa

    if isinstance(exc, sa.ArgumentError | ImportError):  # NoSuchModuleError and ModuleNotFoundError among them
        return False
    # DatabaseError: the driver's OperationalError, IntegrityError (a lost creation race), ProgrammingError...
    return isinstance(exc, sa.DatabaseError | sa.InterfaceError | sa.TimeoutError | ConnectionError | TimeoutError)


def missing_driver(storage_url: str, exc: BaseException) -> str | None:
    """What to install when a PostgreSQL URL finds no driver (optuna only says "Failed to import DB access
    module")."""
    if isinstance(exc, ImportError) and storage_url.split(":", 1)[0].split("+")[0] in ("postgresql", "postgres"):
        return "no PostgreSQL driver is installed; pip install 'dac-search[postgres]'"
    return None


def reason(exc: BaseException) -> str:
    """The first line of a storage error, password masked: what the user can act on (a wrong host, a
    missing driver) without sqlalchemy's page of context."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return mask_url(f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__)
