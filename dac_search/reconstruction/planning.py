"""A wall-time budget turned into a plan's reconstruction settings, and the files a reconstructed plan lives in.

A budget is not a setting a plan can record (the same seconds buy other steps on another machine), so a few
steps are timed first and the budget becomes a step count, which the plan records and rebuilds from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dac_search.errors import ConfigError
from dac_search.plan import RankPlan
from dac_search.proxies.apply import float_model
from dac_search.reconstruction.engine import seconds_per_step
from dac_search.reconstruction.rounding import rounding_seconds_per_step
from dac_search.reconstruction.settings import ReconstructionSettings
from dac_search.rundir import PLANS_DIR

MIN_STEPS = 25  # fewer steps a region than this, and a share of the budget is not worth a plan
MAX_STEPS = 2000  # a cap, so a long budget on a small model ends early rather than overfit the images
SAFETY = 0.8  # of a share turned into steps: timings in a probe run faster than a long fit



def default_settings(input_shape: Sequence[int], kind: str, images: int | None = None) -> ReconstructionSettings:
    """The images and batch for an input size. Small inputs: 1,024 images in batches of 64, which lifted a
    uniform rank-2 ResNet-20 from 72.0% to 78.7% (2,000 test images, 400 steps) where 256 in 32 reached 76.5%
    and 512 in 64 76.2%. Larger inputs: 256 in 32, which lifted the searched MobileNet-V2 plan at 80% FLOPs
    from 66.2% to 72.0% (500 ImageNet images, 300 steps) where 128 in 16 reached 68.6%; each 128 more at
    224x224 cost 9 minutes of distillation on 2 cores. ``images``: another count (``--reconstruct-images``).

    The int8 layers' rounding is not learned (``rounding_steps`` 0): measured on MobileNet-V2 (500 ImageNet
    images), it took the original in int8 from 83.6% to 85.4%, but the three int8 plans of a 0.8x search from
    84.6% to 83.6%, 85.0% and 85.2%, and on the ResNets it moved top-1 by -0.16 and -0.14 points (5,000
    images): within the noise, for half the float steps of a plan that has both. A plan asks for it itself."""
    small = math.prod(int(v) for v in input_shape[2:]) <= 64 * 64
    count = images or (1024 if small else 256)
    return ReconstructionSettings(images=count, batch=min(count, 64 if small else 32), inputs=kind)


def reconstructed_plan_path(plan: str) -> str:
    """``plans/trial-7.json`` -> ``plans/trial-7-reconstructed.json`` (paths relative to the run dir)."""
    stem = Path(plan).stem
    return f"{PLANS_DIR}/{stem}-reconstructed.json"


@dataclass(frozen=True)
class StepCost:
    """What one plan's reconstruction costs here: seconds per step summed over its fitted regions (0: nothing
    to fit), seconds per rounding step over its regions holding int8 weights (0: none, or rounding not
    asked), and seconds of the passes without training."""

    base: ReconstructionSettings
    step_s: float
    passes_s: float
    rounding_s: float = 0.0

    def settings(self, share_s: float) -> ReconstructionSettings | None:
        """``base`` with as many steps a region as ``share_s`` seconds allow (None: not even ``MIN_STEPS``);
        where int8 weights are rounded, as many rounding steps as float steps."""
        per_step = self.step_s + self.rounding_s
        if per_step <= 0:
            return replace(self.base, steps=0, rounding_steps=0)  # nothing to fit: the closed form it is
        passes = self.passes_s * (2 if self.step_s and self.rounding_s else 1)
        steps = min(MAX_STEPS, int((share_s * SAFETY - passes) / per_step))
        if steps < MIN_STEPS:
            return None
        return replace(self.base, steps=steps if self.step_s else 0, rounding_steps=steps if self.rounding_s else 0)


def step_cost(model: torch.nn.Module, plan: RankPlan, base: ReconstructionSettings,
              images: torch.Tensor) -> StepCost:
    """A few steps of ``plan``'s reconstruction timed, once, whatever shares are then asked of it; its int8
    weights' rounding too where ``base`` asks for it (``rounding_steps`` > 0; the stage's default does not:
    learned rounding measured within the noise of the images it was judged on, ``default_settings``)."""
    built = float_model(model, plan.in_fp32())
    step_s, passes_s = seconds_per_step(model, built, images, base)
    rounding_s = 0.0
    if base.rounding_steps and plan.int8_layers:
        rounding_s = rounding_seconds_per_step(model, built, images, plan.int8_layers, base)
    return StepCost(base, step_s, passes_s, rounding_s)


def plan_settings(model: torch.nn.Module, plan: RankPlan, base: ReconstructionSettings, share_s: float,
                  images: torch.Tensor) -> ReconstructionSettings | None:
    """``base`` with as many steps a region as ``share_s`` seconds allow (None: not even ``MIN_STEPS``)."""
    return step_cost(model, plan, base, images).settings(share_s)


def recorded_plan(path: Path) -> RankPlan | None:
    """The reconstructed plan a cut-off stage already wrote, to resume with its own settings."""
    if not path.is_file():
        return None
    plan = RankPlan.load(path)
    if plan.reconstruction is None:
        raise ConfigError(f"{path} holds no reconstruction; remove it to reconstruct that plan again")
    return plan
