"""What the data-free proxy costs: one ModelProxy.score, and one distillation step; prints a markdown table.

    .venv/bin/python benchmarks/proxy_speed.py [--models cifar10-resnet56,resnet50] [--images 64,16]
        [--rank 4] [--repeats 5] [--threads 1]

The plan decomposes every eligible conv but the first with DAC at ``--rank``. torchvision models run
with random weights (the time does not depend on the values; no download needed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import markdown, split  # noqa: E402

from dac_search.allocate import allocate_uniform  # noqa: E402
from dac_search.proxies import ModelProxy  # noqa: E402
from dac_search.proxies.synthetic import _mismatch_pass  # noqa: E402
from dac_search.zoo import CIFAR_MODELS, default_input_shape, load_model  # noqa: E402


def seconds(work: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` runs after one warm-up."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def model_for(spec: str) -> torch.nn.Module:
    if spec in CIFAR_MODELS:
        return load_model(spec)
    import torchvision

    return torchvision.models.get_model(spec, weights=None).eval()


def distill_step(model: torch.nn.Module, x: torch.Tensor) -> None:
    inputs = x.clone().requires_grad_(True)
    with torch.enable_grad():
        torch.autograd.grad(_mismatch_pass(model, inputs), [inputs])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cifar10-resnet56,resnet50")
    parser.add_argument("--images", default="64,16")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for spec in split(args.models):
        model = model_for(spec)
        shape = default_input_shape(spec)
        assert shape is not None
        plan = allocate_uniform(model, shape, args.rank)
        for images in (int(v) for v in split(args.images)):
            x = torch.randn(images, *shape[1:])
            row = [spec, images]
            for proxy in (ModelProxy(model, x), ModelProxy(model, x, "refit"),
                          ModelProxy(model, x, "refit", fit_inputs=torch.randn_like(x))):
                row.append(f"{seconds(lambda: proxy.score(plan), args.repeats):.2f}")  # noqa: B023 - called at once
            row.append(f"{seconds(lambda: distill_step(model, x), max(1, args.repeats // 2)):.2f}")  # noqa: B023
            rows.append(row)
    print(f"{torch.get_num_threads()} torch thread(s); DAC rank {args.rank} on every conv but the first.\n")
    print(markdown(["model", "images", "score s", "score + refit s", "score + refit, held out s",
                    "distillation step s"], rows))


if __name__ == "__main__":
    from _record import run

    run(main, __file__)
