"""The Pareto front as a rich table, printed at the end of every search and by ``dac-search report``."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dac_search.report.summary import ReportData
from dac_search.report.tables import budget_text, pareto_table


def pareto_rich_table(data: ReportData) -> Table:
    info = data.results.info
    text = pareto_table(data)
    table = Table(
        title=Text(f"Pareto front: {info.model}, budget {budget_text(info.budget)}"),  # a spec is not markup
        caption="PARTIAL RUN: interrupted or still running" if info.partial else None,
        caption_style="bold yellow",
        box=box.SIMPLE_HEAD,
    )
    for i, (header, numeric) in enumerate(zip(text.headers, text.numeric)):
        # Cells are never cut or folded; on a narrow terminal the headers wrap instead.
        widest = max(len(row[i]) for row in text.rows)
        table.add_column(header, justify="right" if numeric else "left", min_width=widest)
    for row, strong in zip(text.rows, text.strong):
        table.add_row(*row, style="bold" if strong else None)
    return table


def print_pareto(data: ReportData, console: Console | None = None) -> None:
    """Print the table and the notes (no plan within budget, front computed from trials.csv ...)."""
    out = console if console is not None else Console(markup=False)
    out.print(pareto_rich_table(data))
    for note in data.notes:
        out.print(note, style="yellow", markup=False, highlight=False)
