"""What an input shape may be: one rule for the command line, plan files and run dirs, and one way a shape
the model itself refuses is said.

Every model dac-search handles is a 2-D conv net, so a shape is N,C,H,W. The size cap is there so a typo
(``1,3,22400,22400``) is refused in one line instead of a 60 GB allocation deep in the first forward pass.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import nn

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


@contextlib.contextmanager
def refused_by_model(input_shape: Sequence[int]) -> Iterator[None]:
    """Around the first forward pass of the user's model: a shape it cannot run is bad input, one line."""
    try:
        yield
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"the model cannot run on input shape {','.join(map(str, input_shape))}: {detail}") from None


def check_model_runs(model: nn.Module, input_shape: Sequence[int]) -> None:
    """One forward pass of one image, for commands whose first pass would otherwise come deep in an export."""
    with refused_by_model(input_shape), torch.no_grad():
        model.eval()(torch.zeros((1, *(int(v) for v in input_shape[1:]))))
