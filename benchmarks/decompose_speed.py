"""Decompose every eligible layer of torchvision resnet50 at every rank, SVD included; print a markdown table.

    .venv/bin/python benchmarks/decompose_speed.py [--model resnet50] [--repeats 3]

Random weights (no download needed): the time does not depend on the values.
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

from dac_search.decompose import decomposable_layers, decompose_conv, factorize, max_rank
from dac_search.decompose import factors as factors_module


def one_pass(model: torch.nn.Module, method: str, variant: str | None) -> tuple[float, float, int]:
    factors_module.clear_cache()  # pay for every SVD again
    layers = decomposable_layers(model, (method,))  # the 1x1 convs with channel only
    start = time.perf_counter()
    for conv in layers.values():
        factorize(conv, method)
    svd = time.perf_counter() - start
    built = 0
    for conv in layers.values():
        for rank in range(1, max_rank(conv, method) + 1):
            decompose_conv(conv, rank, method, variant)
            built += 1
    return svd, time.perf_counter() - start, built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    print(f"{args.model}: {len(decomposable_layers(model))} decomposable layers, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| method | variant | layers x ranks built | SVD s (best) | total s (best) |")
    print("|---|---|---:|---:|---:|")
    for method, variant in (("dac", "grouped"), ("dac", "stacked"), ("spatial", None), ("channel", None)):
        runs = [one_pass(model, method, variant) for _ in range(args.repeats)]
        svd, total, built = min(runs, key=lambda run: run[1])
        print(f"| {method} | {variant or '-'} | {built} | {svd:.3f} | {total:.3f} |")


if __name__ == "__main__":
    from _record import run

    run(main, __file__)
