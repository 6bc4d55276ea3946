"""The search space: per layer, keep or one (method, rank, variant); encoded around a global trade-off.

A plan is encoded by one global ``log_lambda`` and a small integer ``shift`` per layer. For a given
lambda every layer takes the option minimising ``penalty + lambda * cost`` over the lower convex hull of
its (cost, penalty) options, which traces the best allocation under an additive model of the proxy;
the shifts then move single layers one hull step cheaper or dearer, so the sampler can correct what the
additive model gets wrong. Forty layers or four hundred, the space stays searchable: most of the
signal sits in one dimension, and the per-layer dimensions are three-valued.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from dac_search.hull import Option, lower_hull
from dac_search.plan import LayerChoice, RankPlan

LOG_LAMBDA_RANGE = (-5.0, 3.0)


@dataclass(frozen=True)
class LayerOptions:
    name: str
    hull: tuple[Option, ...]  # keep first, then cheaper and cheaper; penalties non-decreasing

    def index(self, lam: float, shift: int = 0) -> int:
        """Position on the hull: the option minimising ``penalty + lam * cost``, moved ``shift`` steps."""
        best = min(range(len(self.hull)), key=lambda i: (self.hull[i].penalty + lam * self.hull[i].cost, i))
        return min(max(best + shift, 0), len(self.hull) - 1)

    def pick(self, lam: float, shift: int = 0) -> Option:
        return self.hull[self.index(lam, shift)]


class SearchSpace:
    """Layer options and the map from (log_lambda, shifts) to a plan."""

    def __init__(self, layers: Sequence[LayerOptions], model: str | None, input_shape: Sequence[int],
                 correction: str | None = None) -> None:
        self.layers = tuple(layers)
        self.model = model
        self.input_shape = tuple(input_shape)
        self.correction = correction

    @classmethod
    def build(cls, candidates: Mapping[str, Sequence[LayerChoice]], cost: Callable[[str, LayerChoice | None], float],
              penalty: Callable[[str, LayerChoice], float], model: str | None, input_shape: Sequence[int],
              correction: str | None = None) -> SearchSpace:
        layers = []
        for name, choices in candidates.items():
            keep = Option(None, cost(name, None), 0.0)
            options = [keep, *(Option(c, cost(name, c), penalty(name, c)) for c in choices)]
            layers.append(LayerOptions(name, lower_hull([o for o in options if o.cost <= keep.cost])))
        return cls(layers, model, input_shape, correction)

    def plan(self, log_lambda: float, shifts: Mapping[str, int] | None = None) -> RankPlan:
        lam = 10.0 ** log_lambda
        shifts = shifts or {}
        chosen = {}
        for layer in self.layers:
            option = layer.pick(lam, shifts.get(layer.name, 0))
            if option.choice is not None:
                chosen[layer.name] = option.choice
        return RankPlan(chosen, model=self.model, input_shape=self.input_shape, correction=self.correction)

    def additive_cost(self, log_lambda: float) -> float:
        lam = 10.0 ** log_lambda
        return sum(layer.pick(lam).cost for layer in self.layers)

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
