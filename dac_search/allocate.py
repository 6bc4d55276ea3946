"""Baseline rank allocators (no search), each returning a ``RankPlan``.

- ``uniform``: one rank for every layer (the DAC paper's way); spatial and channel, whose ranks mean
  different things on layers of different widths, take one share of each layer's maximum rank.
- ``energy``: per layer, the smallest rank keeping a share of the singular-value energy (Network
  Decoupling, Guo et al. 2018).
- ``greedy``: from full rank downwards, always take the step with the smallest proxy increase per
  FLOP saved, until the FLOPs target is met (it stops within one layer's step of the target).

``method="mixed"`` lets each layer use whichever of dac / spatial / channel is cheapest at the same
proxy level: the same weight error for uniform, the same kept energy for energy, and any point of the
layer's combined (FLOPs, proxy) curve for greedy. The first conv (it reads the image) is kept out by
default, like the paper. A layer is eligible when one of the methods can take it: with ``channel`` (or
``mixed``) that includes 1x1 convs, which only ``channel`` factorises (at the ranks cheaper than the conv).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence

from torch import nn

from dac_search.cost import CostModel
from dac_search.decompose import METHODS, STRUCTURAL, can_decompose, decomposable_layers, max_rank, prune_ranks
from dac_search.errors import ConfigError
from dac_search.hull import Option, lower_hull
from dac_search.methods import default_variant
from dac_search.plan import LayerChoice, RankPlan
from dac_search.proxies.layer import layer_error_table, weight_errors
from dac_search.proxies.model import ModelProxy, layer_sensitivity

KINDS = ("uniform", "energy", "greedy")
ALLOCATION_METHODS = (*METHODS, "mixed")
LAYER_PROXIES = ("weight", "bn-weight")
FIRST_CONV = "first conv"  # in ``skip``: the first decomposable conv in execution order
RANK_POINTS = 8  # ranks per layer a model-proxy table measures for spatial and channel (DAC: all)

Table = Mapping[tuple[str, str, int], float]
ProxyArg = str | ModelProxy | Table | None


def _methods(method: str) -> tuple[str, ...]:
    if method == "mixed":
        return METHODS
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(ALLOCATION_METHODS)}")
    return (method,)


def _choice(method: str, rank: int) -> LayerChoice:
    return LayerChoice(method, rank, default_variant(method))


def eligible_layers(model: nn.Module, costs: CostModel, skip: Sequence[str],
                    methods: Sequence[str] = ("dac",)) -> list[str]:
    """Layers one of ``methods`` can take, in execution order, minus ``skip`` (names, or ``FIRST_CONV``:
    the first conv any method can take, whichever methods are asked for)."""
    order = list(costs.traced)
    skipped = set(skip)
    if FIRST_CONV in skipped and order:
        skipped.add(order[0])
    unknown = skipped - set(order) - {FIRST_CONV}
    if unknown:
        raise ConfigError(f"cannot skip {sorted(unknown)}: not decomposable layers of this model")
    wanted = set(decomposable_layers(model, methods))
    if any(method in STRUCTURAL for method in methods):
        wanted |= costs.producers()
    return [name for name in order if name in wanted and name not in skipped]


def candidate_ranks(costs: CostModel, name: str, method: str, limit: int, points: int | None = None) -> list[int]:
    """Ranks worth considering: cheaper than the original conv; all of them, or ``points`` spread evenly."""
    original = costs.layer(name).flops
    cheaper = [r for r in range(1, limit + 1) if costs.layer(name, _choice(method, r)).flops < original]
    if points is None or len(cheaper) <= points:
        return cheaper
    picks = {cheaper[round(i * (len(cheaper) - 1) / (points - 1))] for i in range(points)}
    return sorted(picks)


def table_ranks(model: nn.Module, costs: CostModel) -> Callable[[str, str], list[int]]:
    """The ranks a single-layer table holds, for greedy and the search alike: every cheaper DAC rank,
    ``RANK_POINTS`` cheaper spatial / channel ones spread evenly; none for a method that cannot take
    the layer (``max_rank`` 0: DAC on a 1x1)."""
    def ranks(name: str, method: str) -> list[int]:
        if method in STRUCTURAL:  # a producer's kept widths: the grid of prune_ranks
            if name not in costs.producers():
                return []
            removable = costs.sites()[name].removable  # rank 0: the branch removed
            return [0] * removable + prune_ranks(costs.traced[name].out_channels)
        limit = max_rank(model.get_submodule(name), method)
        return candidate_ranks(costs, name, method, limit, None if method == "dac" else RANK_POINTS)
    return ranks


def table_choices(model: nn.Module, costs: CostModel, name: str, methods: Sequence[str]) -> list[LayerChoice]:
    """The (method, rank) choices of ``table_ranks`` for one layer, DAC in its grouped layout."""
    ranks = table_ranks(model, costs)
    return [_choice(method, rank) for method in methods for rank in ranks(name, method)]


def _plan(input_shape: Sequence[int], choices: Mapping[str, LayerChoice], correction: str | None = None) -> RankPlan:
    return RankPlan(dict(choices), None, tuple(input_shape), correction)


def _cheapest(costs: CostModel, name: str, options: Sequence[LayerChoice]) -> LayerChoice:
    return min(options, key=lambda c: (costs.layer(name, c).flops, c.method, c.rank))


# --- uniform -------------------------------------------------------------------------------------

def _uniform_rank(rank: int | float, limit: int) -> int:
    """An int is a rank (clipped to the layer); a float in (0, 1] a share of the layer's maximum rank."""
    if isinstance(rank, float):
        return max(1, min(limit, math.ceil(rank * limit - 1e-9)))
    return max(1, min(limit, rank))


