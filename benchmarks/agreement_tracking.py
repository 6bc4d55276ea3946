"""Does the report's data-free agreement track real top-1? The front of real searches, judged both ways.

    .venv/bin/python benchmarks/agreement_tracking.py [--model cifar10-resnet56] [--budgets 0.5x,0.3x]
        [--trials 50] [--device local] [--eval-data cifar10_test_a.npz] [--out DIR]

For every budget the real command runs with ``--eval-data`` (``dac-search --model M --budget B --device D
--eval-data E``), so every Pareto point of pareto.csv holds both what the report shows without data (the
exported model's top-1 agreement with the original on held-out synthetic images, and the trial's agreement
on the scoring batch) and its real top-1. The benchmark adds each exported model's agreement with the
original on the real images. Prints one row per Pareto point (and the original in int8), then Spearman's
rho of each data-free number against real top-1 over all points, and how far the held-out disagreement
(100 - agreement) is from the real top-1 drop.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ASSETS, markdown, split  # noqa: E402
from proxy_fidelity import spearman  # noqa: E402

from dac_search.eval_data import EvalData, load_eval_data  # noqa: E402
from dac_search.proxies.apply import decompose_model  # noqa: E402
from dac_search.rundir import load_run  # noqa: E402
from dac_search.zoo import load_model  # noqa: E402

CLI = [sys.executable, "-m", "dac_search.cli"]


def real_agreement(original: torch.nn.Module, model: torch.nn.Module, data: EvalData) -> float:
    """Share (%) of the real images on which the model's top-1 class is the original's."""
    agreed = 0
    with torch.inference_mode():
        for x, _ in data.batches(256):
            agreed += int((original(x).argmax(1) == model(x).argmax(1)).sum())
    return 100.0 * agreed / len(data)


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar10-resnet56")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--input-shape", default=None)
    parser.add_argument("--budgets", default="0.5x,0.3x", help="budgets as dac-search takes them")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--device", default="local")
    parser.add_argument("--eval-data", default=str(ASSETS / "cifar10" / "cifar10_test_a.npz"))
    parser.add_argument("--out", type=Path, default=None, help="keep the run dirs here (default: a temporary dir)")
    args = parser.parse_args(argv)
    data = load_eval_data(args.eval_data)  # ImageNet's normalisation, as the CIFAR checkpoints and the search use
    original = load_model(args.model, args.weights).eval()
    rows, points = [], []
    with tempfile.TemporaryDirectory(prefix="agreement-") as tmp:
        root = args.out or Path(tmp)
        for budget in split(args.budgets):
            out = root / f"{Path(args.model).stem}-{budget}"
            command = [*CLI, "--model", args.model, "--budget", budget, "--device", args.device, "--trials",
                       str(args.trials), "--eval-data", args.eval_data, "--out", str(out)]
            command += ["--weights", args.weights] if args.weights else []
            command += ["--input-shape", args.input_shape] if args.input_shape else []
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            run = load_run(out)
            base = run.info.baseline.top1
            assert base is not None
            held_out_n = run.info.proxy.agreement_images
            for row in run.pareto or ():
                model = decompose_model(original, out / row.final_plan)  # as export writes it
                real = real_agreement(original, model, data)
                held = None if row.final_agreement is None else 100.0 * row.final_agreement
                scoring = None if row.agreement is None else 100.0 * row.agreement
                points.append((held, scoring, row.final_proxy, row.final_top1, real, base))
                rows.append((budget, row.trial, fmt(row.latency_ratio, 3), fmt(row.final_proxy, 4), fmt(scoring, 1),
                             fmt(held, 1), fmt(real, 1), fmt(row.final_top1), fmt(row.final_top1 - base)))
            for ref in run.info.references:
                rows.append((budget, ref.label, fmt(ref.latency_ratio, 3), fmt(ref.proxy, 4), "-",
                             fmt(None if ref.agreement is None else 100 * ref.agreement, 1), "-", fmt(ref.top1),
                             fmt(None if ref.top1 is None else ref.top1 - base)))
    print(f"{args.model}: the Pareto points of `dac-search --budget B --trials {args.trials} --device {args.device} "
          f"--eval-data` ({len(data)} labelled images), held-out agreement on {held_out_n} synthetic images.\n")
    print(markdown(["budget", "trial", "latency ratio", "proxy", "agrees, scoring batch %", "agrees, held out %",
                    "agrees, real images %", "real top-1 %", "top-1 drop (pts)"], rows))
    held, scoring, proxy, top1, real, base = (list(column) for column in zip(*points))
    gap = [abs((100 - h) - (b - t)) for h, t, b in zip(held, top1, base)]
    print()
    print(markdown(["data-free number", "Spearman rho with real top-1", f"over {len(points)} points"], [
        ("agreement, held-out synthetic", f"{spearman(held, top1):.3f}", ""),
        ("agreement, scoring batch", f"{spearman(scoring, top1):.3f}", ""),
        ("proxy (lower is better: rho of -proxy)", f"{spearman([-p for p in proxy], top1):.3f}", ""),
        ("agreement, real images (not data-free)", f"{spearman(real, top1):.3f}", ""),
    ]))
    print(f"\n|(100 - held-out agreement) - real top-1 drop|: median {statistics.median(gap):.1f} points, "
          f"largest {max(gap):.1f}.")


if __name__ == "__main__":
    from _record import run

    run(main, __file__)
