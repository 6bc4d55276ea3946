"""``dac-search export`` writes a model whose outputs match ``decompose_model`` with the picked plan.

Uses the real cifar10-resnet20 weights (torch.hub's cache seeded from the shared assets) and the real
plans of the fixture run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from dac_search import decompose_model, load_model
from dac_search.cli import main
from dac_search.report.model_export import load_pt_export

SAMPLE = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def reference(run_dir: Path, trial: int) -> torch.Tensor:
    model = decompose_model(load_model("cifar10-resnet20"), run_dir / "plans" / f"trial-{trial}.json").eval()
    with torch.no_grad():
        return model(SAMPLE)


def test_export_best_to_onnx(run_dir: Path, tmp_path: Path, hub_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert main(["export", str(run_dir), "--format", "onnx", "-o", str(out / "best.onnx")]) == 0
    assert "trial 22" in capsys.readouterr().out  # the best plan: highest measured top-1 within budget
    session = ort.InferenceSession(str(out / "best.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: SAMPLE.numpy()})
    np.testing.assert_allclose(got, reference(run_dir, 22).numpy(), rtol=1e-4, atol=1e-4)
    assert [p.name for p in out.iterdir()] == ["best.onnx"], "no temp file left behind"


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_a_trial_to_torchscript_and_pt(run_dir: Path, tmp_path: Path, hub_cache: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert main(["export", str(run_dir), "--pick", "27", "--format", "torchscript", "-o", str(out / "t27.ts")]) == 0
    assert main(["export", str(run_dir), "--pick", "27", "--format", "pt", "-o", str(out / "t27.pt")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["t27.pt", "t27.ts"], "no temp file left behind"
    expected = reference(run_dir, 27)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(out / "t27.ts"))(SAMPLE), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(load_pt_export(out / "t27.pt")(SAMPLE), expected, rtol=0, atol=0)
