"""Thin command line: parse, call the library, turn a ``DacSearchError`` into one line and an exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dac_search.commands import decompose, devices, export, profile, report, search
from dac_search.errors import EXPECTED

# The sub-commands, in the order of the help; each module has add_parser() and run().
COMMANDS = (search, decompose, profile, devices, report, export)
DEFAULT_COMMAND = "search"


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad flags as one line and exit code 2 (its usage dump is noise in logs)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"dac-search: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dac-search", description="Data-free, hardware-aware DAC rank search.")
    subparsers = parser.add_subparsers(dest="command", parser_class=_Parser)
    for module in COMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    known = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    if argv and argv[0] not in known and argv[0] not in ("-h", "--help") and DEFAULT_COMMAND in known:
        argv.insert(0, DEFAULT_COMMAND)  # `dac-search --model M --device D --budget B` means search
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except EXPECTED as exc:
        sys.stderr.write(f"dac-search: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("dac-search: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
