"""Device configs: ``configs/devices/*.toml`` parsed into a frozen ``DeviceConfig``, validated once.

Every mistake is a ``DeviceConfigError`` naming the file and the key, raised when the file is loaded, so a
search never starts with a config that fails an hour later. Passwords are refused outright: a device is
reached with keys or the ssh-agent only.
"""

from __future__ import annotations

import math
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from profilers.base import MeasureSettings
from profilers.errors import DeviceConfigError
from profilers.runner import RUNTIMES

KINDS = ("local", "ssh")
HOST_KEY_POLICIES = ("strict", "accept-new")
DEVICES_DIR_ENV = "DAC_SEARCH_DEVICES_DIR"

_COMMON_KEYS = {"name", "kind", "python", "runtime", "threads", "cpus", "timeout_s", "lease_wait_s", "description",
                "measure"}
_SSH_KEYS = {
    "host", "hosts", "port", "user", "key", "known_hosts", "host_key", "workdir", "connect_timeout_s", "retries",
    "cache_mb", "keepalive_s", "keepalive_misses",
}


@dataclass(frozen=True)
class DeviceConfig:
    """One device (or a pool of identical ones, ``hosts``) and how to measure on it."""

    name: str
    kind: str = "local"
    hosts: tuple[str, ...] = ()
    port: int | None = None  # None: from ~/.ssh/config, else 22
    user: str | None = None  # None: from ~/.ssh/config, else the local user
    key: Path | None = None  # None: from ~/.ssh/config, the default keys and the agent
    known_hosts: Path | None = None  # None: ~/.ssh/known_hosts
    host_key: str = "strict"
    python: str = ""  # "" means: this interpreter (local) or python3 (ssh)
    runtime: str = "onnxruntime"
    threads: int | None = None  # None: the runtime's default
    cpus: tuple[int, ...] = ()  # pin the runner to these cores (taskset)
    workdir: str = "~/.cache/dac-search"  # on the device: runner and models, by content hash
    timeout_s: float = 600.0  # allowance per runner call; each model measured adds its nominal time x3
    lease_wait_s: float | None = None  # how long a runner waits for another measurement of the device to end
    connect_timeout_s: float = 10.0
    retries: int = 3  # reconnects after a transient fault
    cache_mb: float = 2048.0  # the device's cache of uploaded models, least recently used evicted above it
    keepalive_s: float = 15.0  # OpenSSH's ServerAliveInterval: a keepalive that expects a reply ...
    keepalive_misses: int = 3  # ... ServerAliveCountMax: this many unanswered and the connection is dead
    description: str = ""
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    source: Path | None = None

    @property
    def remote(self) -> bool:
        """Another machine: its timings may run while the host works (a local device times on the host's cores)."""
        return self.kind != "local"

    @property
    def python_path(self) -> str:
        if self.python:
            return self.python
        return "python3" if self.remote else sys.executable

    def runner_timeout(self, n_models: int, settings: MeasureSettings | None = None) -> float:
        """Seconds a runner call measuring ``n_models`` may take before it is killed."""
        m = settings or self.measure
        per_model = m.warmup_s + m.repeats * m.repeat_s * m.max_attempts + m.cooldown_s * m.max_attempts
        return self.timeout_s + 3.0 * per_model * max(1, n_models)

    def lease_wait(self, n_models: int, settings: MeasureSettings | None = None) -> float:
        """Seconds a runner waits for the device's lease: ``lease_wait_s``, by default as long as another
        runner call like its own may take (one measurement ahead of it in the queue)."""
        return self.lease_wait_s if self.lease_wait_s is not None else self.runner_timeout(n_models, settings)


def devices_dir() -> Path:
    """The directory of named device configs: ``$DAC_SEARCH_DEVICES_DIR``, else the ones shipped with dac-search."""
    override = os.environ.get(DEVICES_DIR_ENV)
    if override:
        return Path(override).expanduser()
    return bundled_devices_dir()


def bundled_devices_dir() -> Path:
    """The top-level ``configs/devices`` of the project, wherever it is installed.

    A wheel carries it inside this package as ``profilers/configs`` (pyproject.toml maps the package
    ``profilers.configs`` to the ``configs`` directory); a checkout or an editable install has it beside.
    """
    here = Path(__file__).resolve().parent
    installed = here / "configs" / "devices"
    return installed if installed.is_dir() else here.parent / "configs" / "devices"


def list_devices() -> list[DeviceConfig]:
    """Every device config in ``devices_dir()``, sorted by name."""
    directory = devices_dir()
    if not directory.is_dir():
        return []
    return [load_device(path) for path in sorted(directory.glob("*.toml"))]


