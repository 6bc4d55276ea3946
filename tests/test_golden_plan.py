"""A plan file stored with the outputs its model gave when it was written must rebuild those outputs.

Every setting that shapes a plan's model is either written in the plan or a default of its format; a change
of such a default breaks this test unless the format (``dac_search.plan``) says so and reads older plans with
the meaning they had. To write it again after a deliberate change of format: tests/golden/README.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

import dac_search

GOLDEN = Path(__file__).resolve().parent / "golden"


def test_a_stored_plan_rebuilds_the_outputs_it_gave_when_it_was_written(hub_cache) -> None:
    plan = dac_search.RankPlan.load(GOLDEN / "resnet20-plan.json")
    assert plan.correction and plan.fit_images and plan.inputs and plan.int8_layers  # fitted, and in int8 in part
    expected = torch.tensor(json.loads((GOLDEN / "resnet20-outputs.json").read_text())["logits"])
    model = dac_search.decompose_model(dac_search.load_model("cifar10-resnet20"), plan)
    inputs = torch.randn((4, 3, 32, 32), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        logits = model(inputs)
    # the distillation, the refit and ONNX Runtime's quantizer are deterministic here; the tolerance is for
    # another CPU's float rounding, far below what a changed default moves (fit on 128 images, or percentile
    # calibration: 0.9 and 1.0)
    torch.testing.assert_close(logits, expected, atol=0.03, rtol=0.0)
    assert torch.equal(logits.argmax(1), expected.argmax(1))
