"""Render ``report.md``: the same summary and tables as the HTML page, for terminals and pull requests."""

from __future__ import annotations

from dac_search.report.summary import ReportData
from dac_search.report.tables import TextTable, condition_items, pareto_table, summary_items, uniform_table


def render_markdown(data: ReportData) -> str:
    info = data.results.info
    lines = [f"# dac-search report: {_escape(info.model)}", ""]
    if info.partial:
        lines += [
            f"> **Partial run**: the search was interrupted or is still running "
            f"({data.counts.total} of {info.n_trials} trials). The front may still improve.",
            "",
        ]
    lines += [f"> {_escape(note)}" for note in data.notes]
    if data.notes:
        lines.append("")
    lines += ["## Summary", "", *_definitions(summary_items(data)), ""]
    lines += ["## Pareto points", "", *_table(pareto_table(data)), ""]
    lines += ["## Uniform-rank baseline", "", *_table(uniform_table(data)), ""]
    lines += ["## Device and run conditions", "", *_definitions(condition_items(data)), ""]
    lines += ["Plots (Pareto front, hypervolume, per-layer choices): see `report.html` in the run dir.", ""]
    return "\n".join(lines)


def _escape(text: str) -> str:
    """Recorded text (a model spec, a command, a device's description) as text: ``&``, ``<`` and ``>`` as
    entities, so no HTML is rendered from it; a pipe escaped and line breaks as spaces, so a cell stays
    in its row and column."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return " ".join(text.replace("|", "\\|").splitlines())


def _definitions(items: tuple[tuple[str, str], ...]) -> list[str]:
    return [f"- **{key}**: {_escape(value)}" for key, value in items]


def _table(table: TextTable) -> list[str]:
    if not table.rows:
        return ["Nothing yet."]
    align = ["---:" if numeric else ":---" for numeric in table.numeric]
    lines = ["| " + " | ".join(table.headers) + " |", "| " + " | ".join(align) + " |"]
    for row, strong in zip(table.rows, table.strong):
        cells = [f"**{_escape(c)}**" if strong and c else _escape(c) for c in row]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
