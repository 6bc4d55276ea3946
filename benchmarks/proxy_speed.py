"""What the data-free proxy costs: one ModelProxy.score, one distillation step, and one entry of the table of
each layer alone in int8; prints markdown tables.

    .venv/bin/python benchmarks/proxy_speed.py [--models cifar10-resnet56,resnet50] [--images 64,16]
        [--rank 4] [--repeats 5] [--threads 1] [--int8-layers 8]

The plan decomposes every eligible conv but the first with DAC at ``--rank``. torchvision models run
with random weights (the time does not depend on the values; no download needed). The int8 table is timed
both ways on the first ``--int8-layers`` convs: each layer's model quantized on its own, and every layer's
from one export and calibration of the float model (``int8_variants``, what the search does); their
outputs are checked equal.
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
from dac_search.int8_model import Int8Model, int8_variants  # noqa: E402
from dac_search.precision import QuantScheme  # noqa: E402
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


def int8_table_seconds(model: torch.nn.Module, shape: tuple[int, ...], images: int, count: int) -> list[str]:
    """Seconds per entry of the int8 table of ``count`` layers, made alone and made as variants."""
    convs = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)][:count]
    generator = torch.Generator().manual_seed(0)
    calibration = torch.randn(images, *shape[1:], generator=generator)
    x = torch.randn(images, *shape[1:], generator=generator)
    start = time.perf_counter()
    with torch.no_grad():
        alone = [Int8Model(model, frozenset({name}), QuantScheme(), calibration, shape)(x) for name in convs]
    alone_s = (time.perf_counter() - start) / len(convs)
    start = time.perf_counter()
    with int8_variants(model, QuantScheme(), calibration, shape) as variant, torch.no_grad():
        shared = [variant(frozenset({name}))(x) for name in convs]
    shared_s = (time.perf_counter() - start) / len(convs)
    assert all(torch.equal(a, b) for a, b in zip(alone, shared, strict=True)), "the two ways gave other models"
    return [f"{alone_s:.2f}", f"{shared_s:.2f}", f"{alone_s / shared_s:.1f}x"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cifar10-resnet56,resnet50")
    parser.add_argument("--images", default="64,16")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--int8-layers", type=int, default=8)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, int8_rows = [], []
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
            if args.int8_layers:
                int8_rows.append([spec, images, *int8_table_seconds(model, shape, images, args.int8_layers)])
    print(f"{torch.get_num_threads()} torch thread(s); DAC rank {args.rank} on every conv but the first.\n")
    print(markdown(["model", "images", "score s", "score + refit s", "score + refit, held out s",
                    "distillation step s"], rows))
    if int8_rows:
        print(f"\nThe table of each layer alone in int8 (first {args.int8_layers} convs, calibrated on as many random "
              "images as scored), seconds per layer:\n")
        print(markdown(["model", "images", "quantized alone s", "one calibration, shared s", "speed-up"], int8_rows))


if __name__ == "__main__":
    from _record import run

    run(main, __file__)
