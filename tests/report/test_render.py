"""Render the fixed run dirs and check what a reader relies on: the table, the plots, the banners, the bytes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from rich.console import Console

from dac_search.report import build_report_data, print_pareto, write_reports
from dac_search.rundir import load_run
from tests.report.conftest import (
    BUDGET_MS,
    HELD_OUT,
    PARETO,
    TOP1,
    edit_csv,
    edit_run_json,
    final_row,
    front_by_definition,
    partial_fits,
    run_info,
)

BEST = max(PARETO, key=TOP1.__getitem__)  # the most accurate plan within the budget
BASELINE = run_info(partial=False).baseline
PLOT_IDS = ("plot-pareto-latency", "plot-pareto-flops", "plot-agreement", "plot-hypervolume", "plot-layers")


def table_rows(html: str, table_id: str) -> list[list[str]]:
    body = html.split(f'<table id="{table_id}">', 1)[1].split("</table>", 1)[0]
    return [re.findall(r"<td[^>]*>(.*?)</td>", tr) for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", body)][1:]


def test_html_has_the_pareto_table_with_the_best_plan_marked(rendered: Path) -> None:
    html = (rendered / "report.html").read_text(encoding="utf-8")
    rows = table_rows(html, "pareto-table")
    assert [r[0] for r in rows] == ["original", *map(str, PARETO)]
    # the original: proxy, agreement with itself, MFLOPs, ms
    assert (
        rows[0][1:4] == ["0.0000", "100.0", f"{BASELINE.flops / 1e6:.2f}"]
        and rows[0][6] == f"{BASELINE.latency_ms:.3f}"
    )
    best = final_row(BEST)
    agreement = f"{100 * HELD_OUT[BEST]:.1f}"  # the exported model's, on the held-out images
    assert "Agrees (% of 256 held-out synthetic)" in html
    assert rows[1 + PARETO.index(BEST)] == [
        str(BEST), f"{best.proxy:.4f}", agreement, f"{best.flops / 1e6:.2f}", f"{best.flops / BASELINE.flops:.2f}×",
        f"{best.params / 1e3:.1f}", f"{best.latency_ms:.3f}", f"{best.latency_iqr_ms:.3f}",
        f"{1 / best.latency_ratio:.2f}×", f"{TOP1[BEST]:.2f}", "best",
    ]
    assert f'<tr class="strong"><td>{BEST}</td>' in html
    assert "partial-banner" not in html
    drop = TOP1[BEST] - BASELINE.top1
    assert f"trial {BEST}, proxy {best.proxy:.4f}, top-1 {TOP1[BEST]:.2f} % ({drop:+.2f} vs original)" in html
    assert "AMD EPYC 7B13" in html and "governor" in html  # run conditions


def test_html_embeds_every_plot_as_inline_svg_and_fetches_nothing(rendered: Path) -> None:
    html = (rendered / "report.html").read_text(encoding="utf-8")
    for plot in PLOT_IDS:
        assert f'<svg id="{plot}"' in html
    for group in ("pareto", "trials", "original", "uniform", "budget"):
        assert f'id="plot-pareto-latency-{group}"' in html
    assert 'id="plot-pareto-flops-budget"' not in html  # the budget is on latency
    for group in ("agreement", "top1", "original", "budget"):  # the percentages a person reads, by latency
        assert f'id="plot-agreement-{group}"' in html
    assert 'id="plot-hypervolume-curve"' in html and 'id="plot-layers-cells"' in html
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids)), "ids must be unique across the inlined SVGs"
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "<script" not in html and "<link" not in html and "@import" not in html


def test_rendering_again_gives_identical_bytes(rendered: Path, tmp_path: Path) -> None:
    first = [(rendered / name).read_bytes() for name in ("report.html", "report.md")]
    copy = shutil.copytree(rendered, tmp_path / "elsewhere" / rendered.name)
    paths = write_reports(copy)
    assert paths == (copy / "report.html", copy / "report.md")
    assert [p.read_bytes() for p in paths] == first  # same bytes, in another process's dir and time


def test_markdown_has_the_same_summary_and_table(rendered: Path) -> None:
    md = (rendered / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# dac-search report: cifar10-resnet20\n")
    assert f"| **{BEST}** | **{final_row(BEST).proxy:.4f}** |" in md
    for trial in PARETO:
        assert f"\n| {trial} |" in md or f"\n| **{trial}** |" in md
    assert f"- **Best plan**: trial {BEST}," in md
    assert f"dac-search export RUN_DIR --pick {BEST} --format onnx -o model.onnx" in md
    assert "Partial run" not in md


def test_partial_run_renders_with_a_banner(partial_dir: Path) -> None:
    html_path, md_path = write_reports(partial_dir)
    html = html_path.read_text(encoding="utf-8")
    assert 'id="partial-banner"' in html and "12 of 30 trials" in html
    assert "pareto.csv was not written" in html
    front = front_by_definition(partial_fits())
    assert [r[0] for r in table_rows(html, "pareto-table")] == ["original", *map(str, front)]
    assert "Top-1" not in html  # no eval data in this run
    assert "**Partial run**" in md_path.read_text(encoding="utf-8")


def test_run_without_device_plots_flops_only(run_dir: Path) -> None:
    def no_device(run: dict) -> None:
        flops = run["baseline"]["flops"]
        run.update(device=None, objective="flops", budget={"text": "0.6x", "kind": "flops", "value": 0.6 * flops,
                                                           "unit": "flops"})
        run["baseline"].update(latency_ms=None, latency_iqr_ms=None)
        for point in run["uniform"]:
            point["latency_ms"] = None

    edit_run_json(run_dir, no_device)
    for name in ("trials.csv", "pareto.csv"):
        edit_csv(run_dir / name, lambda r: r.update(latency_ms="", latency_iqr_ms="", latency_predicted_ms="",
                                                    latency_ratio=""))
    html = write_reports(run_dir)[0].read_text(encoding="utf-8")
    assert 'id="plot-pareto-flops-budget"' in html and 'id="plot-pareto-latency"' not in html
    assert "Latency" not in html.split('<table id="pareto-table">')[1].split("</thead>")[0]
    assert "none (cost = FLOPs, no latency measured)" in html


def test_no_feasible_plan_is_said_plainly(run_dir: Path) -> None:
    edit_csv(run_dir / "pareto.csv", lambda r: r.update(feasible="False"))
    html = write_reports(run_dir)[0].read_text(encoding="utf-8")
    assert "No trial met the budget 0.7x" in html
    assert "over budget" in html and "none within the budget" in html


def test_terminal_table_lists_the_front(run_dir: Path) -> None:
    console = Console(record=True, width=140)
    print_pareto(build_report_data(load_run(run_dir)), console)
    text = console.export_text()
    # judged by each plan's ratio to the original timed beside it, so said as a ratio, not as a limit in ms
    assert (f"Pareto front: cifar10-resnet20, budget latency ≤ 0.7x of the original timed beside each plan "
            f"({BUDGET_MS:.3f} ms at its median)") in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()[:1].isdigit()}
    assert set(lines) == {str(t) for t in PARETO}
    assert "best" in lines[str(BEST)] and f"{TOP1[BEST]:.2f}" in lines[str(BEST)]


def test_run_interrupted_before_any_trial_still_renders(partial_dir: Path) -> None:
    trials = partial_dir / "trials.csv"
    trials.write_text(trials.read_text().splitlines()[0] + "\n")
    html = write_reports(partial_dir)[0].read_text(encoding="utf-8")
    assert 'id="partial-banner"' in html and "0 of 30 trials" in html
    assert "no completed trials yet" in html and "no Pareto plan files yet" in html
    assert [r[0] for r in table_rows(html, "pareto-table")] == ["original"]


def test_recorded_text_is_text_in_every_view(run_dir: Path) -> None:
    """A model spec or command is shown as written: no HTML from report.md, no rich markup on the terminal,
    and a newline does not break a markdown row."""
    spec = "nets/<b>x</b>.py:make&[bold]y[/bold]"

    def odd(run: dict) -> None:
        run["model"] = spec
        run["command"] = f"dac-search --model '{spec}' --study 'a|b\nc'"

    edit_run_json(run_dir, odd)
    _, md_path = write_reports(run_dir)
    md = md_path.read_text(encoding="utf-8")
    assert md.startswith("# dac-search report: nets/&lt;b&gt;x&lt;/b&gt;.py:make&amp;[bold]y[/bold]\n")
    assert "<b>" not in md
    command = next(line for line in md.splitlines() if "--study" in line)
    assert "a\\|b c" in command  # pipe escaped, newline a space: the row stays one row
    console = Console(record=True, width=200)
    print_pareto(build_report_data(load_run(run_dir)), console)
    assert f"Pareto front: {spec}" in console.export_text()
