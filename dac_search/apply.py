"""A plan applied to a model: the factorised layers, then the plan's correction. One plan, one model.

``decompose_model`` is what the search scored, what ``dac-search export`` writes and what a Python user
gets from the same plan file: the correction (``refit``, ``bias``) is fitted on the default synthetic
inputs of the plan's input shape, made deterministically (seed 0), so the plan alone rebuilds the model.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from dac_search.decompose import replace_layers, validate_plan
from dac_search.errors import ConfigError
from dac_search.plan import RankPlan
from dac_search.proxies.correction import (
    RefitSettings,
    assemble,
    assemble_dense,
    check_correction,
    default_inputs,
    initial_layers,
    reference,
    run_plan,
)

PlanLike = RankPlan | Mapping[str, Any] | str | os.PathLike[str]


def decompose_model(model: nn.Module, plan: PlanLike, inputs: torch.Tensor | None = None, *,
                    settings: RefitSettings | None = None, dense: bool = False) -> nn.Module:
    """The model ``plan`` names, in eval mode: a deep copy of ``model``, the original left untouched.

    ``plan``: a ``RankPlan``, its dict form or a path to its JSON. A plan with a correction needs its
    ``input_shape`` (every plan the search writes has it) to make the synthetic inputs the correction is
    fitted on; without one this raises ``ConfigError`` rather than return a model the plan does not name.
    ``inputs``: fit the correction on these instead (what a ``ModelProxy`` scored with).
    ``dense``: the same function with dense convs, to measure accuracy fast on CPU (never to deploy).
    """
    plan = RankPlan.coerce(plan)
    check_correction(plan.correction)
    if plan.correction is None or not plan.layers:
        validate_plan(model, plan)
        return assemble_dense(model, initial_layers(model, plan)) if dense else replace_layers(model, plan).eval()
    if inputs is None:
        if plan.input_shape is None:
            raise ConfigError(f"the plan asks for the {plan.correction!r} correction but has no input_shape "
                              "to make the synthetic inputs it is fitted on; add \"input_shape\" to the plan")
        inputs = default_inputs(model, plan.input_shape)
    ref = reference(model, inputs, list(plan.layers), settings)
    result = run_plan(model, copy.deepcopy(model), plan, inputs, ref, plan.correction, settings)
    return assemble_dense(model, result.layers) if dense else assemble(model, plan, result.layers)