def load_device(name_or_path: str | os.PathLike[str]) -> DeviceConfig:
    """A device by name (``configs/devices/NAME.toml``) or by path to a toml file."""
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if not (text.endswith(".toml") or os.sep in text or path.is_file()):
        path = devices_dir() / f"{text}.toml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in devices_dir().glob("*.toml"))) or "none"
            raise DeviceConfigError(f"unknown device {text!r} (known: {known}; or give a path to a .toml file)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeviceConfigError(f"device config {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DeviceConfigError(f"cannot read device config {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DeviceConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_device(data, source=path)


def parse_device(data: Mapping[str, Any], *, source: Path | None = None) -> DeviceConfig:
    """Validate a device table (as read from TOML) into a ``DeviceConfig``."""
    return _Parser(data, source).parse()


class _Parser:
    """Reads one device table; every error names the file and the key."""

    def __init__(self, data: Mapping[str, Any], source: Path | None) -> None:
        self.data = dict(data)
        self.source = source
        self.where = str(source) if source else "device config"

    def fail(self, key: str, message: str) -> DeviceConfigError:
        return DeviceConfigError(f"{self.where}: {key}: {message}")

    def parse(self) -> DeviceConfig:
        if "password" in self.data:
            raise self.fail("password", "passwords are never read from config files; use a key or ssh-agent")
        kind = self.choice("kind", KINDS, "local")
        allowed = _COMMON_KEYS | (_SSH_KEYS if kind == "ssh" else set())
        for key in self.data:
            if key not in allowed:
                hint = ' (only for kind = "ssh")' if key in _SSH_KEYS else ""
                raise self.fail(key, f"unknown key{hint}")
        name = self.string("name", self.source.stem if self.source else "")
        if not name:
            raise self.fail("name", "missing")
        values: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "python": self.string("python", ""),
            "runtime": self.choice("runtime", RUNTIMES, "onnxruntime"),
            "threads": self.integer("threads", None, minimum=1),
            "cpus": self.cpus(),
            "timeout_s": self.number("timeout_s", 600.0),
            "lease_wait_s": self.number("lease_wait_s", 1.0) if "lease_wait_s" in self.data else None,
            "description": self.string("description", ""),
            "measure": self.measure(),
            "source": self.source,
        }
        if kind == "ssh":
            values.update(
                hosts=self.hosts(),
                port=self.integer("port", None, minimum=1, maximum=65535),
                user=self.string("user", "") or None,
                key=self.path("key"),
                known_hosts=self.path("known_hosts"),
                host_key=self.choice("host_key", HOST_KEY_POLICIES, "strict"),
                workdir=self.workdir(),
                connect_timeout_s=self.number("connect_timeout_s", 10.0),
                retries=self.integer("retries", 3, minimum=0),
                cache_mb=self.number("cache_mb", 2048.0),
                keepalive_s=self.number("keepalive_s", 15.0),
                keepalive_misses=self.integer("keepalive_misses", 3, minimum=1),
            )
        return DeviceConfig(**values)

    def string(self, key: str, default: str) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {value!r}")
        return value

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        value = self.string(key, default)
        if value not in options:
            raise self.fail(key, f"must be one of {', '.join(options)}, got {value!r}")
        return value

    def integer(self, key: str, default: int | None, *, minimum: int, maximum: int | None = None) -> int | None:
        value = self.data.get(key, default)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(key, f"must be an integer, got {value!r}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise self.fail(key, f"must be {bound}, got {value}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.data.get(key, default)
        if not _is_number(value) or value <= 0:
            raise self.fail(key, f"must be a positive number, got {value!r}")
        return float(value)

    def workdir(self) -> str:
        value = self.string("workdir", "~/.cache/dac-search").strip()
        if not value or value in ("~", "/") or "\0" in value:  # the cache would be the home or root dir itself
            raise self.fail("workdir", f"must name a directory of its own, like ~/.cache/dac-search, got {value!r}")
        return value

    def path(self, key: str) -> Path | None:
        value = self.string(key, "")
        if not value:
            return None
        path = Path(value).expanduser()
        if not path.is_absolute() and self.source is not None:
            path = self.source.parent / path
        return path

    def hosts(self) -> tuple[str, ...]:
        if "host" in self.data and "hosts" in self.data:
            raise self.fail("hosts", "give either host or hosts, not both")
        if "host" in self.data:
            host = self.string("host", "")
            if not host:
                raise self.fail("host", "must not be empty")
            return (host,)
        raw = self.data.get("hosts")
        if raw is None:
            raise self.fail("host", 'missing (an address or ~/.ssh/config alias, or hosts = ["a", "b"])')
        if not isinstance(raw, list) or not raw or not all(isinstance(h, str) and h for h in raw):
            raise self.fail("hosts", f"must be a non-empty list of host names, got {raw!r}")
        if len(set(raw)) != len(raw):
            raise self.fail("hosts", "lists a host twice")
        return tuple(raw)

    def cpus(self) -> tuple[int, ...]:
        raw = self.data.get("cpus", [])
        if isinstance(raw, str):
            try:
                return tuple(_parse_cpu_list(raw))
            except ValueError:
                raise self.fail("cpus", f'must look like "0-3" or "0,2", got {raw!r}') from None
        if not isinstance(raw, list) or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in raw):
            raise self.fail("cpus", f"must be a list of core numbers or a string like \"0-3\", got {raw!r}")
        return tuple(raw)

    def measure(self) -> MeasureSettings:
        raw = self.data.get("measure", {})
        if not isinstance(raw, dict):
            raise self.fail("measure", "must be a table")
        names = [f.name for f in fields(MeasureSettings)]
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in names:
                raise self.fail(f"measure.{key}", f"unknown key (known: {', '.join(names)})")
            if not _is_number(value) or value < 0:
                raise self.fail(f"measure.{key}", f"must be a non-negative number, got {value!r}")
            values[key] = value
        for key, minimum in (("repeats", 2), ("max_attempts", 1)):
            if key in values:
                if int(values[key]) != values[key] or values[key] < minimum:
                    raise self.fail(f"measure.{key}", f"must be an integer >= {minimum}, got {values[key]!r}")
                values[key] = int(values[key])
        return MeasureSettings(**values)


def _is_number(value: object) -> bool:
    """A finite int or float: TOML also reads ``nan`` and ``inf``, which would make a timeout never end."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_cpu_list(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]``; raises ValueError on anything else."""
    cores: list[int] = []
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        lo, hi = int(first), int(last) if sep else int(first)
        if lo < 0 or hi < lo:
            raise ValueError(text)
        cores.extend(range(lo, hi + 1))
    return cores
