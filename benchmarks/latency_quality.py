"""Latency budgets as a user meets them: the exported best plan of a search against what a user could do
instead: the original in data-free int8, uniform DAC and a shallower network, each in fp32 and int8.

    .venv/bin/python benchmarks/latency_quality.py [--model cifar10-resnet56] [--budgets 0.8,0.6,0.5,0.4,0.3]
        [--trials 100] [--device local] [--eval-data cifar10_test_a.npz] [--out DIR] [--svg FILE]
        [--methods LIST] [--precision LIST] [--threads 1] [--correction stream] [--reconstruct 10m]

For every budget the real command runs (``dac-search --model M --budget Bx --device D``, data-free: no
``--eval-data``, so the best plan is the one the proxy picks), ``dac-search export`` writes its best plan in the
device runtime's format (ONNX for onnxruntime, ``.tflite`` for LiteRT), and that file is what is judged: its
top-1 on the labelled images, run by that runtime, and its latency. Every exported plan, the original, the
paper's uniform DAC (rank 1, 2 and 3 on every conv but the first, with the same correction) and the shallower
CIFAR ResNets (random weights: latency only, their top-1 the upstream fp32 figure on the full test set;
ResNet-20 with its real weights, its top-1 measured), each also in int8 (every conv, quantized and calibrated on
distilled images as the search's int8 plans are; a sibling only with real weights), are then timed in one
interleaved session beside the original, so every ratio in the table is paired.

With ``--reconstruct DURATION`` each search runs its reconstruction stage too (``dac-search --reconstruct``),
and both its best closed-form plan and the plan ``export`` then picks (reconstructed) are judged, in rows of
their own, the stage's wall time beside them.

Prints one markdown table and writes an SVG of top-1 against measured latency, the siblings as points.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ASSETS, INPUT_SHAPE, markdown, method_counts, split  # noqa: E402
from prune_quality import UPSTREAM_TOP1  # noqa: E402

from dac_search.cost import CostModel  # noqa: E402
from dac_search.eval_data import EvalData, load_eval_data  # noqa: E402
from dac_search.export import export_for  # noqa: E402
from dac_search.export.run import ExportedModel, export_run  # noqa: E402
from dac_search.int8_model import Int8Model  # noqa: E402
from dac_search.pareto import best_row  # noqa: E402
from dac_search.plan import LayerChoice, RankPlan  # noqa: E402
from dac_search.proxies.apply import decompose_model  # noqa: E402
from dac_search.proxies.calibration import every_conv_in_int8, quantized  # noqa: E402
from dac_search.rundir import TrialRow, load_run  # noqa: E402
from dac_search.zoo import load_model  # noqa: E402
from dac_search.zoo.cifar_resnet import CifarResNet  # noqa: E402
from profilers import load_device  # noqa: E402
from profilers.pool import DevicePool  # noqa: E402

CLI = [sys.executable, "-m", "dac_search.cli"]
UNIFORM_RANKS = (1, 2, 3)


def file_top1(path: Path, data: EvalData) -> float:
    """Top-1 (%) of an exported file in the runtime it was written for (``.onnx`` or ``.tflite``)."""
    return tflite_top1(path, data) if path.suffix == ".tflite" else onnx_top1(path, data)


def tflite_top1(path: Path, data: EvalData) -> float:
    """Top-1 (%) of a ``.tflite`` file run by LiteRT (XNNPACK), one thread; an int8 input quantized as the file says."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    (entry,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    correct = 0
    for x, y in data.batches(1):
        image = x.numpy()
        if entry["dtype"] != np.float32:
            scale, zero = entry["quantization"]
            image = np.clip(np.round(image / scale + zero), -128, 127).astype(entry["dtype"])
        interpreter.set_tensor(entry["index"], image)
        interpreter.invoke()
        correct += int(np.argmax(interpreter.get_tensor(out["index"]), axis=1)[0] == int(y[0]))
    return 100.0 * correct / len(data)


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
    """The user's command, then the export ``dac-search export`` makes of its best plan, for the device's runtime."""
    command = [*CLI, "--model", args.model, "--budget", budget, "--device", args.device, "--trials", str(args.trials),
               "--correction", args.correction, "--out", str(out), *extra]
    if args.methods:
        command += ["--methods", args.methods]
    if args.precision:
        command += ["--precision", args.precision]
    if args.reconstruct:
        command += ["--reconstruct", args.reconstruct]
    start = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - start
    fmt = "tflite" if load_device(args.device).runtime == "litert" else "onnx"
    return export_run(out, out / f"best.{fmt}", fmt, model=args.model), seconds  # our own spec: trusted


