"""The search space: per unit of layers, keep or one joint choice; encoded around a global trade-off.

A plan is encoded by one global ``log_lambda`` and a small integer ``shift`` per unit. For a given
lambda every unit takes the option minimising ``penalty + lambda * cost`` over the lower convex hull of
its (cost, penalty) options, which traces the best allocation under an additive model of the proxy;
the shifts then move single units one hull step cheaper or dearer, so the sampler can correct what the
additive model gets wrong. Forty layers or four hundred, the space stays searchable: most of the
signal sits in one dimension, and the per-unit dimensions are three-valued.

A unit is one layer, or a producer offered pruned together with its consumer: pruning the producer
changes the consumer's cost too, so the pair's options are priced and chosen together (every pairing of
the two layers' own hull options, plus each pruned width with the consumer dense and refitted). A pruned
producer with a factorised consumer is a valid plan, but not one the space offers: the consumer's
single-layer penalty and table entries are measured at its full width. In a chain (a bottleneck's
conv1 -> conv2 -> conv3) the first pair is taken, and its consumer is offered factorised only.

Precision is one more axis of every option: each factorisation, and the layer kept, in each precision
offered (int8 beside fp32 under a latency budget); a pruned width is offered in fp32 only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from dac_search.hull import Option, lower_hull
from dac_search.plan import LayerChoice, RankPlan
from dac_search.precision import FP32, QuantScheme

LOG_LAMBDA_RANGE = (-5.0, 3.0)


Change = tuple[str, LayerChoice | None, str]  # (layer, its replacement or None to keep it, its precision)
Changes = tuple[Change, ...]  # what an option does; () keeps the unit as it is, in fp32


def plan_of(changes: Changes, **fields: object) -> RankPlan:
    """The plan making just ``changes`` (``fields``: the plan's other settings)."""
    layers = {name: choice for name, choice, _ in changes if choice is not None}
    precisions = {name: precision for name, _, precision in changes if precision != FP32}
    return RankPlan(layers, precisions=precisions, **fields)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LayerOptions:
    """One unit's options: ``name`` is its first layer (the producer of a pair)."""

    name: str
    hull: tuple[Option, ...]  # keep first, then cheaper and cheaper; penalties non-decreasing

    def index(self, lam: float, shift: int = 0) -> int:
        """Position on the hull: the option minimising ``penalty + lam * cost``, moved ``shift`` steps."""
        best = min(range(len(self.hull)), key=lambda i: (self.hull[i].penalty + lam * self.hull[i].cost, i))
        return min(max(best + shift, 0), len(self.hull) - 1)

    def pick(self, lam: float, shift: int = 0) -> Option:
        return self.hull[self.index(lam, shift)]


class SearchSpace:
    """Unit options and the map from (log_lambda, shifts) to a plan.

    Option costs are changes from the original, as shares of its cost (negative: cheaper).
    """

    def __init__(self, layers: Sequence[LayerOptions], model: str | None, input_shape: Sequence[int],
                 correction: str | None = None, inputs: str | None = None,
                 quantization: QuantScheme | None = None, fit_images: int | None = None) -> None:
        self.layers = tuple(layers)
        self.model = model
        self.input_shape = tuple(input_shape)
        self.correction = correction
        self.inputs = inputs  # every plan's synthetic-input kind (None: auto)
        self.quantization = quantization  # every int8 plan's scheme (None: the default)
        self.fit_images = fit_images  # the images every plan's correction is fitted on (None: the default)

    @classmethod
    def build(cls, candidates: Mapping[str, Sequence[LayerChoice]], delta: Callable[[RankPlan], float],
              penalty: Callable[[str, LayerChoice | None, str], float], model: str | None, input_shape: Sequence[int],
              correction: str | None = None, pairs: Mapping[str, str] | None = None,
              inputs: str | None = None, precisions: Sequence[str] = (FP32,),
              quantization: QuantScheme | None = None, fit_images: int | None = None) -> SearchSpace:
        """``delta(plan)``: the cost change of a plan making a few changes, as a share of the original.
        ``penalty(layer, choice or None, precision)``: its single-layer proxy. ``pairs``: producer -> consumer,
        for producers offered pruned (see the module doc). ``precisions``: those every option is offered in."""
        def option(changes: Changes) -> Option:
            return Option(changes, delta(plan_of(changes, quantization=quantization)),
                          sum(penalty(name, c, p) for name, c, p in changes))

        def hull(options: Sequence[Option]) -> tuple[Option, ...]:
            return lower_hull([o for o in options if o.cost <= 0.0])

        def own(name: str, structural: bool | None = None) -> list[Option]:
            keep = Option((), 0.0, 0.0)
            kept = [option(((name, None, p),)) for p in precisions if p != FP32]
            return [keep, *kept, *(option(((name, c, p),)) for c in candidates[name] for p in precisions
                                   if (structural is None or c.structural == structural)
                                   and (p == FP32 or not c.structural))]

        pairs = pairs or {}
        grouped = {consumer: producer for producer, consumer in pairs.items() if consumer in candidates}
        grouped = {consumer: producer for consumer, producer in grouped.items() if producer not in grouped}
        units = []
        for name in candidates:
            if name in grouped:
                continue  # a consumer: in its producer's unit
            consumer = next((c for c, p in grouped.items() if p == name), None)
            if consumer is None:
                units.append(LayerOptions(name, hull(own(name))))
                continue
            # a consumer that is itself a producer (a bottleneck's middle conv) is not pruned inside the pair:
            # its own consumer, in another unit, could then be factorised at a width it was not priced at
            inner = own(consumer, False if consumer in pairs else None)
            joint = [option(a.choice + b.choice) for a in hull(own(name, False)) for b in hull(inner)]
            structural = [o for o in own(name, True)[1:] if any(c and c.structural for _, c, _ in o.choice)]
            units.append(LayerOptions(name, hull(joint + structural)))
        return cls(units, model, input_shape, correction, inputs, quantization, fit_images)

    def plan(self, log_lambda: float, shifts: Mapping[str, int] | None = None) -> RankPlan:
        lam = 10.0 ** log_lambda
        shifts = shifts or {}
        chosen: Changes = ()
        for layer in self.layers:
            chosen += layer.pick(lam, shifts.get(layer.name, 0)).choice
        return plan_of(chosen, **self.plan_fields(), quantization=self.quantization)

    def plan_fields(self) -> dict[str, object]:
        """What every plan of the search records besides its layers: enough to rebuild its model alone."""
        return {"model": self.model, "input_shape": self.input_shape, "correction": self.correction,
                "inputs": self.inputs, "fit_images": self.fit_images}

    def additive_cost(self, log_lambda: float) -> float:
        """The plan's cost as a share of the original's, as the sum of its units' changes."""
        lam = 10.0 ** log_lambda
        return 1.0 + sum(layer.pick(lam).cost for layer in self.layers)

    def log_lambda_for(self, cost_share: float, cost_of: Callable[[RankPlan], float] | None = None) -> float:
        """Bisection for the smallest trade-off whose plan costs at most ``cost_share`` (of the original)."""
        measure = (lambda log_lam: cost_of(self.plan(log_lam))) if cost_of else self.additive_cost
        low, high = LOG_LAMBDA_RANGE
        if measure(high) > cost_share:
            return high
        for _ in range(40):
            middle = (low + high) / 2
            if measure(middle) > cost_share:
                low = middle
            else:
                high = middle
        return high

    @staticmethod
    def shift_param(name: str) -> str:
        return f"shift:{name}"

    def describe(self) -> str:
        sizes = [len(layer.hull) for layer in self.layers]
        combos = sum(math.log10(s) for s in sizes if s)
        return f"{len(self.layers)} layers, {sum(sizes)} hull options, ~10^{combos:.0f} plans"
