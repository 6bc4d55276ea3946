"""Per-layer trade-off curves: the options a greedy walk or a Lagrangian trade-off can ever pick.

Shared by the greedy allocator (cost in FLOPs) and the search space (cost as a share of the model's
latency or FLOPs): both walk each layer's lower convex hull of (cost, penalty).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dac_search.plan import LayerChoice


@dataclass(frozen=True)
class Option:
    """One way to run a layer, its cost and its proxy penalty.

    ``choice``: what the option does - a ``LayerChoice`` (None keeps the original) in the greedy
    allocator; in the search space, the (layer, choice or None, precision) triples of a unit of layers
    (``()`` keeps them).
    """

    choice: LayerChoice | tuple[tuple[str, LayerChoice | None, str], ...] | None
    cost: float
    penalty: float


def lower_hull(options: Sequence[Option]) -> tuple[Option, ...]:
    """The lower convex hull of (cost, penalty), dearest first: every option some trade-off would pick."""
    ordered = sorted(options, key=lambda o: (-o.cost, o.penalty))
    hull: list[Option] = []
    for option in ordered:
        if hull and option.cost == hull[-1].cost:
            continue  # same cost, no better: the sort put the better one first
        while hull and option.penalty <= hull[-1].penalty:
            hull.pop()  # cheaper and no worse
        while len(hull) >= 2 and _above(hull[-2], hull[-1], option):
            hull.pop()
        hull.append(option)
    return tuple(hull)


def _above(a: Option, b: Option, c: Option) -> bool:
    """b lies on or above the segment a-c: walking to lower cost, the slope must keep rising."""
    return (b.penalty - a.penalty) * (a.cost - c.cost) >= (c.penalty - a.penalty) * (a.cost - b.cost)
