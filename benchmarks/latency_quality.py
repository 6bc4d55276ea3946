"""Latency budgets as a user meets them: the exported best plan of a search against a shallower network.

    .venv/bin/python benchmarks/latency_quality.py [--model cifar10-resnet56] [--budgets 0.8,0.7,0.6,0.5,0.4]
        [--trials 100] [--device local] [--eval-data cifar10_test_a.npz] [--out DIR] [--svg FILE]
        [--methods LIST] [--threads 1] [--correction stream]

For every budget the real command runs (``dac-search --model M --budget Bx --device D``, data-free: no
``--eval-data``, so the best plan is the one the proxy picks), ``dac-search export --format onnx``
writes its best plan, and that ONNX file is what is judged: its top-1 on the labelled images, run in
onnxruntime, and its latency. Every exported plan, the original, the paper's uniform DAC (rank 1, 2
and 3 on every conv but the first, with the same correction) and the shallower CIFAR ResNets (random
weights: latency only; their top-1 is the upstream figure on the full test set) are then timed in one
interleaved session beside the original, so every ratio in the table is paired.

Prints one markdown table and writes an SVG of top-1 against measured latency, the siblings as points.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ASSETS, INPUT_SHAPE, markdown, method_counts, split  # noqa: E402
from prune_quality import UPSTREAM_TOP1  # noqa: E402

from dac_search.cost import CostModel  # noqa: E402
from dac_search.eval_data import EvalData, load_eval_data  # noqa: E402
from dac_search.export import export_onnx  # noqa: E402
from dac_search.export.run import ExportedModel, export_run  # noqa: E402
from dac_search.plan import LayerChoice, RankPlan  # noqa: E402
from dac_search.proxies.apply import decompose_model  # noqa: E402
from dac_search.zoo import load_model  # noqa: E402
from dac_search.zoo.cifar_resnet import CifarResNet  # noqa: E402
from profilers import load_device  # noqa: E402
from profilers.pool import DevicePool  # noqa: E402

CLI = [sys.executable, "-m", "dac_search.cli"]
UNIFORM_RANKS = (1, 2, 3)


def onnx_top1(path: Path, data: EvalData) -> float:
    """Top-1 (%) of an ONNX file run in onnxruntime on CPU: the file ``dac-search export`` wrote."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    correct = 0
    for x, y in data.batches(1):  # exported at batch 1
        logits = session.run(None, {name: x.numpy()})[0]
        correct += int((np.argmax(logits, axis=1) == y.numpy()).sum())
    return 100.0 * correct / len(data)


def run_search(args: argparse.Namespace, budget: str, out: Path, *extra: str) -> tuple[ExportedModel, float]:
    """The user's command, then the export ``dac-search export --format onnx`` makes of its best plan."""
    command = [*CLI, "--model", args.model, "--budget", budget, "--device", args.device, "--trials", str(args.trials),
               "--correction", args.correction, "--out", str(out), *extra]
    if args.methods:
        command += ["--methods", args.methods]
    start = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - start
    return export_run(out, out / "best.onnx", "onnx", model=args.model), seconds  # our own spec: trusted


def uniform_plan(costs: CostModel, rank: int, spec: str, correction: str) -> RankPlan:
    """The paper's allocation: one DAC rank on every k x k conv but the first, corrected as the search's plans are."""
    names = list(costs.geometry)[1:]  # the convs DAC can take: k x k, k > 1
    return RankPlan({n: LayerChoice("dac", rank, "stacked") for n in names}, spec, costs.input_shape, correction)


def paired(device: str, reference: Path, models: list[Path], shape: tuple[int, ...] = INPUT_SHAPE) -> list[float]:
    pool = DevicePool(load_device(device), lambda message: print(message, file=sys.stderr))
    try:
        return [pair.ratio for pair in pool.measure_beside(reference, models, shape)]
    finally:
        pool.close()


