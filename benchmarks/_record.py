"""Benchmark records: what a benchmark printed, with what made it, in ``docs/records/NAME.json``.

Every script runs its ``main`` through ``run``: what it prints goes to the terminal as before and, when the
script finishes, into a record beside it with the command, the git commit, the package versions, the
machine, the date, the wall time and every default that shapes a result (``dac_search.search.defaults``).
``render_results.py`` writes the results pages from the records, and marks a record made at other defaults
than today's, so a stale table is seen as stale. ``--record NAME`` names the record (default: the script's
name; a variant of a script gets a name of its own); ``--record none`` writes none.
"""

from __future__ import annotations

import io
import json
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dac_search.atomic import atomic_path
from dac_search.provenance import machine, now, versions
from dac_search.search.defaults import changed_defaults, shaping_defaults

RECORD_FORMAT = "dac-search/benchmark-record@1"
RECORDS = Path(__file__).resolve().parents[1] / "docs" / "records"


@dataclass(frozen=True)
class Record:
    name: str
    command: str
    output: str  # the markdown the script printed
    date: str
    seconds: float
    commit: str | None
    versions: dict[str, str]
    machine: dict[str, Any]
    defaults: dict[str, str]
    # groups of defaults (``table``, ``measure``) the benchmark never reads: one that times nothing on a device is
    # not made stale by a change of the device's timing settings
    unread: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"format": RECORD_FORMAT, "name": self.name, "command": self.command, "date": self.date,
                "seconds": round(self.seconds, 1), "commit": self.commit, "versions": self.versions,
                "machine": self.machine, "defaults": self.defaults, "unread": list(self.unread),
                "output": self.output}

    def changed_defaults(self) -> dict[str, tuple[str | None, str | None]]:
        """The defaults this benchmark reads that read otherwise today: name -> (then, now)."""
        return {key: change for key, change in changed_defaults(self.defaults).items()
                if key.split(".")[0] not in self.unread}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        if data.get("format") != RECORD_FORMAT:
            raise ValueError(f"not a benchmark record ({RECORD_FORMAT}): format {data.get('format')!r}")
        return cls(name=data["name"], command=data["command"], output=data["output"], date=data["date"],
                   seconds=float(data["seconds"]), commit=data.get("commit"), versions=dict(data["versions"]),
                   machine=dict(data["machine"]), defaults=dict(data["defaults"]),
                   unread=tuple(data.get("unread", ())))

    def tables(self) -> list[tuple[list[str], list[list[str]]]]:
        """The markdown tables in the output, each as (header, rows) of cell texts."""
        return [(_cells(block[0]), [_cells(line) for line in block[2:]]) for block in _table_blocks(self.output)]


def load(name: str, directory: Path = RECORDS) -> Record:
    return Record.from_dict(json.loads((directory / f"{name}.json").read_text()))


def load_all(directory: Path = RECORDS) -> dict[str, Record]:
    return {path.stem: Record.from_dict(json.loads(path.read_text())) for path in sorted(directory.glob("*.json"))}


def save(record: Record, directory: Path = RECORDS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{record.name}.json"
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(record.to_dict(), indent=1) + "\n")
    return path


class _Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy: the script prints as it always did."""

    def __init__(self, out: Any) -> None:
        self.out, self.kept = out, io.StringIO()

    def write(self, text: str) -> int:
        self.out.write(text)
        self.kept.write(text)
        return len(text)

    def flush(self) -> None:
        self.out.flush()


def _own_flags(argv: list[str], default: str) -> tuple[str | None, Path, list[str]]:
    """``--record NAME`` and ``--record-dir DIR`` taken out of argv; the rest is the script's."""
    name: str | None = default
    directory = RECORDS
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        flag, _, value = arg.partition("=")
        if flag in ("--record", "--record-dir"):
            value = value or next(args, "")
            if not value:
                raise SystemExit(f"{flag} needs a value")
            if flag == "--record":
                name = None if value == "none" else value
            else:
                directory = Path(value)
        else:
            rest.append(arg)
    return name, directory, rest


def run(main: Callable[[], object], script: str, unread: tuple[str, ...] = ()) -> object:
    """Run a benchmark's ``main`` with ``sys.argv`` less this module's flags; record what it printed, unless
    it returned an exit status other than 0. Returns what ``main`` returned. ``unread``: ``Record.unread``."""
    name, directory, rest = _own_flags(sys.argv[1:], Path(script).stem)
    sys.argv[1:] = rest
    command = shlex.join([".venv/bin/python", f"benchmarks/{Path(script).name}", *rest])
    version_map = dict(versions())  # the code as it starts: a benchmark may write tracked files (an SVG)
    started, start = now(), time.monotonic()
    tee = _Tee(sys.stdout)
    with redirect_stdout(tee):  # type: ignore[type-var]
        result = main()
    if name is None or result not in (None, 0):
        return result
    record = Record(name=name, command=command, output=tee.kept.getvalue().strip() + "\n", date=started,
                    seconds=time.monotonic() - start, commit=version_map.get("dac_search_commit"),
                    versions=version_map, machine=machine(), defaults=shaping_defaults(), unread=unread)
    print(f"record written: {save(record, directory)}", file=sys.stderr)
    return result


def _table_blocks(text: str) -> Iterator[list[str]]:
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if len(block) >= 2:
            yield block
        block = []


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]
