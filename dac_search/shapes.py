"""What an input shape may be: one rule for the command line, plan files and run dirs.

Every model dac-search handles is a 2-D conv net, so a shape is N,C,H,W. The size cap is there so a typo
(``1,3,22400,22400``) is refused in one line instead of a 60 GB allocation deep in the first forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dac_search.errors import ConfigError

MAX_INPUT_VALUES = 1 << 28  # one input tensor: 1 GiB of float32 (a batch of 16 images at 2048x2048)


def checked_shape(values: Sequence[object], where: str) -> tuple[int, ...]:
    """``values`` as an N,C,H,W shape of positive integers, or a ConfigError naming ``where``."""
    if len(values) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ConfigError(f"{where} must be four positive integers N,C,H,W, got {list(values)!r}")
    shape = tuple(int(v) for v in values)  # type: ignore[call-overload]
    if math.prod(shape) > MAX_INPUT_VALUES:
        raise ConfigError(f"{where} {','.join(map(str, shape))} is {math.prod(shape):.3g} values per input; "
                          f"at most {MAX_INPUT_VALUES:.3g} are accepted")
    return shape


def parse_shape(text: str, where: str = "--input-shape") -> tuple[int, ...]:
    """``1,3,32,32`` or ``1x3x32x32`` -> (1, 3, 32, 32)."""
    try:
        values = [int(part) for part in text.replace("x", ",").split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{where} must be integers like 1,3,224,224, got {text!r}") from None
    return checked_shape(values, where)