def allocate_uniform(model: nn.Module, input_shape: Sequence[int], rank: int | float, method: str = "dac", *,
                     skip: Sequence[str] = (FIRST_CONV,)) -> RankPlan:
    """The same rank everywhere (an int), or the same share of each layer's maximum rank (a float).

    ``mixed``: per layer DAC can take, the cheapest method whose relative weight error is at most DAC's
    at that rank.
    Every eligible layer is decomposed, even where that rank costs more than the original (as in the paper).
    """
    return _uniform(model, CostModel(model, input_shape), rank, method, skip)


def _uniform(model: nn.Module, costs: CostModel, rank: int | float, method: str, skip: Sequence[str]) -> RankPlan:
    if isinstance(rank, bool) or not isinstance(rank, (int, float)) or rank <= 0 or (isinstance(rank, float)
                                                                                      and rank > 1):
        raise ConfigError(f"uniform rank must be a positive int or a share in (0, 1], got {rank!r}")
    methods = _methods(method)
    choices: dict[str, LayerChoice] = {}
    # mixed matches DAC's weight error at the rank: a layer DAC cannot take has no level to match
    for name in eligible_layers(model, costs, skip, ("dac",) if method == "mixed" else methods):
        conv = model.get_submodule(name)
        if method != "mixed":
            choices[name] = _choice(method, _uniform_rank(rank, max_rank(conv, method)))
            continue
        level = float(weight_errors(conv, "dac")[_uniform_rank(rank, max_rank(conv, "dac"))])
        choices[name] = _cheapest(costs, name, _within(conv, methods, lambda e: e <= level + 1e-12))  # noqa: B023 - called at once
    return _plan(costs.input_shape, choices)


def _within(conv: nn.Conv2d, methods: Sequence[str], ok: Callable[[float], bool]) -> list[LayerChoice]:
    """For each method that can take ``conv``, its smallest rank whose relative weight error passes ``ok``."""
    found = []
    for method in (m for m in methods if can_decompose(conv, m)):
        errors = weight_errors(conv, method)
        rank = next((r for r in range(1, len(errors)) if ok(float(errors[r]))), len(errors) - 1)
        found.append(_choice(method, rank))
    return found


# --- energy --------------------------------------------------------------------------------------

def allocate_energy(model: nn.Module, input_shape: Sequence[int], energy: float = 0.9, method: str = "dac", *,
                    skip: Sequence[str] = (FIRST_CONV,)) -> RankPlan:
    """Per layer, the smallest rank keeping ``energy`` of the squared singular values (1 - error^2).

    ``mixed``: the cheapest method reaching that energy. A layer whose rank would cost more than the
    original conv is kept as it is.
    """
    return _energy(model, CostModel(model, input_shape), energy, method, skip)


def _energy(model: nn.Module, costs: CostModel, energy: float, method: str, skip: Sequence[str]) -> RankPlan:
    if not 0.0 <= energy <= 1.0:
        raise ConfigError(f"energy must be in [0, 1], got {energy}")
    methods = _methods(method)
    threshold = math.sqrt(max(0.0, 1.0 - energy))
    choices: dict[str, LayerChoice] = {}
    for name in eligible_layers(model, costs, skip, methods):
        conv = model.get_submodule(name)
        best = _cheapest(costs, name, _within(conv, methods, lambda e: e <= threshold + 1e-12))
        if costs.layer(name, best).flops < costs.layer(name).flops:
            choices[name] = best
    return _plan(costs.input_shape, choices)


# --- greedy --------------------------------------------------------------------------------------

