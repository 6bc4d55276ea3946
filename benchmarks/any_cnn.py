"""Any CNN, data-free: real top-1 of a BN-free net and of MobileNet-V2 on ImageNet, with each kind of input.

    .venv/bin/python benchmarks/any_cnn.py [--models nobn,mobilenet_v2] [--targets 0.8,0.6,0.5]
        [--kinds auto,gaussian] [--rows uniform,greedy,search] [--search-trials 100] [--threads 2]
        [--fidelity 48] [--reconstruct 20m]

- ``nobn``: the VGG-style CIFAR-10 net without BatchNorm of ``assets/cifar10-nobn/`` (its real weights),
  on the 5,000 shared CIFAR-10 test images; ``auto`` inputs are class impressions there.
- ``mobilenet_v2``: torchvision's ImageNet weights (the assets file, put into torch.hub's cache if it is
  not there), on the 500 real ImageNet images of ``assets/imagenet/sample_a``; ``auto`` is distilled.

For each kind of synthetic input, every row is fitted and chosen on that kind alone (the real images
only measure): uniform (DAC on the BN-free net; the channel method on MobileNet-V2, whose 1x1 convs hold
its FLOPs and which DAC cannot take), greedy on the single-layer KL table with a refit (every
factorisation), and the search (``dac-search --device none --budget <t>%flops --inputs <kind>``, its best
plan by proxy; on MobileNet-V2 with ``--methods dac,spatial,channel,prune``: its hidden widths are where
pruning applies). Every plan is rebuilt from the plan alone by ``decompose_model``, as an export is.

Each search row also says how the search's proxy ranked the distinct plans its trials scored: Spearman's
rho against their real top-1, and the regret of its pick (the best real top-1 among the feasible plans minus
that of the plan with the best proxy).

``--reconstruct DURATION``: also the search's plans reconstructed (``dac_search.reconstruction``, the stage
``dac-search --reconstruct`` runs), each within that wall time, the images' distillation included.

``--fidelity N``: also, per model and kind, Spearman's rho between the search's whole-plan proxy (KL of
the refitted model on held-out synthetic inputs) and real top-1 over N different random plans between
30% and 90% of the FLOPs (random per-layer methods and aggressiveness, as ``proxy_fidelity.py`` makes them).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ASSETS, markdown, split  # noqa: E402
from nets import NOBN_MEAN, NOBN_STD  # noqa: E402
from proxy_fidelity import random_plan, spearman  # noqa: E402

from dac_search.allocate import FIRST_CONV, METHODS, allocate, eligible_layers, table_ranks  # noqa: E402
from dac_search.budget import parse_budget  # noqa: E402
from dac_search.cost import CostModel  # noqa: E402
from dac_search.eval_data import IMAGENET_MEAN, IMAGENET_STD, EvalData, load_eval_data, top1  # noqa: E402
from dac_search.methods import PLAN_METHODS  # noqa: E402
from dac_search.plan import RankPlan  # noqa: E402
from dac_search.proxies import cached_layer_sensitivity, default_proxy  # noqa: E402
from dac_search.proxies.apply import build_model, decompose_model  # noqa: E402
from dac_search.proxies.synthetic import AUTO, resolve_kind, synthetic_inputs  # noqa: E402
from dac_search.reconstruction.planning import default_settings, plan_settings  # noqa: E402
from dac_search.rundir import load_run  # noqa: E402
from dac_search.search.config import SearchConfig, parse_duration  # noqa: E402
from dac_search.search.controller import run_search  # noqa: E402
from dac_search.zoo import load_model  # noqa: E402
from dac_search.zoo.weights import hub_checkpoint_path  # noqa: E402


@dataclass(frozen=True)
class Case:
    """A model with real weights and the real labelled images it is measured on."""

    spec: str
    weights: str
    shape: tuple[int, int, int, int]
    data: Path
    mean: tuple[float, ...]
    std: tuple[float, ...]
    uniform_method: str
    search_methods: tuple[str, ...] | None = None  # None: the search's default under a FLOPs budget


CASES = {
    "nobn": Case(f"{Path(__file__).resolve().parent / 'nets.py'}:cifar_nobn",
                 str(ASSETS / "cifar10-nobn" / "cifar_net-d75fd60a.pth"), (1, 3, 32, 32),
                 ASSETS / "cifar10" / "cifar10_test_a.npz", NOBN_MEAN, NOBN_STD, "dac"),
    "mobilenet_v2": Case("mobilenet_v2", "IMAGENET1K_V1", (1, 3, 224, 224), ASSETS / "imagenet" / "sample_a.tsv",
                         IMAGENET_MEAN, IMAGENET_STD, "channel", PLAN_METHODS),
}


def seed_hub_cache() -> None:
    """torchvision's MobileNet-V2 file from the assets into torch.hub's cache, as a download would leave it."""
    source = ASSETS / "imagenet" / "mobilenet_v2-b0353104.pth"
    target = hub_checkpoint_path(source.name)
    if source.is_file() and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)


@dataclass(frozen=True)
class Searched:
    """The search's best plan by proxy, and how its proxy ranked the distinct plans its trials scored (Spearman
    rho against real top-1; regret: the best real top-1 among the feasible ones minus the pick's)."""

    plan: RankPlan
    fidelity: str


