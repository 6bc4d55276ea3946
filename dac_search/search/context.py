"""Everything a search needs before its first trial: model, costs, device tables, proxy, space.

The expensive parts (latency tables, layer sensitivities) are cached on disk, so a resumed search
starts in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from dac_search.allocate import FIRST_CONV, eligible_layers, table_choices
from dac_search.budget import Budget
from dac_search.cost import CostModel
from dac_search.errors import ConfigError
from dac_search.eval_data import EvalData, load_eval_data
from dac_search.latency import LatencyTable, LatencyTableBuilder, table_settings
from dac_search.methods import variants_of
from dac_search.plan import LayerChoice, RankPlan
from dac_search.precision import FP32, INT8, INT8_RUNTIMES, QuantScheme
from dac_search.progress import Progress, Say
from dac_search.proxies import ModelProxy, ProxyScore, cached_layer_sensitivity, default_proxy, synthetic_inputs
from dac_search.proxies.correction import fit_of
from dac_search.proxies.sensitivity import cached_int8_sensitivity
from dac_search.proxies.synthetic import resolve_kind
from dac_search.reconstruction.regions import check_reconstructable
from dac_search.search.config import SearchConfig
from dac_search.search.final import Judge
from dac_search.search.held_out import SCALE as HELD_OUT_SCALE
from dac_search.search.refine import LATENCY_MARGINS
from dac_search.search.space import LOG_LAMBDA_RANGE, SearchSpace
from dac_search.search.stages import DEVICE, HOST, StageClock, beside
from dac_search.shapes import refused_by_model
from dac_search.zoo import input_shape_of, load_model
from profilers.devices import load_device
from profilers.pool import DevicePool


@dataclass(frozen=True)
class PlanScore:
    """What the search minimises for a plan, and the two measurements it combines.

    ``value`` is the geometric mean of the whole-plan KL and the sum of single-layer KLs. Each alone ranks
    plans by real accuracy less well than both together (``benchmarks/proxy_fidelity.py``): the sum
    misses interactions, and the whole-plan KL on a few dozen distilled images is noisy, so the minimum of
    many such scores is partly the minimum of the noise.
    """

    value: float
    kl: float
    additive: float
    agreement: float | None


@dataclass(frozen=True)
class Penalties:
    """The single-layer KL of replacing a layer by a choice (None: kept) in a precision: the choice's own KL
    plus, in int8, what the layer alone in int8 adds beyond the int8 ops every int8 plan has. A cache that
    grows, not state: a choice outside the space (the paper's uniform ranks) comes from the same disk cache as
    the rest, so a resumed search does not measure it again."""

    proxy: ModelProxy
    quantization: QuantScheme
    choices: dict[tuple[str, str, int], float]  # single-layer KL of every (layer, method, rank)
    int8: dict[str, float] = field(default_factory=dict)  # KL with the layer in int8 ("": with no conv in int8)

    def __call__(self, name: str, choice: LayerChoice | None, precision: str = FP32) -> float:
        total = 0.0
        if choice is not None:
            key = (name, choice.method, choice.rank)
            if key not in self.choices:
                self.choices.update(cached_layer_sensitivity(self.proxy, [name], [choice.method], [choice.rank]))
            total += self.choices[key]
        if precision == INT8:
            total += max(self._int8(name) - self._int8(""), 0.0)
        return total

    def prefetch(self, plans: Iterable[RankPlan]) -> None:
        """Measure at once the single-layer KLs of choices outside the space (the uniform baseline's, 300 on
        ResNet-56): one replayed prefix per layer and one cache write, not one of each per choice."""
        missing: dict[tuple[str, str], set[int]] = {}
        for plan in plans:
            for name, choice in plan.layers.items():
                if (name, choice.method, choice.rank) not in self.choices:
                    missing.setdefault((name, choice.method), set()).add(choice.rank)
        for method in sorted({m for _, m in missing}):
            layers = [name for name, m in missing if m == method]
            self.choices.update(cached_layer_sensitivity(
                self.proxy, layers, [method], lambda name, m: sorted(missing[(name, m)])))

    def additive(self, plan: RankPlan) -> float:
        """The sum of the single-layer KLs of every layer the plan changes (replaced, pruned or in int8), plus,
        once, the KL of the int8 ops around the convs when any layer is in int8: on MobileNet-V2 no layer
        alone adds measurably to those, and without them every int8-only plan scored 0."""
        changed = {*plan.layers, *plan.precisions}
        in_int8 = any(plan.precision_of(name) == INT8 for name in changed)
        return (sum(self(name, plan.layers.get(name), plan.precision_of(name)) for name in changed)
                + (self._int8("") if in_int8 else 0.0))

    def _int8(self, name: str) -> float:
        if name not in self.int8:
            self.int8.update(cached_int8_sensitivity(self.proxy, [name] if name else [], self.quantization))
        return self.int8[name]


@dataclass(frozen=True)
class SearchContext:
    """Everything the trials share, fixed once set up: the budget is resolved on the table's original.

    """

    config: SearchConfig
    model: nn.Module
    input_shape: tuple[int, ...]
    costs: CostModel
    budget: Budget  # resolved: absolute
    proxy: ModelProxy
    space: SearchSpace
    pool: DevicePool | None
    table: LatencyTable | None
    device_info: dict | None
    penalty: Penalties
    precisions: tuple[str, ...] = (FP32,)  # offered: the config's, less int8 where the device has no int8 path
    clock: StageClock = field(default_factory=StageClock)  # this session's stages, host and device apart

    @property
    def agreement_images(self) -> int:
        """Held-out synthetic images the front is judged on (0: none); by default ``held_out.SCALE`` times the
        scoring batch."""
        asked = self.config.agreement_images
        return HELD_OUT_SCALE * int(self.proxy.inputs.shape[0]) if asked is None else asked

    @property
    def remote(self) -> bool:
        """The device is another machine (``DeviceConfig.remote``): its timings may run while the host works."""
        return self.pool is not None and self.pool.config.remote

    @property
    def quantization(self) -> QuantScheme:
        """Every int8 plan's scheme."""
        return self.penalty.quantization

    def score(self, plan: RankPlan) -> PlanScore:
        return self._combined(plan, self.proxy.score(plan))

    def score_model(self, plan: RankPlan, model: nn.Module) -> PlanScore:
        """``score`` of a model with ``plan``'s layers but other weights (reconstructed): its own whole-plan KL,
        the plan's single-layer sum, so the two stay comparable."""
        return self._combined(plan, self.proxy.score_model(model))

    def _combined(self, plan: RankPlan, whole: ProxyScore) -> PlanScore:
        additive = self.penalty.additive(plan)
        return PlanScore(math.sqrt(max(whole.kl, 0.0) * max(additive, 0.0)), whole.kl, additive, whole.agreement)

    def latency(self, plan: RankPlan) -> float | None:
        return None if self.table is None else self.table.predict(plan)

    def objective_cost(self, plan: RankPlan) -> float:
        if self.budget.objective == "latency_ms":
            assert self.table is not None
            return self.table.predict(plan)
        return float(self.costs.cost(plan).flops)

    def budget_cost(self, plan: RankPlan) -> float:
        if self.budget.kind == "latency":
            return self.objective_cost(plan)
        cost = self.costs.cost(plan)
        return float(cost.flops if self.budget.kind == "flops" else cost.params)

    @property
    def margins(self) -> tuple[float, ...]:
        """The shares of the budget the warm starts and the refinement leave free, in turn: a latency table's
        predictions err by a few percent (``refine.LATENCY_MARGINS``); FLOPs and parameters are exact."""
        return LATENCY_MARGINS if self.budget.kind == "latency" else (0.0,)

    def slack(self, plan: RankPlan) -> float:
        """How far the plan is over the budget as the tables price it (exact for FLOPs, predicted for
        latency), as a share of the budget: <= 0 fits."""
        return self.budget.slack(self.budget_cost(plan)) / self.budget.value

    def baseline_cost(self) -> float:
        """The original's cost in the budget's unit."""
        cost = _baseline(self.budget.kind, self.costs, self.table)
        assert cost is not None, "a latency budget has a table"
        return float(cost)

    def share(self, plan: RankPlan) -> float:
        """The plan's cost as a share of the original's, in the budget's unit."""
        return self.budget_cost(plan) / self.baseline_cost()

    @property
    def judge(self) -> Judge:
        return Judge(self.budget, self.table.original_ms if self.table is not None else None)

    @property
    def space_range(self) -> tuple[float, float]:
        return LOG_LAMBDA_RANGE

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def candidates(model: nn.Module, costs: CostModel, methods: tuple[str, ...]) -> dict[str, list[LayerChoice]]:
    """Per layer, every (method, rank) the search may pick (variants chosen later): the options the
    greedy allocator walks, so the search starts where the best baseline ends, and the pruned widths
    of every producer when ``prune`` is offered. The first conv stays."""
    layers = eligible_layers(model, costs, (FIRST_CONV,), methods)  # 1x1 convs too where channel is offered
    return {name: table_choices(model, costs, name, methods) for name in layers}


def worth_scoring(name: str, choices: Sequence[LayerChoice], change: Callable[[RankPlan], float]) -> list[LayerChoice]:
    """The choices a trade-off could pick, known before any proxy is measured: cheaper than the layer kept,
    and cheaper than every higher rank of the same method (a higher rank loses less; one that also runs
    faster leaves the lower rank nothing, as long as the proxy does not rise with rank). On a CPU runtime
    many factorised ranks run slower than the dense conv or than a higher rank: on ResNet-20 (local,
    onnxruntime) this leaves 269 of 465 single-layer proxies to measure, the slow part of the set-up."""
    costs = {c: change(RankPlan({name: c})) for c in choices}
    kept = []
    for method in dict.fromkeys(c.method for c in choices):
        cheapest = 0.0  # the layer kept
        for choice in sorted((c for c in choices if c.method == method), key=lambda c: -c.rank):
            if costs[choice] < cheapest:
                kept.append(choice)
                cheapest = costs[choice]
    return sorted(kept, key=choices.index)


@dataclass(frozen=True)
class OpenDevice:
    """A device's pool, the builder of its per-layer table, and what it reported of itself."""

    pool: DevicePool
    builder: LatencyTableBuilder
    info: dict


@dataclass(frozen=True)
class SearchInputs:
    """What the user gave, loaded and checked before the run dir is touched: the model runs on the input
    shape once (``CostModel``), and ``--eval-data`` is read, so a typo costs seconds, not a night."""

    model: nn.Module
    input_shape: tuple[int, ...]
    costs: CostModel
    eval_data: EvalData | None


def load_inputs(config: SearchConfig) -> SearchInputs:
    model = load_model(config.model, config.weights)
    shape = tuple(config.input_shape or input_shape_of(config.model))
    with refused_by_model(shape):
        costs = CostModel(model, shape)  # the first forward pass
    data = None
    if config.eval_data:
        norm = {k: v for k, v in (("mean", config.mean), ("std", config.std)) if v is not None}
        data = load_eval_data(config.eval_data, size=tuple(shape[2:]), **norm)
    if config.reconstruct_s:
        check_reconstructable(model)  # before the search, not after a night of it
    return SearchInputs(model, shape, costs, data)


def build_context(config: SearchConfig, inputs: SearchInputs, say: Say, warn: Say,
                  interval_s: float = 0.5) -> SearchContext:
    """Costs, device table, proxy, space and the resolved budget: the search's set-up, in that order
    (the device first, so a bad or unreachable one fails before minutes of distillation). A remote device's
    table is timed while the host distils (``stages.beside``). Each long step shows its count and ETA every
    ``interval_s``; each stage's seconds go to the context's ``clock``."""
    def progress(label: str) -> Progress:
        return Progress(say, label, interval_s)

    clock = StageClock()
    model, shape, costs = inputs.model, inputs.input_shape, inputs.costs
    cands = candidates(model, costs, config.methods)
    if not cands:
        raise ConfigError(f"model {config.model!r} has no conv a factorisation can help")
    precisions = _precisions(config, warn)
    if INT8 in precisions:  # the input conv stays as it is, but may run in int8
        cands = {next(iter(costs.geometry)): [], **cands}
    device = _open_device(config, say, warn) if config.has_device else None

    def time_table() -> LatencyTable | None:
        if device is None:
            return None
        with clock.stage("latency table", DEVICE):
            return _table(device, model, shape, cands, precisions, progress)

    def distil() -> ModelProxy:
        with clock.stage("distillation", HOST):
            return _proxy(config, model, shape, say, progress)

    table, proxy = beside(time_table, distil, overlap=device is not None and device.pool.config.remote)
    if table is not None:
        cands = {n: [_fastest(table, n, c) for c in cs] for n, cs in cands.items()}
    budget = config.budget.resolve(_baseline(config.budget.kind, costs, table))
    change = _change_share(budget, costs, table)
    cands = {name: worth_scoring(name, choices, change) for name, choices in cands.items()}

    # KL of every single-layer change the space offers (cached on disk, shared with the benchmarks)
    def offered(name: str, method: str) -> list[int]:
        return [c.rank for c in cands[name] if c.method == method]

    scheme = QuantScheme()
    with clock.stage("single-layer proxies", HOST):
        changes = cached_layer_sensitivity(proxy, [n for n, cs in cands.items() if cs], config.methods, offered,
                                           progress("measuring the proxy of single-layer changes"))
        int8 = cached_int8_sensitivity(proxy, list(cands), scheme, progress("measuring the proxy of each layer in int8")
                                       ) if INT8 in precisions else {}
    penalty = Penalties(proxy, scheme, changes, int8)
    # every plan names what its model is fitted on, resolved now: a later change of a default leaves it as it is
    inputs = resolve_kind(model, config.inputs, shape) if config.correction else config.plan_inputs
    space = SearchSpace.build(cands, change, penalty, config.model, shape, config.correction,
                              _pairs(costs, cands), inputs, precisions, scheme if INT8 in precisions else None,
                              fit_of(shape, config.fit_images)[0] if config.correction else None)
    ctx = SearchContext(config, model, shape, costs, budget, proxy, space, device and device.pool, table,
                        device and device.info, penalty, precisions, clock)
    if device is None:
        return ctx
    # Layers alone miss fusion and memory traffic, and cached timings are from another session: re-anchor
    # on the original measured now, and fit the correction on whole models like those the search will
    # compare (shares are ratios of table timings: the re-anchoring leaves them as they are).
    say("calibrating the latency table on whole models")
    assert table is not None
    plans = _calibration_plans(space, budget.value / ctx.baseline_cost(), ctx.share)
    with clock.stage("latency table calibration", DEVICE):
        table, _ = device.builder.calibrate(table, model, plans)
    return replace(ctx, table=table, budget=config.budget.resolve(_baseline(config.budget.kind, costs, table)))


def _baseline(kind: str, costs: CostModel, table: LatencyTable | None) -> float | None:
    """The original's cost in a budget's unit (its latency only with a table)."""
    return {"latency": table.original_ms if table else None,
            "flops": costs.baseline.flops, "params": costs.baseline.params}[kind]


def _precisions(config: SearchConfig, warn: Say) -> tuple[str, ...]:
    """The config's precisions, less int8 on a device whose runtime dac-search writes no int8 model for."""
    precisions = tuple(config.precisions)
    if INT8 not in precisions or not config.has_device:
        return precisions
    runtime = load_device(config.device).runtime
    if runtime in INT8_RUNTIMES:
        return precisions
    warn(f"device {config.device!r} runs {runtime}, which has no int8 path in dac-search: searching fp32 layers only")
    return tuple(p for p in precisions if p != INT8)


def _open_device(config: SearchConfig, say: Say, warn: Say) -> OpenDevice:
    device = load_device(config.device)
    pool = DevicePool(device, warn)
    info = {"name": device.name, "runtime": device.runtime, **pool.primary.info()}
    say(f"building the latency table on {device.name}")
    return OpenDevice(pool, LatencyTableBuilder(pool.primary, settings=table_settings(device.measure)), info)


def _table(device: OpenDevice, model: nn.Module, shape: tuple[int, ...], cands: dict[str, list[LayerChoice]],
           precisions: tuple[str, ...], progress: Callable[[str], Progress]) -> LatencyTable:
    table_cands = {n: [v for c in cs for v in _variants(c)] for n, cs in cands.items()}
    return device.builder.build(model, shape, candidates=lambda name, conv: table_cands.get(name, []),
                                precisions=precisions,
                                on_progress=progress(f"timing layers and candidates on {device.info['name']}"))


def _proxy(config: SearchConfig, model: nn.Module, shape: tuple[int, ...], say: Say,
           progress: Callable[[str], Progress]) -> ModelProxy:
    torch.manual_seed(config.seed)
    kind = resolve_kind(model, config.inputs, shape)
    if config.correction:
        # Fitted on the default batch (a plan's own model is fitted on FIT_SCALE times as many, once), and
        # scored on a second distilled batch: a refit scored where it was fitted flatters high ranks.
        label = f"making the {kind} inputs the correction is fitted on and scored on"
        say(label)
        return default_proxy(model, shape, config.correction, config.plan_inputs, progress(label))
    label = f"making {config.proxy_images} {kind} inputs"
    say(label)
    inputs = synthetic_inputs(model, shape, kind=config.inputs, n=config.proxy_images, seed=config.seed,
                              on_progress=progress(label))
    return ModelProxy(model, inputs)


def _change_share(budget: Budget, costs: CostModel, table: LatencyTable | None) -> Callable[[RankPlan], float]:
    """The cost change of a plan of a few changes, as a share of the original, in the search's objective
    (a pruned producer's change includes its consumer's)."""
    if budget.objective == "latency_ms":
        assert table is not None
        return lambda plan: table.predict_raw(plan) / table.original_ms - 1.0
    return lambda plan: costs.cost(plan).flops / costs.baseline.flops - 1.0


def _pairs(costs: CostModel, cands: Mapping[str, list[LayerChoice]]) -> dict[str, str]:
    """Producer -> consumer, for every layer offered pruned."""
    sites = costs.sites() if any(c.structural for cs in cands.values() for c in cs) else {}
    return {name: sites[name].consumer for name, cs in cands.items() if any(c.structural for c in cs)}


def _calibration_plans(space: SearchSpace, target: float, share_of: Callable[[RankPlan], float]) -> list[RankPlan]:
    """The additive optimum at the budget, 15% above it and 15% and 30% below (where the search's plans
    will be), and every unit at its cheapest option: the correction's scale and offset are fitted on
    them. Not every layer at its dearest: such a plan can run slower than the original (1.56x on
    ResNet-20), far from any plan worth having, and would pull the fit its way."""
    plans = [space.plan(space.log_lambda_for(target * f, share_of)) for f in (1.15, 1.0, 0.85, 0.7)]
    return [*plans, space.plan(LOG_LAMBDA_RANGE[1])]


def _variants(choice: LayerChoice) -> list[LayerChoice]:
    return [LayerChoice(choice.method, choice.rank, v) for v in variants_of(choice.method)]


def _fastest(table: LatencyTable, name: str, choice: LayerChoice) -> LayerChoice:
    variant = table.fastest_variant(name, choice.method, choice.rank)
    return LayerChoice(choice.method, choice.rank, variant)
