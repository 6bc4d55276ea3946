"""Draw the report's figures as inline SVG strings with matplotlib.

Only drawing: the numbers come from ``summary.ReportData``. Figures are built with ``Figure`` directly
(no pyplot, no global backend switch), and the SVG is made deterministic: a fixed ``svg.hashsalt``
(ids stable across renders), no date in the metadata, text kept as text. Every plot's root ``<svg>``
has the plot's name as id and its main groups ``<name>-pareto``, ``<name>-budget`` ..., so a browser
test can find them.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager

import matplotlib
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from dac_search.plan import LayerChoice
from dac_search.precision import INT8
from dac_search.report.summary import AgreementPanel, FrontPanel, HypervolumeCurve, LayerGrid

GREY = "#8a96a3"
RED = "#c8374a"
BLUE = "#2e78a8"
ORANGE = "#e39b21"
INK = "#1f2933"
KEEP = "keep"
# Fixed colours per layer choice, so the same method looks the same in every report.
CHOICE_COLOURS = {
    KEEP: "#e9edf1",
    "dac/stacked": "#2e78a8",
    "dac/grouped": "#8cc0de",
    "dac": "#2e78a8",
    "spatial": "#c8374a",
    "channel": "#4f9a6b",
    "prune": "#e39b21",
}
OTHER_COLOUR = "#9b6fb0"
DARK_CHOICES = ("dac/stacked", "dac", "spatial", "channel", "prune")


@contextmanager
def _style(name: str) -> Iterator[None]:
    """Plot settings for one figure; ``name`` salts its SVG ids and becomes the root ``<svg>`` id."""
    rc = {
        "svg.fonttype": "none",
        "svg.hashsalt": f"dac-search:{name}",
        "font.family": "DejaVu Sans",
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
    with matplotlib.rc_context(rc):
        yield


def _to_svg(fig: Figure, name: str, label: str) -> str:
    """The figure as an ``<svg id=name>`` element to inline in HTML: no XML prolog, no metadata block.

    matplotlib names its groups ``axes_1``, ``xtick_1`` ... in every figure; several figures in one page
    would repeat those ids, so every id and every reference to one gets the figure's name as a prefix.
    """
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.DOTALL)
    text = re.sub(r'\bid="([^"]+)"', rf'id="{name}-\1"', text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{name}-\1"', text)
    text = re.sub(r"url\(#([^)]+)\)", rf"url(#{name}-\1)", text)
    return text.replace("<svg ", f'<svg id="{name}" role="img" aria-label="{label}" ', 1)


def pareto_svg(panel: FrontPanel, name: str) -> str:
    """Cost against proxy: all trials faded, the Pareto points, the original (and in int8), the uniform ranks,
    the budget."""
    scale = panel.axis.scale
    with _style(name):
        fig = Figure(figsize=(5.6, 3.9), layout="constrained")
        ax = fig.add_subplot()
        within = [m for m in panel.trials if m.feasible]
        over = [m for m in panel.trials if not m.feasible]
        if within:
            ax.scatter(
                [m.cost / scale for m in within], [m.proxy for m in within], s=18, color=GREY, alpha=0.45,
                label="trial within budget", gid="trials",
            )
        if over:
            ax.scatter(
                [m.cost / scale for m in over], [m.proxy for m in over], s=18, marker="x", color=GREY,
                alpha=0.45, label="trial over budget", gid="trials-over",
            )
        if panel.uniform:
            xs = [u.cost / scale for u in panel.uniform]
            ax.plot(xs, [u.proxy for u in panel.uniform], "D--", ms=4, lw=1, color=BLUE, label="uniform rank",
                    gid="uniform")
            for u in panel.uniform:
                ax.annotate(f"r{u.rank}", (u.cost / scale, u.proxy), xytext=(4, -9), textcoords="offset points",
                            fontsize=7, color=BLUE)
        if panel.pareto:
            xs = [m.cost / scale for m in panel.pareto]
            ys = [m.proxy for m in panel.pareto]
            if panel.is_objective:
                ax.step(xs, ys, where="post", color=RED, lw=1, alpha=0.7)
            ax.scatter(
                xs, ys, s=36, zorder=3, label="Pareto point", gid="pareto",
                color=[RED if m.feasible else "white" for m in panel.pareto], edgecolors=RED,
            )
            for m in panel.pareto:
                ax.annotate(str(m.trial), (m.cost / scale, m.proxy), xytext=(4, 4), textcoords="offset points",
                            fontsize=7, color=RED)
        if panel.original is not None:
            ax.scatter([panel.original[0] / scale], [panel.original[1]], s=140, marker="*", color=INK,
                       zorder=4, label="original", gid="original")
        for label, cost, proxy in panel.references:
            ax.scatter([cost / scale], [proxy], s=70, marker="s", color=ORANGE, edgecolors=INK, zorder=4,
                       label=label, gid="reference")
        if panel.budget is not None:
            ax.axvline(panel.budget / scale, ls="--", lw=1.2, color=ORANGE, label="budget", gid="budget")
        title = f"{panel.axis.name} against proxy"
        ax.set_title(title if panel.is_objective else f"{title} (Pareto points of the search)", loc="left")
        ax.set_xlabel(panel.axis.label)
        ax.set_ylabel("proxy (lower is closer to the original)")
        ax.grid(alpha=0.25)
        if not panel.trials:
            ax.text(0.5, 0.5, "no completed trials yet", transform=ax.transAxes, ha="center", color=GREY)
        ax.legend(fontsize=7, loc="upper right", frameon=False)
        return _to_svg(fig, name, title)


def agreement_svg(panel: AgreementPanel, name: str = "plot-agreement") -> str:
    """Cost against the percentages a person reads: each Pareto point's held-out agreement with the original
    (circles) and, where labelled data was given, its real top-1 (triangles); the original and the references
    beside them, and the budget."""
    scale = panel.axis.scale
    with _style(name):
        fig = Figure(figsize=(5.6, 3.9), layout="constrained")
        ax = fig.add_subplot()
        agreeing = [m for m in panel.points if m.agreement is not None]
        if agreeing:
            xs = [m.cost / scale for m in agreeing]
            ax.plot(xs, [m.agreement for m in agreeing], "-", lw=1, color=RED, alpha=0.6)
            ax.scatter(xs, [m.agreement for m in agreeing], s=36, zorder=3, gid="agreement",
                       label=f"agrees with the original ({panel.images} held-out synthetic)",
                       color=[RED if m.feasible else "white" for m in agreeing], edgecolors=RED)
            for m in agreeing:
                ax.annotate(m.label, (m.cost / scale, m.agreement), xytext=(4, 4), textcoords="offset points",
                            fontsize=7, color=RED)
        measured = [m for m in panel.points if m.top1 is not None]
        if measured:
            ax.scatter([m.cost / scale for m in measured], [m.top1 for m in measured], s=36, marker="^", zorder=3,
                       color=BLUE, gid="top1", label="real top-1 (--eval-data)")
        for mark, style in ((panel.original, {"s": 140, "marker": "*", "color": INK, "gid": "original"}),
                            *((ref, {"s": 70, "marker": "s", "color": ORANGE, "edgecolors": INK, "gid": "reference"})
                              for ref in panel.references)):
            values = [v for v in (None if mark is None else (mark.agreement, mark.top1)) or () if v is not None]
            if mark is None or not values:
                continue
            ax.scatter([mark.cost / scale] * len(values), values, zorder=4, label=mark.label, **style)
        if panel.budget is not None:
            ax.axvline(panel.budget / scale, ls="--", lw=1.2, color=ORANGE, label="budget", gid="budget")
        title = f"{panel.axis.name} against agreement" + (" and top-1" if measured else "")
        ax.set_title(title, loc="left")
        ax.set_xlabel(panel.axis.label)
        ax.set_ylabel("% (higher is closer to the original)")
        ax.grid(alpha=0.25)
        ax.legend(fontsize=7, loc="lower right", frameon=False)
        return _to_svg(fig, name, title)


def hypervolume_svg(curve: HypervolumeCurve, name: str = "plot-hypervolume") -> str:
    """Hypervolume of the feasible front after each trial: flat at the end means the search has converged."""
    with _style(name):
        fig = Figure(figsize=(5.6, 3.0), layout="constrained")
        ax = fig.add_subplot()
        if curve.trials:
            ax.step(
                curve.trials,
                [v / curve.axis.scale for v in curve.values],
                where="post",
                color=RED,
                lw=1.5,
                label="search",
                gid="curve",
            )
        if curve.uniform is not None:
            ax.axhline(
                curve.uniform / curve.axis.scale,
                ls="--",
                lw=1,
                color=BLUE,
                label="uniform rank (within budget)",
                gid="uniform",
            )
        ax.set_title("Hypervolume against trials", loc="left")
        ax.set_xlabel("trial")
        ax.set_ylabel(f"hypervolume ({curve.axis.unit} × proxy)")
        ax.grid(alpha=0.25)
        if not curve.trials:
            ax.text(0.5, 0.5, "no trials yet", transform=ax.transAxes, ha="center", color=GREY)
        ax.legend(fontsize=7, loc="lower right", frameon=False)
        return _to_svg(fig, name, "Hypervolume against trials")


def choice_label(choice: LayerChoice | None) -> str:
    """The category a layer falls in for the heatmap: ``keep``, ``dac/stacked``, ``spatial`` ..."""
    if choice is None:
        return KEEP
    return choice.method if choice.variant is None else f"{choice.method}/{choice.variant}"


def layers_svg(grid: LayerGrid, best_trial: int | None, name: str = "plot-layers") -> str:
    """Layers × Pareto plans: colour = method (and variant), number = rank, pale = kept as it is, hatched =
    runs in int8."""
    labels = sorted({choice_label(c) for row in grid.cells for c in row} | {KEEP}, key=_label_order)
    colours = [CHOICE_COLOURS.get(label, OTHER_COLOUR) for label in labels]
    index = {label: i for i, label in enumerate(labels)}
    n_rows, n_cols = len(grid.layers), len(grid.trials)
    with _style(name):
        fig = Figure(figsize=(max(4.8, 2.6 + 0.42 * n_cols), max(2.4, 1.3 + 0.2 * n_rows)), layout="constrained")
        ax = fig.add_subplot()
        ax.set_title("Layers of the Pareto plans", loc="left")
        if not n_rows or not n_cols:
            ax.text(0.5, 0.5, "no Pareto plan files yet", transform=ax.transAxes, ha="center", color=GREY)
            ax.set_axis_off()
            return _to_svg(fig, name, "Layers of the Pareto plans")
        values = [[index[choice_label(c)] for c in row] for row in grid.cells]
        norm = BoundaryNorm([i - 0.5 for i in range(len(labels) + 1)], len(labels))
        ax.pcolormesh(values, cmap=ListedColormap(colours), norm=norm, edgecolors="white", linewidth=0.6,
                      gid="cells")
        for i, row in enumerate(grid.cells):
            for j, choice in enumerate(row):
                int8 = bool(grid.precisions) and grid.precisions[i][j] == INT8
                if int8:  # hatched: the layer runs in int8
                    ax.add_patch(Rectangle((j, i), 1, 1, fill=False, hatch="////", edgecolor="#5b6670",
                                           linewidth=0, gid="int8"))
                if choice is not None:
                    dark = choice_label(choice) in DARK_CHOICES
                    behind = CHOICE_COLOURS.get(choice_label(choice), OTHER_COLOUR)  # readable over the hatch
                    ax.text(j + 0.5, i + 0.5, str(choice.rank), ha="center", va="center", fontsize=6.5,
                            color="white" if dark else INK,
                            bbox={"boxstyle": "round,pad=0.1", "fc": behind, "ec": "none"} if int8 else None)
        ax.set_xticks([j + 0.5 for j in range(n_cols)], [str(t) for t in grid.trials], fontsize=7)
        ax.set_yticks([i + 0.5 for i in range(n_rows)], list(grid.layers), fontsize=7)
        for tick, trial in zip(ax.get_xticklabels(), grid.trials):
            if trial == best_trial:
                tick.set_fontweight("bold")
        ax.invert_yaxis()
        ax.set_xlabel("Pareto plan (trial), cheapest first; bold = best")
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        handles = [Patch(facecolor=c, edgecolor="#c5ccd3", label=label) for label, c in zip(labels, colours)]
        if any(p == INT8 for row in grid.precisions for p in row):
            handles.append(Patch(facecolor="white", edgecolor="#5b6670", hatch="////", label="int8"))
        fig.legend(handles=handles, loc="outside right upper", fontsize=7, frameon=False, title="choice (rank)",
                   title_fontsize=7)
        return _to_svg(fig, name, "Layers of the Pareto plans")


def _label_order(label: str) -> tuple[int, str]:
    known = list(CHOICE_COLOURS)
    return (known.index(label), label) if label in known else (len(known), label)
