"""The int8 model of a plan: its float model quantized as the plan's scheme says, calibrated on synthetic images.

The calibration images come from the distillation cache (``synthetic_inputs``), by the scheme's count, seed
and kind alone: never from ``--eval-data`` or any real image. By default they are the batch the search fits
its corrections on (seed 0), apart from the held-out batch it scores plans on, so they cost nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dac_search.errors import ConfigError
from dac_search.int8_model import CalibratedFloat, Int8Model
from dac_search.plan import RankPlan
from dac_search.precision import INT8, QuantScheme
from dac_search.proxies.correction import DEFAULT_INPUTS, default_input_count
from dac_search.proxies.synthetic import synthetic_inputs


def calibration_inputs(original: nn.Module, input_shape: Sequence[int], scheme: QuantScheme,
                       plan_inputs: str | None = None) -> torch.Tensor:
    """The synthetic images ``scheme`` calibrates on, distilled from the *original* model (cached on disk)."""
    count = scheme.images or default_input_count(input_shape)
    kind = scheme.inputs or plan_inputs or DEFAULT_INPUTS["kind"]
    return synthetic_inputs(original, input_shape, kind, count, scheme.seed)


def quantized(float_model: nn.Module, plan: RankPlan, original: nn.Module,
              calibration: torch.Tensor | None = None, calibrated: CalibratedFloat | None = None) -> Int8Model:
    """``float_model`` (the plan's layers, in fp32) with the plan's int8 layers quantized.
    ``calibration``: the scheme's images when the caller has them already; ``calibrated``: the float model's
    export, and its ranges, when the caller keeps them."""
    if plan.quantization is None or plan.input_shape is None:
        raise ConfigError("a plan with int8 layers needs its input_shape to make the images it is calibrated on; "
                          "add \"input_shape\" to the plan")
    if calibration is None:
        calibration = calibration_inputs(original, plan.input_shape, plan.quantization, plan.inputs)
    return Int8Model(float_model, plan.int8_layers, plan.quantization, calibration, plan.input_shape,
                     calibrated=calibrated)


def every_conv_in_int8(model: nn.Module) -> dict[str, str]:
    """A plan's precisions that put every conv of ``model`` in int8: the original's own data-free int8, the
    reference every plan is compared with (and uniform DAC's, applied to its factorised model)."""
    return {name: INT8 for name, module in model.named_modules() if isinstance(module, nn.Conv2d)}
