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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from dac_search.hull import Option, lower_hull
from dac_search.plan import LayerChoice, RankPlan

LOG_LAMBDA_RANGE = (-5.0, 3.0)


Changes = tuple[tuple[str, LayerChoice], ...]  # what an option does: (layer, choice) pairs; () keeps


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
                 correction: str | None = None, inputs: str | None = None) -> None:
        self.layers = tuple(layers)
        self.model = model
        self.input_shape = tuple(input_shape)
        self.correction = correction
        self.inputs = inputs  # every plan's synthetic-input kind (None: auto)

    @classmethod
    def build(cls, candidates: Mapping[str, Sequence[LayerChoice]], delta: Callable[[Mapping[str, LayerChoice]], float],
              penalty: Callable[[str, LayerChoice], float], model: str | None, input_shape: Sequence[int],
              correction: str | None = None, pairs: Mapping[str, str] | None = None,
              inputs: str | None = None) -> SearchSpace:
        """``delta(changes)``: the cost change of the plan making just these changes, as a share of the
        original. ``pairs``: producer -> consumer, for producers offered pruned (see the module doc)."""
        def option(changes: Changes) -> Option:
            return Option(changes, delta(dict(changes)), sum(penalty(name, c) for name, c in changes))

        def hull(options: Sequence[Option]) -> tuple[Option, ...]:
            return lower_hull([o for o in options if o.cost <= 0.0])

        def own(name: str, structural: bool | None = None) -> list[Option]:
            keep = Option((), 0.0, 0.0)
            return [keep, *(option(((name, c),)) for c in candidates[name]
                            if structural is None or c.structural == structural)]

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
            units.append(LayerOptions(name, hull(joint + own(name, True)[1:])))
        return cls(units, model, input_shape, correction, inputs)

    def plan(self, log_lambda: float, shifts: Mapping[str, int] | None = None) -> RankPlan:
        lam = 10.0 ** log_lambda
        shifts = shifts or {}
        chosen = {}
        for layer in self.layers:
            chosen.update(layer.pick(lam, shifts.get(layer.name, 0)).choice)
        return RankPlan(chosen, model=self.model, input_shape=self.input_shape, correction=self.correction,
                        inputs=self.inputs)

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