def proxy_table(model: nn.Module, input_shape: Sequence[int], layers: Sequence[str], methods: Sequence[str],
                proxy: ProxyArg, costs: CostModel) -> Table:
    """(layer, method, rank) -> penalty: from a layer proxy by name, a ModelProxy, or a given table."""
    if proxy is None:
        proxy = "bn-weight"
    if isinstance(proxy, str):
        if proxy not in LAYER_PROXIES:
            raise ConfigError(f"unknown proxy {proxy!r}; choose one of {', '.join(LAYER_PROXIES)} or a ModelProxy")
        return layer_error_table(model, input_shape, methods, weighted=proxy == "bn-weight", layers=layers)
    if isinstance(proxy, ModelProxy):
        return layer_sensitivity(proxy, layers, methods, table_ranks(model, costs))
    return proxy


def layer_hulls(costs: CostModel, layers: Sequence[str], methods: Sequence[str],
                table: Table) -> dict[str, tuple[Option, ...]]:
    """Per layer, keep plus every tabulated cheaper option, reduced to its lower hull."""
    hulls = {}
    for name in layers:
        keep = Option(None, costs.layer(name).flops, 0.0)
        options = [keep]
        for (layer, method, rank), penalty in table.items():
            if layer == name and method in methods:
                choice = _choice(method, rank)
                flops = costs.layer(name, choice).flops
                if flops < keep.cost:
                    options.append(Option(choice, flops, float(penalty)))
        hulls[name] = lower_hull(options)
    return hulls


def greedy_walk(hulls: Mapping[str, Sequence[Option]], baseline_flops: int, target_flops: float) -> dict[str, Option]:
    """Step the layer with the smallest penalty increase per FLOP saved until FLOPs <= target."""
    position = {name: 0 for name in hulls}
    total = baseline_flops
    heap: list[tuple[float, int, str]] = []

    def push(name: str, order: int) -> None:
        hull, i = hulls[name], position[name]
        if i + 1 < len(hull):
            saved = hull[i].cost - hull[i + 1].cost
            heapq.heappush(heap, ((hull[i + 1].penalty - hull[i].penalty) / saved, order, name))

    for order, name in enumerate(hulls):
        push(name, order)
    order = len(hulls)
    while total > target_flops and heap:
        _, _, name = heapq.heappop(heap)
        hull, i = hulls[name], position[name]
        total -= hull[i].cost - hull[i + 1].cost
        position[name] = i + 1
        order += 1
        push(name, order)
    refill(hulls, position, total, target_flops)
    return {name: hulls[name][i] for name, i in position.items()}


def refill(hulls: Mapping[str, Sequence[Option]], position: dict[str, int], total: float, target_flops: float) -> None:
    """Spend the FLOPs the last step left under the target: undo the steps that fit, best penalty per FLOP first.

    The last step of a walk can overshoot by a whole hull step (a layer jumping from rank 5 to 3);
    stepping some other layers back up within the slack buys accuracy for free. ``position`` is updated.
    """
    while True:
        best: tuple[float, str] | None = None
        for name, i in position.items():
            if i == 0:
                continue
            hull = hulls[name]
            extra = hull[i - 1].cost - hull[i].cost
            if total + extra <= target_flops:
                gain = (hull[i].penalty - hull[i - 1].penalty) / extra
                if best is None or gain > best[0]:
                    best = (gain, name)
        if best is None:
            return
        name = best[1]
        total += hulls[name][position[name] - 1].cost - hulls[name][position[name]].cost
        position[name] -= 1


def lazy_walk(hulls: Mapping[str, Sequence[Option]], baseline_flops: int, target_flops: float,
              measure: Callable[[Mapping[str, Option]], float]) -> dict[str, Option]:
    """``greedy_walk`` with each step's penalty increase re-measured on the whole current plan.

    Lazy greedy (Minoux 1978): a step's stale ratio is a lower bound if increases only grow, so only
    the step at the top of the heap is re-measured; it is taken once it stays on top while fresh.
    """
    position = {name: 0 for name in hulls}
    total, current, version, order = baseline_flops, 0.0, 0, 0
    heap: list[tuple[float, int, str, int, float]] = []  # ratio, order, layer, version measured at, penalty

    def push_stale(name: str) -> None:
        nonlocal order
        hull, i = hulls[name], position[name]
        if i + 1 < len(hull):
            order += 1
            ratio = (hull[i + 1].penalty - hull[i].penalty) / (hull[i].cost - hull[i + 1].cost)
            heapq.heappush(heap, (ratio, order, name, -1, 0.0))

    def picked(moved: str | None = None) -> dict[str, Option]:
        return {n: hulls[n][i + (n == moved)] for n, i in position.items()}

    for name in hulls:
        push_stale(name)
    while total > target_flops and heap:
        _, _, name, measured_at, penalty = heapq.heappop(heap)
        hull, i = hulls[name], position[name]
        saved = hull[i].cost - hull[i + 1].cost
        if measured_at == version:  # fresh and still the best: take it
            position[name], total, current, version = i + 1, total - saved, penalty, version + 1
            push_stale(name)
            continue
        penalty = measure(picked(name))
        order += 1
        heapq.heappush(heap, ((penalty - current) / saved, order, name, version, penalty))
    return picked()


