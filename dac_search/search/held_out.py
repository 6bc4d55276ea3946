"""The front judged as a user meets it: each plan's model as ``dac-search export`` writes it, its top-1
agreement with the original on held-out synthetic images and, with ``--eval-data``, its real top-1.

The agreement a trial records is taken on the scoring batch by the trial's quick model (8 images at 224x224:
steps of 12.5%), the images the search also selects on. The held-out images come from a seed no fit, score,
calibration or reconstruction uses, ``SCALE`` times the scoring batch by default (128 at 32x32 and 16 at
224x224 with a correction), and each exported model is built once for both numbers: a percentage a person
reads in the morning, with no image of theirs seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dac_search.eval_data import EvalData, top1
from dac_search.progress import OnProgress
from dac_search.proxies.apply import decompose_model
from dac_search.proxies.outputs import compare, distributions_of
from dac_search.proxies.synthetic import synthetic_inputs
from dac_search.rundir import TrialRow

HELD_OUT_SEED = 3  # fit 0, scoring 1, reconstruction 2: these images are none of theirs
BATCH = 64
# Held-out images per scored image. Against real top-1 (benchmarks/agreement_tracking.py, ResNet-56) 4x ranked
# plans at rho 0.991 and the scoring batch itself at 0.983; 2x halves the distillation 4x costs (150 s cold on
# ResNet-56 here) and still moves in steps under 1% at 32x32.
SCALE = 2


@dataclass(frozen=True)
class HeldOut:
    """Held-out synthetic inputs, with the original's outputs on them computed once."""

    inputs: torch.Tensor
    reference: tuple[Any, ...]  # the original's output on each batch of ``BATCH``
    distributions: dict[str, int]

    @classmethod
    def of(cls, model: nn.Module, input_shape: Sequence[int], kind: str, n: int, seed: int = 0,
           on_progress: OnProgress | None = None) -> HeldOut:
        inputs = synthetic_inputs(model, input_shape, kind, n, seed + HELD_OUT_SEED, on_progress=on_progress)
        with torch.no_grad():
            reference = tuple(model(batch) for batch in inputs.split(BATCH))
        return cls(inputs, reference, distributions_of(model, reference[0]))

    @property
    def n(self) -> int:
        return int(self.inputs.shape[0])

    def agreement(self, model: nn.Module) -> float | None:
        """Share of the held-out images on which ``model``'s argmax is the original's (None: no distribution
        output to take an argmax of)."""
        agreed, counted = 0.0, 0
        with torch.no_grad():
            for batch, reference in zip(self.inputs.split(BATCH), self.reference):
                share = compare(reference, model(batch), self.distributions).agreement
                if share is None:
                    return None
                agreed += share * batch.shape[0]
                counted += batch.shape[0]
        return agreed / counted


def worth_judging(front: Sequence[TrialRow], data: EvalData | None, limit: int) -> list[TrialRow]:
    """The points whose models are built and judged: every one with labelled data (the user asked for top-1,
    and the pick goes by it); without, the ``limit`` feasible ones of lowest proxy, the plans a user picks
    among. A model build is not free: an int8 plan is quantized by ONNX Runtime, a corrected one refitted."""
    if data is not None:
        return list(front)
    feasible = [row for row in front if row.feasible and row.proxy is not None]
    return sorted(feasible, key=lambda row: (row.proxy, row.trial))[:limit]


def judged_front(original: nn.Module, run_dir: Path, front: Sequence[TrialRow], held_out: HeldOut | None,
                 data: EvalData | None, limit: int, on_progress: OnProgress | None = None) -> list[TrialRow]:
    """The front with the exported models of the points ``worth_judging`` judged: held-out agreement, and real
    top-1 with data; the other points as they were."""
    chosen = worth_judging(front, data, limit)
    judged = {}
    for done, row in enumerate(chosen):
        if on_progress is not None:
            on_progress(done, len(chosen))
        assert row.plan is not None
        model = decompose_model(original, run_dir / row.plan)
        judged[row.trial] = replace(row, agreement_held_out=None if held_out is None else held_out.agreement(model),
                                    top1=None if data is None else top1(model, data))
    if on_progress is not None:
        on_progress(len(chosen), len(chosen))
    return [judged.get(row.trial, row) for row in front]
