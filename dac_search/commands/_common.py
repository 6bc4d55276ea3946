"""Arguments and loading shared by the sub-commands (model, weights, input shape)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from dac_search.errors import ConfigError
from dac_search.plan import RankPlan
from dac_search.shapes import check_model_runs, parse_shape
from dac_search.zoo import input_shape_of, load_model

STORAGE_ENV = "DAC_SEARCH_STORAGE"  # a storage URL kept out of the command line (and so out of run.json)
RECONSTRUCT_IMAGES_HELP = ("synthetic images the reconstruction fits on (default: 1,024 for small inputs such as "
                           "CIFAR's, 256 for larger ones)")


def console() -> Console:
    """A rich console that does not squeeze tables to 80 columns when writing to a file or pipe. Markup is
    off: model specs, host names and device messages are printed as they are (``[pi4]:2222``, ``x[/y]``)."""
    out = Console(markup=False)
    return out if out.is_terminal else Console(width=140, markup=False)


@contextmanager
def step_progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on stderr (steps done of all, ETA) that appears once the first step is reported;
    nothing is drawn when stderr is not a terminal."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=True)
    task: list[int] = []

    def on_step(done: int, total: int) -> None:
        if not task:
            task.append(progress.add_task(label, total=total))
        progress.update(task[0], completed=done, total=total)

    with progress:
        yield on_step


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="cifar10-resnet20/32/44/56/110, a torchvision name, a TorchScript file, file.py:fn")
    parser.add_argument("--weights", help="a state-dict file, or for a torchvision model a weights name "
                                           "(IMAGENET1K_V1, DEFAULT), or none for random weights (latency only); "
                                           "default: the pretrained weights")
    parser.add_argument("--input-shape", help="N,C,H,W (default: what the model expects)")


@dataclass(frozen=True)
class LoadedModel:
    spec: str
    module: nn.Module
    input_shape: tuple[int, ...]


def load_from_args(args: argparse.Namespace, plan: RankPlan | None = None) -> LoadedModel:
    """The model and its input shape: --input-shape, else the plan's, else the model's default."""
    if plan is not None and plan.model and plan.model != args.model:
        raise ConfigError(f"the plan was made for model {plan.model!r}, not {args.model!r}")
    module = load_model(args.model, args.weights)
    if args.input_shape:
        shape = parse_shape(args.input_shape)
    elif plan is not None and plan.input_shape:
        shape = plan.input_shape
    else:
        shape = input_shape_of(args.model)
    check_model_runs(module, shape)
    return LoadedModel(args.model, module, tuple(shape))
