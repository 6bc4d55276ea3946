"""Render ``report.html``: one self-contained page (inline CSS and SVG, no script, no fetch) to read offline.

Nothing in the page depends on the clock or the machine rendering it, so re-rendering a run dir gives
the same bytes.
"""

from __future__ import annotations

from html import escape

from dac_search.report.plots import agreement_svg, hypervolume_svg, layers_svg, pareto_svg
from dac_search.report.summary import LATENCY, ReportData
from dac_search.report.tables import (
    TextTable,
    budget_text,
    condition_items,
    pareto_table,
    summary_items,
    uniform_table,
)

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2933; margin: 0;
       background: #f7f9fb; }
main { max-width: 1180px; margin: 0 auto; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 10px; }
.sub { color: #52606d; margin: 0 0 16px; }
.banner { border-radius: 6px; padding: 10px 14px; margin: 12px 0; font-weight: 600; }
.partial { background: #fff3cd; border: 1px solid #e39b21; color: #7a4b00; }
.note { background: #e8f1f8; border: 1px solid #9cc3df; color: #1d4f73; font-weight: 400; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; }
dt { color: #52606d; } dd { margin: 0; overflow-wrap: anywhere; }
section { background: #fff; border: 1px solid #dde3ea; border-radius: 8px; padding: 4px 18px 16px;
          margin: 16px 0; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; max-width: 100%; } figure svg { display: block; max-width: 100%; height: auto; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 9px; border-bottom: 1px solid #e4e8ee; text-align: left; white-space: nowrap; }
th { background: #f0f3f6; font-weight: 600; } td.num, th.num { text-align: right; }
tr.strong td { font-weight: 700; background: #fdf1f2; }
code { font: 12px ui-monospace, "SFMono-Regular", Menlo, monospace; background: #f0f3f6; padding: 1px 4px;
       border-radius: 3px; }
"""


def render_html(data: ReportData) -> str:
    """The whole page as a string."""
    info = data.results.info
    title = f"dac-search report: {info.model}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">run <code>{escape(data.results.run_dir.name)}</code> · budget '
        f"{escape(budget_text(info.budget))} · device "
        f"{escape(info.device.name if info.device else 'none')}</p>",
        *_banners(data),
        _section("summary", "Summary", _definitions(summary_items(data))),
        _section("plots", "Pareto front", _plots(data)),
        _section("pareto", "Pareto points", _table(pareto_table(data), "pareto-table")),
        _section("layers", "Per-layer choices of the Pareto plans", _layers(data)),
        _section("uniform", "Uniform-rank baseline", _table(uniform_table(data), "uniform-table")),
        _section("conditions", "Device and run conditions", _definitions(condition_items(data))),
        "</main>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def _banners(data: ReportData) -> list[str]:
    banners = []
    if data.results.info.partial:
        banners.append(
            '<div class="banner partial" id="partial-banner" role="alert">Partial run: the search was interrupted '
            f"or is still running ({data.counts.total} of {data.results.info.n_trials} trials). "
            "The front below may still improve.</div>"
        )
    banners += [f'<div class="banner note">{escape(note)}</div>' for note in data.notes]
    return banners


def _section(anchor: str, heading: str, body: str) -> str:
    return f'<section id="{anchor}">\n<h2>{escape(heading)}</h2>\n{body}\n</section>'


def _definitions(items: tuple[tuple[str, str], ...]) -> str:
    rows = "\n".join(f"<dt>{escape(key)}</dt><dd>{escape(value)}</dd>" for key, value in items)
    return f"<dl>\n{rows}\n</dl>"


def _plots(data: ReportData) -> str:
    figures = [
        _figure(pareto_svg(panel, "plot-pareto-latency" if panel.axis is LATENCY else "plot-pareto-flops"))
        for panel in data.panels
    ]
    if data.agreement is not None:
        figures.append(_figure(agreement_svg(data.agreement)))
    figures.append(_figure(hypervolume_svg(data.hypervolume)))
    return '<div class="plots">\n' + "\n".join(figures) + "\n</div>"


def _layers(data: ReportData) -> str:
    best = None if data.best is None else data.best.trial
    body = _figure(layers_svg(data.layers, best))
    if data.layers.missing:
        missing = ", ".join(str(t) for t in data.layers.missing)
        body += f'\n<p class="sub">No plan file for trial(s) {escape(missing)}.</p>'
    return body + '\n<p class="sub">Layers not shown are kept as they are in every plan.</p>'


def _figure(svg: str) -> str:
    return f"<figure>\n{svg}\n</figure>"


def _table(table: TextTable, table_id: str) -> str:
    def cls(numeric: bool) -> str:
        return ' class="num"' if numeric else ""

    head = "".join(f"<th{cls(n)}>{escape(h)}</th>" for h, n in zip(table.headers, table.numeric))
    rows = []
    for row, strong in zip(table.rows, table.strong):
        cells = "".join(f"<td{cls(n)}>{escape(cell)}</td>" for cell, n in zip(row, table.numeric))
        rows.append(f'<tr class="strong">{cells}</tr>' if strong else f"<tr>{cells}</tr>")
    if not rows:
        return '<p class="sub">Nothing yet.</p>'
    body = "\n".join(rows)
    return f'<table id="{table_id}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'
