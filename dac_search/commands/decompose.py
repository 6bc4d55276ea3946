"""``dac-search decompose``: apply one uniform rank or a plan, write the model, show what changed."""

from __future__ import annotations

import argparse
import fnmatch
from dataclasses import replace

from rich.table import Table

from dac_search.commands._common import add_model_args, console, load_from_args
from dac_search.cost import CostModel
from dac_search.decompose import DAC_VARIANTS, METHODS, PruneSite, decomposable_layers, factorize, max_rank, prune_sites
from dac_search.errors import PlanError
from dac_search.export import export_model, format_of
from dac_search.methods import STRUCTURAL
from dac_search.plan import LayerChoice, RankPlan
from dac_search.proxies.apply import decompose_model


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("decompose", help="decompose a model with one rank or a plan and write it")
    add_model_args(parser)
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--rank", type=int, help="the same rank for every decomposable layer (the paper's way)")
    how.add_argument("--plan", help="a plan JSON (dac-search/plan@2; plan@1 is read too)")
    parser.add_argument("--method", choices=METHODS, default="dac")
    parser.add_argument("--variant", choices=DAC_VARIANTS, default="grouped", help="how DAC layers are laid out")
    parser.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                        help="layers to keep with --rank (repeatable), e.g. conv1")
    parser.add_argument(
        "-o", "--output", required=True, help="output file: .onnx, .ts (TorchScript) or .pt (state dict + plan)"
    )
    parser.set_defaults(run=run)


def uniform_plan(layers: dict, rank: int, method: str, variant: str | None, model: str,
                 input_shape: tuple[int, ...], exclude: list[str]) -> RankPlan:
    """The paper's allocation: one rank for every layer not excluded."""
    chosen = {}
    for name, conv in layers.items():
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude):
            continue
        limit = max_rank(conv, method)
        if not 1 <= rank <= limit:
            raise PlanError(f"rank {rank} is out of range for layer {name!r} with method {method!r}: 1..{limit}")
        chosen[name] = LayerChoice(method, rank, variant if method == "dac" else None)
    return RankPlan(chosen, model=model, input_shape=input_shape)


def run(args: argparse.Namespace) -> int:
    fmt = format_of(args.output)
    plan = RankPlan.load(args.plan) if args.plan else None
    loaded = load_from_args(args, plan)
    model = loaded.module
    if plan is None:
        layers = decomposable_layers(model, (args.method,))  # 1x1 convs too with channel
        plan = uniform_plan(layers, args.rank, args.method, args.variant, loaded.spec, loaded.input_shape, args.exclude)
    plan = replace(plan, model=loaded.spec, input_shape=loaded.input_shape)
    decomposed = decompose_model(model, plan)
    export_model(decomposed, args.output, plan, loaded.spec, args.weights, fmt)
    console().print(layer_table(model, plan, loaded.input_shape, args.output))
    return 0


def layer_table(model, plan: RankPlan, input_shape: tuple[int, ...], output: str) -> Table:
    costs = CostModel(model, input_shape, METHODS)  # a row for every conv some method can take
    total = costs.cost(plan)
    table = Table(title=f"{plan.model or 'model'} -> {output}", show_footer=True,
                  caption=f"parameters {costs.baseline.params:,} -> {total.params:,} "
                          f"({total.params / costs.baseline.params:.0%})")
    table.add_column("layer", footer="total", no_wrap=True)
    table.add_column("shape", no_wrap=True)
    table.add_column("method")
    table.add_column("rank", justify="right")
    table.add_column("MFLOPs before", justify="right", footer=f"{costs.baseline.flops / 1e6:.2f}")
    table.add_column("MFLOPs after", justify="right", footer=f"{total.flops / 1e6:.2f}")
    table.add_column("weight error", justify="right",
                     footer=f"{total.flops / costs.baseline.flops:.0%} FLOPs")
    pruned = {n for n, c in plan.layers.items() if c.method == "prune"}
    narrowed = {site.consumer for name, site in prune_sites(model).items()
                if name in pruned and isinstance(site, PruneSite)}
    for name, geometry in costs.geometry.items():
        choice = plan.layers.get(name)
        kh, kw = geometry.kernel_size
        shape = f"{geometry.in_channels}->{geometry.out_channels} {kh}x{kw} @{geometry.in_hw[0]}x{geometry.in_hw[1]}"
        before, after = costs.layer(name), costs.layer(name, choice)
        if name in narrowed:  # its cost depends on the producer's width: counted in the total only
            method = "keep" if choice is None else choice.method
            table.add_row(name, shape, f"{method} (inputs pruned)", str(choice.rank) if choice else "",
                          f"{before.flops / 1e6:.2f}", "-", "")
            continue
        if choice is None:
            table.add_row(name, shape, "keep", "", f"{before.flops / 1e6:.2f}", f"{after.flops / 1e6:.2f}", "")
            continue
        method = choice.method + (f" ({choice.variant})" if choice.variant else "")
        error = "" if choice.method in STRUCTURAL else \
            f"{factorize(model.get_submodule(name), choice.method).relative_error(choice.rank):.3f}"
        table.add_row(name, shape, method, str(choice.rank), f"{before.flops / 1e6:.2f}",
                      f"{after.flops / 1e6:.2f}", error)
    return table