def closed_form_best(run_dir: Path) -> TrialRow:
    """The best plan of a run as its closed-form proxy ranks it (what export picks without the stage)."""
    pareto = load_run(run_dir).pareto or ()
    best = best_row([replace(r, proxy_reconstructed=None, top1_reconstructed=None, plan_reconstructed=None)
                     for r in pareto])
    assert best is not None and best.plan is not None
    return best


def uniform_plan(costs: CostModel, rank: int, spec: str, correction: str) -> RankPlan:
    """The paper's allocation: one DAC rank on every k x k conv but the first, corrected as the search's plans are."""
    names = list(costs.geometry)[1:]  # the convs DAC can take: k x k, k > 1
    return RankPlan({n: LayerChoice("dac", rank, "stacked") for n in names}, spec, costs.input_shape, correction)


def in_int8(model: torch.nn.Module, float_model: torch.nn.Module, spec: str) -> Int8Model:
    """``float_model`` with every conv in int8, calibrated on images distilled from ``model`` (the original)."""
    return quantized(float_model, RankPlan({}, spec, INPUT_SHAPE, precisions=every_conv_in_int8(float_model)), model)


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
              "original": ("*", "#1f2933"), "original int8": ("P", "#e39b21"), "uniform DAC int8": ("s:", "#e39b21"),
              "shallower sibling int8": ("d", "#e39b21")}
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
    parser.add_argument("--budgets", default="0.8,0.6,0.5,0.4,0.3", help="relative latency budgets")
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--device", default="local")
    parser.add_argument("--methods", default=None, help="passed to --methods (default: the search's own)")
    parser.add_argument("--precision", default=None, help="passed to --precision (default: the search's own)")
    parser.add_argument("--eval-data", default=str(ASSETS / "cifar10" / "cifar10_test_a.npz"))
    parser.add_argument("--out", type=Path, default=None, help="keep the run dirs here (default: a temporary dir)")
    parser.add_argument("--svg", type=Path, default=Path("latency_quality.svg"))
    parser.add_argument("--reconstruct", default=None, metavar="DURATION",
                        help="passed to --reconstruct: each search's reconstruction stage (default: none)")
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
        entries: list[dict] = []  # kind, label, file, top1, flops share, extra
        runtime = load_device(args.device).runtime

        def exported(module: torch.nn.Module, name: str) -> Path:  # the file the device's runtime loads
            return export_for(runtime, module, root / name, INPUT_SHAPE)

        original = exported(model, "original")
        for budget in budgets:
            out = root / f"{args.model}-{budget:g}x"
            best, seconds = run_search(args, f"{budget:g}x", out)
            row = best.row
            entries.append({"kind": "search", "label": f"{budget:g}x", "file": best.path,
                            "top1": file_top1(best.path, data), "flops": row.flops / base_flops,
                            "search_s": seconds, "search_ratio": row.latency_ratio,
                            "methods": method_counts(RankPlan.load(out / row.plan)),
                            "reconstructed": bool(row.plan_reconstructed)})
            if args.reconstruct:  # the closed form's own pick, beside the plan export took after the stage
                closed = closed_form_best(out)
                path = exported(decompose_model(model, out / closed.plan), f"closed-{budget:g}x")
                stage = load_run(out).info.reconstruction
                entries.append(
                    {
                        "kind": "search",
                        "label": f"{budget:g}x",
                        "file": path,
                        "top1": file_top1(path, data),
                        "flops": closed.flops / base_flops,
                        "search_s": seconds - (stage.spent_s if stage else 0),
                        "search_ratio": closed.latency_ratio,
                        "methods": method_counts(RankPlan.load(out / closed.plan)),
                        "reconstructed": False,
                    }
                )
        int8 = exported(in_int8(model, model, args.model), "original-int8")
        entries.append({"kind": "original int8", "label": "", "file": int8, "top1": file_top1(int8, data),
                        "flops": 1.0})
        for rank in UNIFORM_RANKS:
            plan = uniform_plan(costs, rank, args.model, args.correction)
            built = decompose_model(model, plan)
            path = exported(built, f"uniform-{rank}")
            share = costs.cost(plan).flops / base_flops
            entries.append({"kind": "uniform DAC", "label": f"r={rank}", "file": path, "top1": file_top1(path, data),
                            "flops": share})
            path = exported(in_int8(model, built, args.model), f"uniform-{rank}-int8")
            entries.append({"kind": "uniform DAC int8", "label": f"r={rank}", "file": path,
                            "top1": file_top1(path, data), "flops": share})
        for sibling in (d for d in sorted(UPSTREAM_TOP1) if d < depth):
            real = sibling == 20  # the one sibling whose weights are among the assets
            net = (load_model("cifar10-resnet20") if real else CifarResNet(sibling)).eval()
            share = CostModel(net, INPUT_SHAPE).baseline.flops / base_flops
            path = exported(net, f"resnet{sibling}")
            entries.append({"kind": "shallower sibling", "label": f"ResNet-{sibling}", "file": path,
                            "top1": file_top1(path, data) if real else UPSTREAM_TOP1[sibling], "flops": share,
                            "measured": real})
            if not real:  # random weights in int8 timed slower than fp32 (0.92x and 1.34x beside ResNet-20's
                continue  # real-weight 0.14x): not what the trained network would run at, so not shown
            path = exported(in_int8(net, net, "cifar10-resnet20"), f"resnet{sibling}-int8")
            entries.append({"kind": "shallower sibling int8", "label": f"ResNet-{sibling}", "file": path,
                            "top1": file_top1(path, data) if real else None, "flops": share, "measured": real})
        original_top1 = file_top1(original, data)
        ratios = paired(args.device, original, [e["file"] for e in entries])
    rows = [["original", "-", f"{original_top1:.2f}", "-", "1.000x", "-", "-"]]
    points: dict[str, list[tuple[float, float, str]]] = {"original": [(1.0, original_top1, "")]}
    for entry, ratio in zip(entries, ratios):
        kind = entry["kind"]
        top1 = entry["top1"]
        sibling = kind.startswith("shallower sibling")
        reference = UPSTREAM_TOP1[depth] if sibling and not entry.get("measured") else original_top1
        drop = "-" if top1 is None else f"{top1 - reference:+.2f}"
        what = f"dac-search --budget {entry['label']}" if kind == "search" else f"{kind} {entry['label']}"
        search = "-"
        if kind == "search":
            own = "unmeasured" if entry["search_ratio"] is None else f"{entry['search_ratio']:.3f}x"
            search = f"{own}, {entry['search_s'] / 60:.1f} min" + (" with the stage" if entry["reconstructed"] else "")
        if kind == "search":
            what += f" ({entry['methods']})"
            if args.reconstruct:
                what += ", reconstructed" if entry["reconstructed"] else ", closed form"
        source = f"exported {'.tflite, LiteRT' if runtime == 'litert' else 'ONNX, onnxruntime'}"
        if sibling and not entry.get("measured"):
            source = "upstream fp32, full test set" if top1 is not None else "random weights: latency only"
        rows.append([what, f"{entry['flops']:.1%}", "-" if top1 is None else f"{top1:.2f}", drop, f"{ratio:.3f}x",
                     search, source])
        if top1 is not None:
            points.setdefault(kind, []).append((ratio, top1, entry["label"]))
    print(f"### {args.model} under latency budgets on {args.device} (batch 1; {len(data)} images of "
          f"{Path(args.eval_data).name}; {args.trials} trials per search)\n")
    print(markdown(["what", "FLOPs kept", "top-1 %", "drop (pts)", "latency vs original (paired)",
                    "search's own measurement, search time", "top-1 from"], rows))
    print(f"\nDrop: from the original's top-1 measured here; an unmeasured sibling's from ResNet-{depth}'s upstream "
          f"{UPSTREAM_TOP1[depth]:.2f}. int8: every conv, calibrated on distilled images (no data).")
    plot(args.svg, f"{args.model}: top-1 against measured latency ({args.device}, batch 1)", points)
    print(f"\nplot: {args.svg}")


if __name__ == "__main__":
    from _record import run

    run(main, __file__)