def search_plan(case: Case, kind: str, target: float, trials: int, model: torch.nn.Module,
                data: EvalData) -> Searched:
    with tempfile.TemporaryDirectory() as tmp:
        config = SearchConfig(model=case.spec, weights=case.weights, input_shape=case.shape,
                              budget=parse_budget(f"{target * 100:g}%flops"), device="none", trials=trials,
                              out=Path(tmp) / "run", inputs=kind, methods=case.search_methods)
        outcome = run_search(config)
        if not outcome.feasible:
            raise SystemExit(f"the search found no plan within {target:.0%} FLOPs for {case.spec}")
        best = min(outcome.pareto, key=lambda p: p.proxy)
        scored: dict[str, tuple[float, bool, RankPlan]] = {}
        for row in load_run(outcome.run_dir).trials:
            if row.complete and row.plan and row.proxy is not None:
                plan = RankPlan.load(outcome.run_dir / row.plan)
                scored.setdefault(plan.to_json(), (row.proxy, row.feasible, plan))
        real = [top1(build_model(model, p, dense=True), data) for _, _, p in scored.values()]
        proxies = [-proxy for proxy, _, _ in scored.values()]
        feasible = [(proxy, r) for (proxy, ok, _), r in zip(scored.values(), real) if ok]
        regret = max(r for _, r in feasible) - min(feasible)[1]
        fidelity = (f"rho {spearman(proxies, real):.3f}, regret {regret:.2f} pts over {len(real)} distinct plans "
                    f"({len(feasible)} feasible; real top-1 {min(real):.1f}-{max(real):.1f}%)")
        return Searched(RankPlan.load(outcome.run_dir / best.plan), fidelity)


def fidelity(name: str, case: Case, kinds: list[str], count: int, seed: int = 0) -> str:
    """Spearman rho of the held-out refit KL against real top-1, per kind of input, over ``count`` plans."""
    import random

    model = load_model(case.spec, case.weights)
    data = load_eval_data(case.data, case.mean, case.std, size=case.shape[2:])
    costs = CostModel(model, case.shape)
    layers = eligible_layers(model, costs, (FIRST_CONV,), METHODS)
    rng = random.Random(seed)
    plans: dict[str, RankPlan] = {}
    for _ in range(count * 20):
        if len(plans) == count:
            break
        methods = rng.choice([("dac",), METHODS])
        plan = replace(random_plan(model, costs, layers, rng.uniform(0.3, 0.9), methods, rng), input_shape=case.shape)
        plans.setdefault(plan.to_json(), plan)
    rows = []
    for kind in kinds:
        plan_inputs = None if kind == AUTO else kind
        proxy = default_proxy(model, case.shape, "refit", plan_inputs)
        scores, real = [], []
        for plan in plans.values():
            scores.append(-proxy.score(plan).kl)
            fitted = replace(plan, correction="refit", inputs=plan_inputs)
            real.append(top1(build_model(model, fitted, dense=True), data))
        rows.append([kind if kind != AUTO else f"auto ({resolve_kind(model, kind, case.shape)})",
                     f"{spearman(scores, real):.3f}", f"{min(real):.1f}-{max(real):.1f}"])
    return (f"**{name}**: {len(plans)} random plans; proxy = held-out KL after refit\n\n"
            + markdown(["inputs", "Spearman rho", "real top-1 range %"], rows))


