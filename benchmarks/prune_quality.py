"""Real top-1 of inner-width pruning (every block's conv1) with and without the refit; prints a markdown table.

    .venv/bin/python benchmarks/prune_quality.py [--model cifar10-resnet56] [--weights PATH]
        [--eval-data cifar10_test_a.npz] [--fractions 1,0.75,0.5] [--limit 5000] [--threads 1]
        [--device local]

With ``--device``, every plan and the shallower CIFAR ResNets (random weights: latency only; their top-1
is the upstream figure on the full test set) are timed in one interleaved session beside the original,
and the table gains that paired ratio: what a user could do instead, measured on the same footing.

Each plan keeps the same fraction of the hidden channels of every block (``layerX.Y.conv1``, the convs
whose output goes only through BatchNorm and ReLU into the block's second conv) and is rebuilt from the
plan alone with ``decompose_model``: ``refit`` refits each pruned block's second conv on the default
distilled inputs (data-free); the labelled images only measure the result. Weights come from torch.hub's
cache unless ``--weights`` names a state-dict file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ASSETS, INPUT_SHAPE, markdown, split  # noqa: E402

from dac_search.cost import CostModel  # noqa: E402
from dac_search.decompose import prune_sites  # noqa: E402
from dac_search.eval_data import load_eval_data, top1  # noqa: E402
from dac_search.latency import measure_beside  # noqa: E402
from dac_search.plan import LayerChoice, RankPlan  # noqa: E402
from dac_search.proxies.apply import decompose_model  # noqa: E402
from dac_search.zoo import load_model  # noqa: E402
from dac_search.zoo.cifar_resnet import CifarResNet  # noqa: E402
from profilers import load_device  # noqa: E402
from profilers.pool import DevicePool  # noqa: E402

CORRECTIONS = (None, "refit")
# Upstream top-1 on the full CIFAR-10 test set (github.com/akamaster/pytorch_resnet_cifar10 README).
UPSTREAM_TOP1 = {20: 91.73, 32: 92.63, 44: 93.10, 56: 93.39, 110: 93.68}


def block_conv1_plan(model: torch.nn.Module, fraction: float, correction: str | None, spec: str) -> RankPlan:
    """Every prunable ``...conv1`` kept at ``fraction`` of its output channels (at least one)."""
    layers = {name: LayerChoice("prune", max(1, round(model.get_submodule(name).out_channels * fraction)))
              for name, site in prune_sites(model).items() if not isinstance(site, str) and name.endswith(".conv1")}
    return RankPlan(layers, spec, INPUT_SHAPE, correction)


def fractions(text: str) -> tuple[float, ...]:
    """``1,0.75,0.5`` -> (1.0, 0.75, 0.5); each in (0, 1]."""
    try:
        values = tuple(float(part) for part in split(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions like 1,0.75,0.5, got {text!r}") from None
    if not values or not all(0 < value <= 1 for value in values):
        raise argparse.ArgumentTypeError(f"every fraction must be in (0, 1], got {text!r}")
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar10-resnet56", help="a CIFAR ResNet (cifar10-resnet20/32/44/56/110)")
    parser.add_argument("--weights", default=None, help="state-dict file (default: torch.hub's cache)")
    parser.add_argument("--eval-data", default=str(ASSETS / "cifar10" / "cifar10_test_a.npz"),
                        help="labelled images: an .npz (x uint8 NHWC, y) or class folders")
    parser.add_argument("--fractions", type=fractions, default=(1.0, 0.75, 0.5),
                        help="hidden channels kept, as fractions (default 1,0.75,0.5)")
    parser.add_argument("--limit", type=int, default=None, help="images to use (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default=None, help="also time every plan beside the original on this device")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.model, args.weights).eval()
    data = load_eval_data(args.eval_data, size=INPUT_SHAPE[2:], limit=args.limit)
    costs = CostModel(model, INPUT_SHAPE)
    rows: list[list[object]] = [["original", "-", "-", "100.0%", f"{top1(model, data):.2f}", "-"]]
    timed: list[torch.nn.Module] = [model]
    for fraction in args.fractions:
        for correction in CORRECTIONS:
            plan = block_conv1_plan(model, fraction, correction, args.model)
            start = time.perf_counter()
            pruned = decompose_model(model, plan)
            seconds = time.perf_counter() - start
            flops = costs.cost(plan).flops / costs.baseline.flops
            rows.append([f"{fraction:.0%} of conv1's channels", correction or "none", len(plan.layers),
                         f"{flops:.1%}", f"{top1(pruned, data):.2f}", f"{seconds:.1f}"])
            timed.append(pruned)
    columns = ["plan", "correction", "layers pruned", "FLOPs kept", "top-1 %", "build s"]
    if args.device:
        depth = len(model.layer1) * 6 + 2
        siblings = [d for d in UPSTREAM_TOP1 if d < depth]
        for sibling in siblings:
            flops = CostModel(CifarResNet(sibling), INPUT_SHAPE).baseline.flops / costs.baseline.flops
            rows.append([f"ResNet-{sibling}, trained (upstream)", "-", "-", f"{flops:.1%}",
                         f"{UPSTREAM_TOP1[sibling]:.2f}", "-"])
            timed.append(CifarResNet(sibling).eval())
        ratios = _paired_ratios(args.device, timed)
        rows = [[*row, f"{ratio:.3f}x"] for row, ratio in zip(rows, ratios)]
        columns.append(f"latency vs original ({args.device}, paired)")
    print(f"### {args.model}: inner-width pruning of every block's conv1 ({len(data)} images of {args.eval_data})\n")
    print(markdown(columns, rows))


def _paired_ratios(device: str, models: list[torch.nn.Module]) -> list[float]:
    """Each model's median latency over the original's (``models[0]``), timed in one interleaved session."""
    pool = DevicePool(load_device(device), lambda message: print(message, file=sys.stderr))
    try:
        return [1.0, *(pair.ratio for pair in measure_beside(pool, models[0], models[1:], INPUT_SHAPE))]
    finally:
        pool.close()


if __name__ == "__main__":
    from _record import run

    run(main, __file__)