def plot(path: Path, title: str, points: dict[str, list[tuple[float, float, str]]]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    styles = {"search": ("o-", "#2e78a8"), "uniform DAC": ("s--", "#8a96a3"), "shallower sibling": ("D", "#c8374a"),
              "original": ("*", "#1f2933")}
    for kind, rows in points.items():
        marker, colour = styles[kind]
        rows = sorted(rows)
        ax.plot([r[0] for r in rows], [r[1] for r in rows], marker, color=colour, label=kind, markersize=6)
        for x, y, label in rows:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=colour)
    ax.set_xlabel("latency, measured beside the original (x)")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar10-resnet56", help="a CIFAR ResNet (cifar10-resnet20/56)")
    parser.add_argument("--budgets", default="0.8,0.7,0.6,0.5,0.4", help="relative latency budgets")
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--device", default="local")
    parser.add_argument("--methods", default=None, help="passed to --methods (default: the search's own)")
    parser.add_argument("--eval-data", default=str(ASSETS / "cifar10" / "cifar10_test_a.npz"))
    parser.add_argument("--out", type=Path, default=None, help="keep the run dirs here (default: a temporary dir)")
    parser.add_argument("--svg", type=Path, default=Path("latency_quality.svg"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the uniform plans' refit")
    parser.add_argument("--correction", default="stream",
                        help="passed to --correction, and used by the uniform plans (default: stream, the search's "
                        "own under a latency budget)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    budgets = [float(b) for b in split(args.budgets)]
    data = load_eval_data(args.eval_data, size=INPUT_SHAPE[2:])
    model = load_model(args.model).eval()
    depth = len(model.layer1) * 6 + 2
    costs = CostModel(model, INPUT_SHAPE)
    base_flops = costs.baseline.flops
    with tempfile.TemporaryDirectory(prefix="latency-quality-") as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        entries: list[dict] = []  # kind, label, onnx, top1, flops share, extra
        original = export_onnx(model, root / "original.onnx", INPUT_SHAPE)
        for budget in budgets:
            out = root / f"{args.model}-{budget:g}x"
            exported, seconds = run_search(args, f"{budget:g}x", out)
            row = exported.row
            entries.append({"kind": "search", "label": f"{budget:g}x", "onnx": exported.path,
                            "top1": onnx_top1(exported.path, data), "flops": row.flops / base_flops,
                            "search_s": seconds, "search_ratio": row.latency_ratio, "methods": method_counts(RankPlan.load(out / row.plan))})
        for rank in UNIFORM_RANKS:
            plan = uniform_plan(costs, rank, args.model, args.correction)
            path = export_onnx(decompose_model(model, plan), root / f"uniform-{rank}.onnx", INPUT_SHAPE)
            entries.append({"kind": "uniform DAC", "label": f"r={rank}", "onnx": path, "top1": onnx_top1(path, data),
                            "flops": costs.cost(plan).flops / base_flops})
        for sibling in (d for d in sorted(UPSTREAM_TOP1) if d < depth):
            net = CifarResNet(sibling).eval()
            path = export_onnx(net, root / f"resnet{sibling}.onnx", INPUT_SHAPE)
            entries.append({"kind": "shallower sibling", "label": f"ResNet-{sibling}", "onnx": path,
                            "top1": UPSTREAM_TOP1[sibling],
                            "flops": CostModel(net, INPUT_SHAPE).baseline.flops / base_flops})
        original_top1 = onnx_top1(original, data)
        ratios = paired(args.device, original, [e["onnx"] for e in entries])
    rows = [["original", "-", f"{original_top1:.2f}", "-", "1.000x", "-", "-"]]
    points: dict[str, list[tuple[float, float, str]]] = {"original": [(1.0, original_top1, "")]}
    for entry, ratio in zip(entries, ratios):
        kind = entry["kind"]
        top1 = entry["top1"]
        drop = f"{top1 - original_top1:+.2f}" if kind != "shallower sibling" else f"{top1 - UPSTREAM_TOP1[depth]:+.2f}"
        what = f"dac-search --budget {entry['label']}" if kind == "search" else f"{kind} {entry['label']}"
        search = "-"
        if kind == "search":
            own = "unmeasured" if entry["search_ratio"] is None else f"{entry['search_ratio']:.3f}x"
            search = f"{own}, {entry['search_s'] / 60:.1f} min"
        if kind == "search":
            what += f" ({entry['methods']})"
        rows.append([what, f"{entry['flops']:.1%}", f"{top1:.2f}", drop, f"{ratio:.3f}x", search,
                     "upstream, full test set" if kind == "shallower sibling" else "exported ONNX, onnxruntime"])
        points.setdefault(kind, []).append((ratio, top1, entry["label"]))
    print(f"### {args.model} under latency budgets on {args.device} (batch 1; {len(data)} images of "
          f"{Path(args.eval_data).name}; {args.trials} trials per search)\n")
    print(markdown(["what", "FLOPs kept", "top-1 %", "drop (pts)", "latency vs original (paired)",
                    "search's own measurement, search time", "top-1 from"], rows))
    print(f"\nDrop: from the original's top-1 measured here; a sibling's from ResNet-{depth}'s upstream "
          f"{UPSTREAM_TOP1[depth]:.2f}.")
    plot(args.svg, f"{args.model}: top-1 against measured latency ({args.device}, batch 1)", points)
    print(f"\nplot: {args.svg}")


if __name__ == "__main__":
    main()
