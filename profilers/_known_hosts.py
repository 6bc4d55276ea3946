"""known_hosts files read the way OpenSSH reads them, for paramiko.

paramiko's ``HostKeys.load`` stops at the first line it cannot parse, and ``@cert-authority`` and
``@revoked`` lines are such lines: one of them in a user's file made every connection fail. Here each line
stands alone, as in OpenSSH: a host key line is trusted, a ``@revoked`` key is refused even when another
line trusts it, a ``@cert-authority`` line is skipped (host certificates are not supported) and a line that
does not parse is skipped with a debug message. The system file is read too, after the user's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry, InvalidHostKey

log = logging.getLogger(__name__)
SYSTEM_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")  # OpenSSH's GlobalKnownHostsFile


@dataclass(frozen=True)
class Revoked:
    """The keys of every ``@revoked`` line: refused whatever else the files say."""

    keys: frozenset[tuple[str, str]]  # (key type, base64)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, paramiko.PKey) and (key.get_name(), key.get_base64()) in self.keys


def read_known_hosts(paths: Iterable[Path], into: paramiko.HostKeys) -> Revoked:
    """Add every trusted host key of ``paths`` to ``into`` (a client's host keys); return the revoked ones."""
    revoked: set[tuple[str, str]] = set()
    for path in paths:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.debug("cannot read %s: %s", path, exc)
            continue
        for number, line in enumerate(lines, 1):
            line = line.strip()
            marker, _, rest = line.partition(" ")
            if not line or line.startswith("#") or marker == "@cert-authority":
                continue
            try:
                entry = HostKeyEntry.from_line(rest if marker == "@revoked" else line, number)
            except (InvalidHostKey, ValueError) as exc:
                log.debug("%s:%d: skipped (%s)", path, number, exc)
                continue
            if entry is None or entry.key is None:
                continue
            if marker == "@revoked":
                revoked.add((entry.key.get_name(), entry.key.get_base64()))
                continue
            for hostname in entry.hostnames:
                into.add(hostname, entry.key.get_name(), entry.key)
    return Revoked(frozenset(revoked))
