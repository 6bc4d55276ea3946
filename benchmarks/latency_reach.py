"""How far down a latency budget reaches on a large model: the exported best plan, measured beside the original.

    .venv/bin/python benchmarks/latency_reach.py [--model torchvision.models:resnet50]
        [--input-shape 1,3,224,224] [--budgets 0.7,0.5,0.4] [--trials 100] [--device local] [--out DIR]

Latency only: the model is built with random weights (no download; time does not depend on the values),
so there is no top-1 here, only the proxy the search judged each plan by (its KL from the original on
held-out distilled inputs). For every budget the real command runs (``dac-search --model M --input-shape S
--budget Bx --device D``), ``dac-search export --format onnx`` writes its best plan, and every export and
uniform DAC (rank 1 and 2 on every k x k conv but the first, refit) are timed in one interleaved session
beside the original, so every ratio in the table is paired.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import markdown, method_counts, split  # noqa: E402
from latency_quality import paired, run_search, uniform_plan  # noqa: E402

from dac_search.cost import CostModel  # noqa: E402
from dac_search.export import export_onnx  # noqa: E402
from dac_search.plan import RankPlan  # noqa: E402
from dac_search.proxies.apply import decompose_model  # noqa: E402
from dac_search.shapes import parse_shape  # noqa: E402
from dac_search.zoo import load_model  # noqa: E402

UNIFORM_RANKS = (1, 2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="torchvision.models:resnet50")
    parser.add_argument("--input-shape", default="1,3,224,224")
    parser.add_argument("--budgets", default="0.7,0.5,0.4", help="relative latency budgets")
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--device", default="local")
    parser.add_argument("--methods", default=None, help="passed to --methods (default: the search's own)")
    parser.add_argument("--out", type=Path, default=None, help="keep the run dirs here (default: a temporary dir)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the uniform plans' refit")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = parse_shape(args.input_shape)
    model = load_model(args.model).eval()
    costs = CostModel(model, shape)
    base_flops = costs.baseline.flops
    rows = []
    with tempfile.TemporaryDirectory(prefix="latency-reach-") as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        original = export_onnx(model, root / "original.onnx", shape)
        models = []
        for budget in split(args.budgets):
            out = root / f"{budget}x"
            exported, seconds = run_search(args, f"{budget}x", out, "--input-shape", args.input_shape)
            row = exported.row
            own = "unmeasured" if row.latency_ratio is None else f"{row.latency_ratio:.3f}x"
            plan = RankPlan.load(out / row.plan)
            rows.append([f"dac-search --budget {budget}x ({method_counts(plan)})", f"{row.flops / base_flops:.1%}",
                         f"{row.proxy:.4f}", f"{own}, {seconds / 60:.1f} min"])
            models.append(exported.path)
        for rank in UNIFORM_RANKS:
            plan = uniform_plan(costs, rank, args.model)
            models.append(export_onnx(decompose_model(model, plan), root / f"uniform-{rank}.onnx", shape))
            rows.append([f"uniform DAC r={rank}", f"{costs.cost(plan).flops / base_flops:.1%}", "-", "-"])
        ratios = paired(args.device, original, models, shape)
    table = [[*row[:2], f"{ratio:.3f}x", *row[2:]] for row, ratio in zip(rows, ratios)]
    print(f"### {args.model} at {args.input_shape} under latency budgets on {args.device} "
          f"(random weights: latency only; {args.trials} trials per search)\n")
    print(markdown(["what", "FLOPs kept", "latency vs original (paired)", "proxy (KL)",
                    "search's own measurement, search time"], table))


if __name__ == "__main__":
    from _record import run

    run(main, __file__)
