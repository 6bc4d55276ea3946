"""The names of the factorisation methods and their variants: a leaf module, imported by plans and layers alike.

Plans validate names against this registry without importing the layers that build them, so
``plan`` and ``decompose`` depend on it and not on each other.
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


def default_variant(method: str) -> str | None:
    """The variant a plan means when it names none (the first one listed)."""
    return VARIANTS[method][0]
