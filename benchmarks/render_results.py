"""Write the results pages from the benchmark records (``docs/records/``), so every table names what made it.

    .venv/bin/python benchmarks/render_results.py [--check]

In ``docs/results.md`` a block ``<!-- record NAME -->`` ... ``<!-- /record -->`` becomes record NAME: its
command, commit, date, machine and wall time, a line naming each default that reads otherwise today (a stale
table shows as stale), and what the benchmark printed. In ``README.md`` the block ``<!-- headline -->`` ...
``<!-- /headline -->`` becomes ``benchmarks/headline.md`` with each ``{{RECORD | ROW | COLUMN}}`` replaced by
that cell of the record's tables: ROW names a row by its first cells (``a / b`` for two; a cell ``x (...)`` is
named ``x``), COLUMN a header.
``--check`` writes nothing and exits 1 when a page differs from what the records render.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _record import Record, load_all  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGES = (ROOT / "docs" / "results.md", ROOT / "README.md")
HEADLINE = Path(__file__).resolve().parent / "headline.md"
_BLOCK = re.compile(r"<!-- record (?P<name>[\w.-]+) -->\n.*?<!-- /record -->", re.S)
_HEADLINE = re.compile(r"<!-- headline -->\n.*?<!-- /headline -->", re.S)
_CELL = re.compile(r"\{\{\s*(?P<record>[\w.-]+)\s*\|\s*(?P<row>[^|}]+?)\s*\|\s*(?P<column>[^|}]+?)\s*\}\}")
SHOWN_CHANGES = 6


class RenderError(Exception):
    pass


def provenance(record: Record) -> str:
    """One line: what made the record, where and when."""
    commit = (record.commit or "no git checkout")[:12] + ("+dirty" if (record.commit or "").endswith("+dirty") else "")
    cpu = record.machine.get("cpu") or record.machine.get("machine")
    minutes = f"{record.seconds / 60:.1f} min" if record.seconds >= 60 else f"{record.seconds:.0f} s"
    return (f"Record `{record.name}`: `{record.command}`; commit `{commit}`, dac-search "
            f"{record.versions.get('dac_search')}, torch {record.versions.get('torch')}, onnxruntime "
            f"{record.versions.get('onnxruntime')}; {cpu}, {record.machine.get('cpus')} cores; "
            f"{record.date[:10]}; {minutes}.")


def staleness(record: Record) -> str | None:
    """A line naming the defaults that read otherwise today than when the record was made, or None."""
    changes = record.changed_defaults()
    if not changes:
        return None
    shown = [f"`{key}` {then} → {now}" for key, (then, now) in list(changes.items())[:SHOWN_CHANGES]]
    more = f", and {len(changes) - SHOWN_CHANGES} more" if len(changes) > SHOWN_CHANGES else ""
    return f"**Stale: made at other defaults than today's** ({', '.join(shown)}{more})."


def render_record(record: Record) -> str:
    stale = staleness(record)
    parts = [provenance(record), *([stale] if stale else []), "", record.output.strip()]
    return f"<!-- record {record.name} -->\n" + "\n".join(parts) + "\n<!-- /record -->"


def _named(records: Mapping[str, Record], name: str) -> Record:
    if name not in records:
        raise RenderError(f"no record {name!r} in docs/records")
    return records[name]


def render_page(text: str, records: Mapping[str, Record]) -> str:
    def block(match: re.Match[str]) -> str:
        return render_record(_named(records, match["name"]))

    text = _BLOCK.sub(block, text)
    if _HEADLINE.search(text):
        headline = render_headline(HEADLINE.read_text(), records)
        text = _HEADLINE.sub(lambda _: f"<!-- headline -->\n{headline}<!-- /headline -->", text)
    return text


def cell(record: Record, row: str, column: str) -> str:
    """The cell of ``column`` in the one row whose first cells read ``row`` (``a / b``), over the tables."""
    keys = [part.strip() for part in row.split(" / ")]
    found = []
    for header, rows in record.tables():
        if column not in header:
            continue
        for cells in rows:
            if all(_names(c, key) for c, key in zip(cells, keys)) and len(cells) >= len(keys):
                found.append(cells[header.index(column)].replace("**", ""))
    if len(found) != 1:
        raise RenderError(f"record {record.name!r}: {len(found)} cells at row {row!r}, column {column!r} (want 1)")
    return found[0]


def _names(text: str, key: str) -> bool:
    """A cell names a row by its text, bold or not, or by the text before a parenthesis: ``plan (dac 3)``."""
    text = text.replace("**", "")
    return text == key or text.startswith(key + " (")


def headline_records(template: str) -> list[str]:
    """The records a headline template draws on, in order of first use."""
    return list(dict.fromkeys(match["record"] for match in _CELL.finditer(template)))


def render_headline(template: str, records: Mapping[str, Record]) -> str:
    def substitute(match: re.Match[str]) -> str:
        return cell(_named(records, match["record"]), match["row"], match["column"])

    body = _CELL.sub(substitute, template).rstrip("\n")
    sources = ";\n".join(f"`{name}` ({records[name].date[:10]}, commit `{(records[name].commit or '-')[:7]}`)"
                         for name in headline_records(template))
    return f"{body}\n\nFrom the benchmark records (docs/records, rendered by render_results.py)\n{sources}.\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is out of date")
    args = parser.parse_args(argv)
    records = load_all()
    stale = []
    for page in PAGES:
        text = page.read_text()
        try:
            rendered = render_page(text, records)
        except RenderError as error:
            print(f"{page.relative_to(ROOT)}: {error}", file=sys.stderr)
            return 2
        if rendered != text:
            stale.append(page)
            if not args.check:
                page.write_text(rendered)
    for page in stale:
        print(f"{page.relative_to(ROOT)}: {'out of date' if args.check else 'rendered'}", file=sys.stderr)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
