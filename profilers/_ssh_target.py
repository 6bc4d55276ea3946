"""Where an SSH device really is: a host alias resolved the way OpenSSH resolves it.

Users' ``~/.ssh/config`` files use ``Include config.d/*``, ``Match`` and ``ProxyJump``; paramiko's parser
ignores ``Include``, so an alias defined in an included file could not be found. Where OpenSSH is
installed, ``ssh -G HOST`` prints the effective options (host name, port, user, identity files, known-hosts
files, jump hosts) and is asked; paramiko's parser is the fallback. Values in the device config win.
"""

from __future__ import annotations

import getpass
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import paramiko

from profilers.errors import DeviceConfigError

MAX_JUMPS = 8  # OpenSSH refuses longer ProxyJump chains too (and a loop must end)


@dataclass(frozen=True)
class SshTarget:
    """One host to connect to, reached through ``jumps`` (in order) when ProxyJump says so."""

    alias: str
    hostname: str
    port: int
    user: str
    key_files: tuple[str, ...]
    known_hosts: tuple[Path, ...] = ()  # UserKnownHostsFile: the first is the one accept-new writes
    jumps: tuple[SshTarget, ...] = ()

    @property
    def known_hosts_name(self) -> str:
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    def __str__(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


def resolve_target(host: str, *, port: int | None = None, user: str | None = None, key: Path | None = None,
                   ssh_config: Path | None = None, depth: int = 0) -> SshTarget:
    """``host`` (an address or alias) with the given values winning over the ssh config's."""
    if depth > MAX_JUMPS:
        raise DeviceConfigError(f"ProxyJump of {host}: more than {MAX_JUMPS} jumps (a loop?)")
    options = _ssh_g(host, ssh_config) if shutil.which("ssh") else _paramiko_lookup(host, ssh_config)
    if options.get("proxycommand", ["none"])[0] != "none":
        raise DeviceConfigError(f"{host}: ProxyCommand is not supported; use ProxyJump")
    if key is not None:
        keys: tuple[str, ...] = (str(key),)
    else:
        listed = [str(Path(k).expanduser()) for k in options.get("identityfile", [])]
        keys = tuple(k for k in listed if Path(k).is_file()) if shutil.which("ssh") else tuple(listed)
    jump_spec = options.get("proxyjump", ["none"])[0]
    jumps = () if jump_spec == "none" else tuple(_jump(spec, ssh_config, depth) for spec in jump_spec.split(","))
    return SshTarget(
        alias=host,
        hostname=options.get("hostname", [host])[0],
        port=port or int(options.get("port", ["22"])[0]),
        user=user or options.get("user", [getpass.getuser()])[0],
        key_files=keys,
        known_hosts=tuple(Path(p).expanduser() for p in options.get("userknownhostsfile", [])),
        jumps=tuple(hop for jump in jumps for hop in (*jump.jumps, replace(jump, jumps=()))),
    )


def _jump(spec: str, ssh_config: Path | None, depth: int) -> SshTarget:
    """One ProxyJump hop, ``[user@]host[:port]``, itself resolved through the ssh config."""
    user, _, rest = spec.strip().rpartition("@")
    host, _, port = rest.partition(":")
    if not host or (port and not port.isdigit()):
        raise DeviceConfigError(f"ProxyJump {spec!r}: expected [user@]host[:port]")
    return resolve_target(host, port=int(port) if port else None, user=user or None, ssh_config=ssh_config,
                          depth=depth + 1)


def _ssh_g(host: str, ssh_config: Path | None) -> dict[str, list[str]]:
    command = ["ssh", "-G", *(["-F", str(ssh_config)] if ssh_config else []), "--", host]
    try:
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeviceConfigError(f"cannot run ssh -G {host}: {exc}") from None
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise DeviceConfigError(f"ssh -G {host}: {detail}")
    options: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        name, _, value = line.partition(" ")
        if name in ("identityfile", "userknownhostsfile"):
            options.setdefault(name, []).extend(value.split() if name == "userknownhostsfile" else [value])
        else:
            options[name] = [value]
    return options


def _paramiko_lookup(host: str, ssh_config: Path | None) -> dict[str, list[str]]:
    path = ssh_config or Path("~/.ssh/config").expanduser()
    if not path.is_file():
        return {}
    try:
        entry = paramiko.SSHConfig.from_path(str(path)).lookup(host)
    except (OSError, paramiko.ssh_exception.ConfigParseError) as exc:
        raise DeviceConfigError(f"{path}: cannot read ssh config: {exc}") from None
    return {key: (value.split() if key == "userknownhostsfile" else [value]) if isinstance(value, str)
            else [str(v) for v in value] for key, value in entry.items()}
