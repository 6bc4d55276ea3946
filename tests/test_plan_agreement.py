"""One plan, one model: a searched plan with the ``refit`` correction gives the same outputs through
``decompose_model`` (as a path, a dict or a ``RankPlan``), ``export --format onnx`` run in onnxruntime,
``export --format pt`` reloaded, and ``export --format torchscript``.

The plan comes from a real (small) search on the real cifar10-resnet20 weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from dac_search import RankPlan, decompose_model, load_model
from dac_search.cli import main
from dac_search.decompose import replace_layers
from dac_search.export import load_pt_export

pytestmark = pytest.mark.slow  # a real search first (about a minute)

SAMPLE = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def searched(hub_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished run dir of a refit search, and the plan file of its best plan."""
    run = tmp_path_factory.mktemp("agreement") / "run"
    result = subprocess.run(
        [sys.executable, "-m", "dac_search.cli", "--model", "cifar10-resnet20", "--device", "none",
         "--budget", "60%flops", "--trials", "4", "--proxy-images", "16", "--correction", "refit",
         "--methods", "dac", "--agreement-images", "0", "--fit-images", "16",  # fitted on the proxy's images
         "--out", str(run)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    pareto = (run / "pareto.csv").read_text().splitlines()
    best = dict(zip(pareto[0].split(","), pareto[-1].split(",")))  # sorted by cost: the dearest fits best
    return run, run / best["plan"]


@pytest.fixture(scope="module")
def expected(searched: tuple[Path, Path]) -> torch.Tensor:
    with torch.no_grad():
        return decompose_model(load_model("cifar10-resnet20"), searched[1])(SAMPLE)


def _max_difference(got: torch.Tensor | np.ndarray, want: torch.Tensor) -> float:
    return float((torch.as_tensor(got) - want).abs().max())


def test_the_searched_plan_carries_its_correction_and_every_form_builds_one_model(
        searched: tuple[Path, Path], expected: torch.Tensor) -> None:
    data = json.loads(searched[1].read_text())
    assert data["correction"] == "refit" and data["input_shape"] == [1, 3, 32, 32] and data["layers"]
    model = load_model("cifar10-resnet20")
    with torch.no_grad():
        for form in (data, RankPlan.from_dict(data)):
            assert _max_difference(decompose_model(model, form)(SAMPLE), expected) < TOLERANCE
        uncorrected = replace_layers(model, data).eval()(SAMPLE)
    assert _max_difference(uncorrected, expected) > 1e-3, "the correction changed nothing: the test proves nothing"


def _export(run: Path, output: Path, fmt: str) -> Path:
    assert main(["export", str(run), "--format", fmt, "-o", str(output)]) == 0
    return output


def test_onnx_export_matches(searched: tuple[Path, Path], expected: torch.Tensor, tmp_path: Path) -> None:
    session = ort.InferenceSession(str(_export(searched[0], tmp_path / "m.onnx", "onnx")),
                                   providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: SAMPLE.numpy()})
    assert _max_difference(got, expected) < TOLERANCE


def test_pt_export_reloads_to_the_same_model(searched: tuple[Path, Path], expected: torch.Tensor,
                                             tmp_path: Path) -> None:
    model = load_pt_export(_export(searched[0], tmp_path / "m.pt", "pt"))
    with torch.no_grad():
        assert _max_difference(model(SAMPLE), expected) < TOLERANCE


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_matches(searched: tuple[Path, Path], expected: torch.Tensor, tmp_path: Path) -> None:
    model = torch.jit.load(str(_export(searched[0], tmp_path / "m.ts", "torchscript")))
    with torch.no_grad():
        assert _max_difference(model(SAMPLE), expected) < TOLERANCE
