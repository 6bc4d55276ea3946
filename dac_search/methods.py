"""The names of the factorisation methods and their variants: a leaf module, imported by plans and layers alike.

Plans validate names against this registry without importing the layers that build them, so
``plan`` and ``decompose`` depend on it and not on each other.

``METHODS`` are the factorisations (a conv replaced by two); the search and the latency tables iterate
them. ``STRUCTURAL`` methods change the network's widths instead (``prune``: keep r of a conv's output
channels, slicing the BatchNorm after it and its consumer's input channels); a plan may name them
(``PLAN_METHODS``), the search offers them under a latency budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

DAC_VARIANTS = ("grouped", "stacked")

# Method -> the variants that run it; None is the only variant of a method with one implementation.
VARIANTS: Mapping[str, tuple[str | None, ...]] = MappingProxyType({
    "dac": DAC_VARIANTS,
    "spatial": (None,),
    "channel": (None,),
})
METHODS = tuple(VARIANTS)
STRUCTURAL = ("prune",)
PLAN_METHODS = METHODS + STRUCTURAL


def variants_of(method: str) -> tuple[str | None, ...]:
    """The variants a plan may name for ``method`` (a structural method has none)."""
    return VARIANTS.get(method, (None,))


def default_variant(method: str) -> str | None:
    """The variant a plan means when it names none (the first one listed)."""
    return variants_of(method)[0]
