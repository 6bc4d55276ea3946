"""Benchmark records: every results page is what its records render, the README's figures come from records
made at today's defaults, and a record made at other defaults is marked stale where it is shown."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _record  # noqa: E402
import render_results  # noqa: E402

from dac_search.search.defaults import shaping_defaults  # noqa: E402


def test_every_record_reads_back_and_names_what_made_it() -> None:
    records = _record.load_all()
    assert records, "docs/records holds no record"
    for name, record in records.items():
        assert record.name == name and record.command.startswith(".venv/bin/python benchmarks/")
        assert record.commit and record.versions["dac_search"] and record.machine["cpus"], name
        assert record.tables(), f"record {name} holds no table"


def test_the_results_pages_are_what_the_records_render() -> None:
    """Edit a record (by running its benchmark), not a page: `benchmarks/render_results.py` writes the pages."""
    result = subprocess.run([sys.executable, str(BENCHMARKS / "render_results.py"), "--check"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr + " (run benchmarks/render_results.py)"


def test_every_figure_of_the_readme_comes_from_a_record_made_at_todays_defaults() -> None:
    records = _record.load_all()
    names = render_results.headline_records(render_results.HEADLINE.read_text())
    assert names, "the README's headline draws on no record"
    stale = {name: sorted(records[name].changed_defaults()) for name in names}
    assert not any(stale.values()), f"re-run these benchmarks at today's defaults: {stale}"


def test_a_record_made_at_other_defaults_is_marked_stale_naming_the_default() -> None:
    record = next(iter(_record.load_all().values()))
    assert render_results.staleness(replace(record, defaults=shaping_defaults())) is None
    older = replace(record, defaults={**shaping_defaults(), "fit_scale": "2"})
    text = render_results.render_record(older)
    assert "**Stale: made at other defaults than today's**" in text and "`fit_scale` 2 → 4" in text
    timed_otherwise = {**shaping_defaults(), "table.repeats": "99"}
    assert render_results.staleness(replace(record, defaults=timed_otherwise, unread=("table", "measure"))) is None
    assert "`table.repeats` 99" in render_results.render_record(replace(record, defaults=timed_otherwise, unread=()))


def test_a_benchmark_run_writes_its_record_and_a_failed_one_none(tmp_path, monkeypatch, capsys) -> None:
    def main() -> None:
        print("one line\n\n| what | value |\n|---|---|\n| a | 1.5 |\n| b **x** | 2 |")

    monkeypatch.setattr(sys, "argv", ["bench.py", "--limit", "3", "--record", "mine", "--record-dir", str(tmp_path)])
    assert _record.run(main, "benchmarks/bench.py") is None
    assert sys.argv == ["bench.py", "--limit", "3"]  # the script sees its own flags only
    record = _record.load("mine", tmp_path)
    assert record.command == ".venv/bin/python benchmarks/bench.py --limit 3"
    assert record.defaults == shaping_defaults() and record.seconds >= 0
    assert record.tables() == [(["what", "value"], [["a", "1.5"], ["b **x**", "2"]])]
    assert render_results.cell(record, "b x", "value") == "2"
    with pytest.raises(render_results.RenderError, match="0 cells"):
        render_results.cell(record, "c", "value")
    assert "| a | 1.5 |" in capsys.readouterr().out  # the terminal still sees everything

    monkeypatch.setattr(sys, "argv", ["bench.py", "--record", "failed", "--record-dir", str(tmp_path)])
    assert _record.run(lambda: 1, "benchmarks/bench.py") == 1
    assert not (tmp_path / "failed.json").exists()
    assert json.loads((tmp_path / "mine.json").read_text())["format"] == _record.RECORD_FORMAT


def test_a_headline_cell_is_substituted_from_its_record(tmp_path) -> None:
    record = _record.Record("r", ".venv/bin/python benchmarks/x.py", "| what | top-1 % |\n|---|---|\n| plan | 93.1 |\n",
                            "2026-12-07T10:00:00+00:00", 1.0, "abc1234def", {"dac_search": "0"}, {"cpus": 2},
                            shaping_defaults())
    text = render_results.render_headline("| A | {{ r | plan | top-1 % }}% |\n", {"r": record})
    assert text.startswith("| A | 93.1% |") and "`r` (2026-12-07, commit `abc1234`)" in text
