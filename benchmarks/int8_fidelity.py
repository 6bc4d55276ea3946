"""How well the search's proxy ranks plans that mix fp32 and int8 layers the way real accuracy does.

    .venv/bin/python benchmarks/int8_fidelity.py [--model cifar10-resnet20] [--plans 30] [--low 0.5]
        [--high 0.95] [--seed 0] [--correction stream] [--scoring both]

Random plans between ``--low`` and ``--high`` of the FLOPs kept (per-layer aggressiveness and method random,
as ``proxy_fidelity.py`` makes them), each in three precisions: every layer fp32, every conv int8, and a random
half of the convs int8. Each is scored as the search scores it (geometric mean of the held-out whole-plan KL,
the int8 model scored as ``--scoring`` says, and the sum of single-layer KLs, int8 cost included), and its
model is built as ``dac-search export`` builds it and judged on the 5,000 shared CIFAR-10 test images.

Prints Spearman's rho between the proxy's goodness and real top-1, per precision mix and over all, and the
regret of the proxy's pick: how much real top-1 the plan it ranks first loses against the best plan of the
set. With ``--scoring both`` (the default) int8 plans are scored on ONNX Runtime's file and on its
simulation, side by side on the same plans, with the seconds each took.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import INPUT_SHAPE, markdown, top1  # noqa: E402
from proxy_fidelity import random_plan, spearman  # noqa: E402

from dac_search.allocate import FIRST_CONV, METHODS, eligible_layers  # noqa: E402
from dac_search.cost import CostModel  # noqa: E402
from dac_search.plan import RankPlan  # noqa: E402
from dac_search.precision import INT8, QuantScheme  # noqa: E402
from dac_search.proxies import default_proxy  # noqa: E402
from dac_search.proxies.apply import decompose_model  # noqa: E402
from dac_search.proxies.model import INT8_SCORINGS  # noqa: E402
from dac_search.search.context import Penalties  # noqa: E402
from dac_search.zoo import load_model  # noqa: E402

MIXES = ("fp32", "int8", "half int8")


def with_precision(plan: RankPlan, convs: list[str], mix: str, rng: random.Random) -> RankPlan:
    if mix == "fp32":
        return plan
    chosen = convs if mix == "int8" else rng.sample(convs, len(convs) // 2)
    return RankPlan(plan.layers, plan.model, plan.input_shape, plan.correction,
                    precisions={name: INT8 for name in chosen})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar10-resnet20")
    parser.add_argument("--plans", type=int, default=30, help="float plans; each is scored in three precision mixes")
    parser.add_argument("--low", type=float, default=0.5)
    parser.add_argument("--high", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--correction", default="stream")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--scoring", default="both", choices=("both", *INT8_SCORINGS),
                        help="how the proxy scores int8 plans (both: side by side, on the same plans)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    model = load_model(args.model).eval()
    costs = CostModel(model, INPUT_SHAPE)
    layers = eligible_layers(model, costs, (FIRST_CONV,))
    convs = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    scorings = [s for s in INT8_SCORINGS if args.scoring in ("both", s)]
    proxies = {}
    for scoring in scorings:
        proxy = default_proxy(model, INPUT_SHAPE, args.correction)
        proxy.int8_scoring = scoring
        proxies[scoring] = (proxy, Penalties(proxy, QuantScheme(), {}))
    rows = []  # (mix, {scoring: proxy goodness}, real top-1)
    seconds = dict.fromkeys(scorings, 0.0)
    for i in range(args.plans):
        methods = rng.choice([("dac",), METHODS])
        base = random_plan(model, costs, layers, rng.uniform(args.low, args.high), methods, rng)
        base = RankPlan(base.layers, args.model, INPUT_SHAPE, args.correction)
        for mix in MIXES:
            plan = with_precision(base, convs, mix, rng)
            goodness = {}
            for scoring, (proxy, penalty) in proxies.items():
                start = time.perf_counter()
                whole = proxy.score(plan).kl
                additive = penalty.additive(plan)
                if mix != "fp32":
                    seconds[scoring] += time.perf_counter() - start
                goodness[scoring] = -math.sqrt(max(whole, 0.0) * max(additive, 0.0))
            rows.append((mix, goodness, top1(decompose_model(model, plan))))
            print(f"plan {i} {mix}: proxy {goodness}, top-1 {rows[-1][2]:.2f}", file=sys.stderr)
    table = []
    for mix in (*MIXES, "all"):
        chosen = [r for r in rows if mix in ("all", r[0])]
        real = [r[2] for r in chosen]
        row = [mix, str(len(chosen))]
        for scoring in scorings:
            goodness = [r[1][scoring] for r in chosen]
            pick = max(range(len(chosen)), key=goodness.__getitem__)
            row += [f"{spearman(goodness, real):.3f}", f"{max(real) - real[pick]:.2f}"]
        table.append([*row, f"{min(real):.2f}–{max(real):.2f}"])
    print(f"### Proxy fidelity with int8 layers: {args.model}, {args.correction}, plans at {args.low:.0%}–"
          f"{args.high:.0%} FLOPs, top-1 on 5,000 CIFAR-10 test images\n")
    header = ["precision mix", "plans"]
    for scoring in scorings:
        header += [f"Spearman ρ ({scoring})", f"regret of the proxy's pick, pts ({scoring})"]
    print(markdown([*header, "top-1 range %"], table))
    int8_plans = sum(1 for r in rows if r[0] != "fp32")
    print("\nscoring seconds per plan with int8 layers (whole-plan score, single-layer int8 table included): "
          + ", ".join(f"{scoring} {seconds[scoring] / int8_plans:.2f}" for scoring in scorings))


if __name__ == "__main__":
    from _record import run

    run(main, __file__)