def allocate_greedy(model: nn.Module, input_shape: Sequence[int], flops_fraction: float, method: str = "dac",
                    proxy: ProxyArg = None, *, skip: Sequence[str] = (FIRST_CONV,), lazy: bool = False,
                    table: Table | None = None) -> RankPlan:
    """Greedy to ``flops_fraction`` of the whole model's FLOPs on marginal proxy increase per FLOP saved.

    ``proxy``: ``"weight"`` or ``"bn-weight"`` (layer proxies; default ``"bn-weight"``), a ``ModelProxy``
    (its single-layer KL table, measured here; the plan then carries its correction), or a ready
    (layer, method, rank) -> penalty table, e.g. from ``layer_sensitivity``. Penalties add up across
    layers; walking each layer's lower hull, the result stops within one layer's step of the target.
    ``lazy`` (ModelProxy only): re-measure steps on the whole plan (interactions, sequential correction
    included) instead of adding single-layer penalties; a forward pass per measured step. ``table``: a
    ready single-layer table for the ModelProxy (skips measuring it).
    """
    if not 0.0 < flops_fraction <= 1.0:
        raise ConfigError(f"flops_fraction must be in (0, 1], got {flops_fraction}")
    if lazy and not isinstance(proxy, ModelProxy):
        raise ConfigError("a lazy greedy re-measures plans: it needs a ModelProxy")
    methods = _methods(method)
    costs = CostModel(model, input_shape)
    layers = eligible_layers(model, costs, skip, methods)
    if table is None:
        table = proxy_table(model, input_shape, layers, methods, proxy, costs)
    hulls = layer_hulls(costs, layers, methods, table)
    target = flops_fraction * costs.baseline.flops
    correction = proxy.correction if isinstance(proxy, ModelProxy) else None
    if lazy:
        assert isinstance(proxy, ModelProxy)

        def measure(options: Mapping[str, Option]) -> float:
            return proxy.score(_plan(input_shape, _choices(options), correction)).kl
        picked = lazy_walk(hulls, costs.baseline.flops, target, measure)
    else:
        picked = greedy_walk(hulls, costs.baseline.flops, target)
    return _plan(input_shape, _choices(picked), correction)


def _choices(options: Mapping[str, Option]) -> dict[str, LayerChoice]:
    return {name: option.choice for name, option in options.items() if option.choice is not None}


# --- one entry point ----------------------------------------------------------------------------

def _bisect(make: Callable[[float], RankPlan], costs: CostModel, target: float, low: float, high: float,
            steps: int = 40) -> RankPlan:
    """The plan of the largest setting in [low, high] whose FLOPs stay within ``target`` (FLOPs grow with it)."""
    best = make(low)
    for _ in range(steps):
        middle = (low + high) / 2
        plan = make(middle)
        if costs.cost(plan).flops <= target:
            best, low = plan, middle
        else:
            high = middle
    return best


def allocate(kind: str, model: nn.Module, input_shape: Sequence[int], flops_fraction: float, method: str = "dac",
             proxy: ProxyArg = None, *, skip: Sequence[str] = (FIRST_CONV,), lazy: bool = False,
             table: Table | None = None) -> RankPlan:
    """A plan of ``kind`` (uniform | energy | greedy) keeping at most ``flops_fraction`` of the FLOPs.

    Uniform and energy take the largest rank / energy within the target (uniform DAC ranks are
    integers, so it may land well under); greedy stops within one layer's step of it (``proxy``,
    ``lazy`` and ``table`` as in ``allocate_greedy``; ignored by the others).
    """
    if not 0.0 < flops_fraction <= 1.0:
        raise ConfigError(f"flops_fraction must be in (0, 1], got {flops_fraction}")
    _methods(method)
    if kind == "greedy":
        return allocate_greedy(model, input_shape, flops_fraction, method, proxy, skip=skip, lazy=lazy, table=table)
    costs = CostModel(model, input_shape)
    target = flops_fraction * costs.baseline.flops
    if kind == "energy":
        return _bisect(lambda e: _energy(model, costs, e, method, skip), costs, target, 0.0, 1.0)
    if kind == "uniform":
        if method in ("dac", "mixed"):  # integer ranks: the largest that fits
            top = max(max_rank(conv, "dac") for conv in decomposable_layers(model, ("dac",)).values())
            fitting = [plan for plan in (_uniform(model, costs, r, method, skip) for r in range(1, top + 1))
                       if costs.cost(plan).flops <= target]
            return fitting[-1] if fitting else _uniform(model, costs, 1, method, skip)
        return _bisect(lambda share: _uniform(model, costs, max(share, 1e-6), method, skip), costs, target,
                       1e-6, 1.0)
    raise ConfigError(f"unknown allocator {kind!r}; choose one of {', '.join(KINDS)}")