def reconstructed_cell(model: torch.nn.Module, plan: RankPlan, budget_s: float, data: EvalData) -> str:
    """Top-1 of ``plan`` after the reconstruction stage would give it ``budget_s`` (steps timed here first),
    with the stage's wall time, the images' distillation included."""
    started = time.perf_counter()
    assert plan.input_shape is not None
    base = default_settings(plan.input_shape, resolve_kind(model, plan.inputs or AUTO, plan.input_shape))
    images = synthetic_inputs(model, plan.input_shape, base.inputs, base.images, base.seed)
    settings = plan_settings(model, plan, base, budget_s - (time.perf_counter() - started), images)
    if settings is None:
        return "budget too short"
    rebuilt = decompose_model(model, replace(plan, reconstruction=settings))
    seconds = time.perf_counter() - started
    return f"{top1(rebuilt, data):.2f} ({settings.steps} steps, {seconds / 60:.1f} min)"


def run_case(name: str, case: Case, targets: list[float], kinds: list[str], rows: list[str], trials: int,
             reconstruct_s: float | None = None) -> str:
    started = time.perf_counter()
    model = load_model(case.spec, case.weights)
    data: EvalData = load_eval_data(case.data, case.mean, case.std, size=case.shape[2:])
    costs = CostModel(model, case.shape)
    body: list[list[str]] = []
    notes: list[str] = []
    for kind in kinds:
        plan_inputs = None if kind == AUTO else kind
        label = f"{kind} ({resolve_kind(model, kind, case.shape)})" if kind == AUTO else kind
        proxy = default_proxy(model, case.shape, "refit", plan_inputs) if "greedy" in rows else None
        table = None
        if proxy is not None:
            layers = eligible_layers(model, costs, (FIRST_CONV,), METHODS)
            table = cached_layer_sensitivity(proxy, layers, METHODS, table_ranks(model, costs))
        for row in rows:
            cells, rebuilt = [], []
            for target in targets:
                if row == "uniform":
                    plan = allocate("uniform", model, case.shape, target, case.uniform_method)
                elif row == "greedy":
                    plan = allocate("greedy", model, case.shape, target, "mixed", table=table)
                else:
                    searched = search_plan(case, kind, target, trials, model, data)
                    plan = searched.plan
                    notes.append(f"- search at {target:.0%} FLOPs, {label}: the proxy over its trials: "
                                 f"{searched.fidelity}")
                plan = replace(plan, model=case.spec, input_shape=case.shape, correction="refit", inputs=plan_inputs)
                kept = costs.cost(plan).flops / costs.baseline.flops
                cells.append(f"{top1(build_model(model, plan, dense=True), data):.2f} ({kept:.0%})")
                if row == "search" and reconstruct_s:
                    rebuilt.append(reconstructed_cell(model, plan, reconstruct_s, data))
            what = {"uniform": f"uniform {case.uniform_method} + refit", "greedy": "greedy on KL + refit",
                    "search": f"search, {trials} trials" + (
                        f" ({','.join(case.search_methods)})" if case.search_methods else "")}[row]
            body.append([label, what, *cells])
            if rebuilt:
                body.append([label, f"the same plans reconstructed (--reconstruct {reconstruct_s / 60:g}m)", *rebuilt])
    original = top1(model, data)
    title = (f"**{name}**: original top-1 {original:.2f}% on {len(data)} images of {case.data.name}; cells: "
             f"top-1 % (FLOPs kept). {time.perf_counter() - started:.0f} s.")
    table = markdown(["inputs", "allocator", *(f"{t:.0%} FLOPs" for t in targets)], body)
    return title + "\n\n" + table + ("\n\n" + "\n".join(notes) if notes else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="nobn,mobilenet_v2", help=f"comma list of {', '.join(CASES)}")
    parser.add_argument("--targets", default="0.8,0.6,0.5", help="FLOPs kept, as fractions of the original")
    parser.add_argument("--kinds", default="auto,gaussian", help="synthetic input kinds (auto, distilled, "
                        "impressions, gaussian)")
    parser.add_argument("--rows", default="uniform,greedy,search")
    parser.add_argument("--search-trials", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reconstruct", default=None, metavar="DURATION",
                        help="also reconstruct each searched plan within this budget (a row of its own)")
    parser.add_argument("--fidelity", type=int, default=0, help="plans for the proxy's rank correlation (0: none)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seed_hub_cache()
    for name in split(args.models):
        if args.rows:
            print(run_case(name, CASES[name], [float(t) for t in split(args.targets)], split(args.kinds),
                           split(args.rows), args.search_trials,
                           parse_duration(args.reconstruct) if args.reconstruct else None))
            print()
        if args.fidelity:
            print(fidelity(name, CASES[name], split(args.kinds), args.fidelity))
            print()


if __name__ == "__main__":
    from _record import run

    run(main, __file__)
