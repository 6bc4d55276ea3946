"""Passwords never leave the process: database URLs and command lines are masked before they are written
or printed (run.json's ``command``, the reports, error lines)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@\s]*)(?P<tail>@)", re.IGNORECASE)
MASK = "***"


def mask_url(text: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``; anything else unchanged.

    A regular expression rather than SQLAlchemy's ``render_as_string(hide_password=True)``: it also
    masks what SQLAlchemy cannot parse, which is exactly the URL an error line is about.
    """
    return _PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['tail']}", text)


def mask_command(argv: Sequence[str]) -> str:
    """A command line, shell-quoted, with every URL's password masked."""
    return shlex.join(mask_url(arg) for arg in argv)
