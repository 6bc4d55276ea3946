"""``write_reports``: the one entry point that turns a run dir into ``report.html`` and ``report.md``."""

from __future__ import annotations

from pathlib import Path

from dac_search.atomic import write_text_atomic
from dac_search.report.html import render_html
from dac_search.report.markdown import render_markdown
from dac_search.report.summary import build_report_data
from dac_search.rundir import load_run

HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"


def write_reports(run_dir: str | Path) -> tuple[Path, Path]:
    """Render both reports from the saved results, measuring nothing; return (html path, md path)."""
    root = Path(run_dir)
    data = build_report_data(load_run(root))
    html_path = write_text_atomic(root / HTML_NAME, render_html(data))
    md_path = write_text_atomic(root / MARKDOWN_NAME, render_markdown(data))
    return html_path, md_path
