"""``dac-search export`` writes a model whose outputs match ``decompose_model`` with the picked plan.

Uses the real cifar10-resnet20 weights (torch.hub's cache seeded from the shared assets) and the recorded
plans of the fixture run; BEST is its best plan (highest measured top-1 within the budget).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from dac_search import decompose_model, load_model
from dac_search.cli import main
from dac_search.export import load_pt_export
from tests.report.conftest import PARETO, TOP1, plan_of

SAMPLE = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
BEST = max(PARETO, key=TOP1.__getitem__)


@pytest.fixture(scope="module")
def expected(hub_cache: Path) -> torch.Tensor:
    """The outputs of decompose_model with the best plan: what every export must reproduce."""
    with torch.no_grad():
        return decompose_model(load_model("cifar10-resnet20"), plan_of(BEST)).eval()(SAMPLE)


def export(run_dir: Path, output: Path, *args: str) -> Path:
    output.parent.mkdir(exist_ok=True)
    assert main(["export", str(run_dir), *args, "-o", str(output)]) == 0
    return output


def test_export_best_to_onnx(run_dir: Path, tmp_path: Path, expected: torch.Tensor,
                             capsys: pytest.CaptureFixture[str]) -> None:
    output = export(run_dir, tmp_path / "out" / "best.onnx")  # the format read off the suffix
    assert f"trial {BEST}" in capsys.readouterr().out
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: SAMPLE.numpy()})
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-4)
    assert [p.name for p in output.parent.iterdir()] == ["best.onnx"], "no temp file left behind"


def test_an_output_whose_suffix_names_no_format_is_one_line(run_dir: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(run_dir), "-o", str(tmp_path / "model.bin")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot tell the format of" in err and ".onnx" in err


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_picked_trial_to_torchscript(run_dir: Path, tmp_path: Path, expected: torch.Tensor) -> None:
    output = export(run_dir, tmp_path / "out" / "model.ts", "--pick", str(BEST), "--format", "torchscript")
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(output))(SAMPLE), expected, rtol=1e-4, atol=1e-4)


def test_export_pt_reloads_to_the_same_model(run_dir: Path, tmp_path: Path, expected: torch.Tensor) -> None:
    output = export(run_dir, tmp_path / "out" / "model.pt", "--pick", str(BEST), "--format", "pt")
    record = torch.load(output, weights_only=True)
    assert record["format"] == "dac-search/export@1" and record["trial"] == BEST
    assert record["plan"]["layers"] == plan_of(BEST).to_dict()["layers"]
    with torch.no_grad():
        torch.testing.assert_close(load_pt_export(output)(SAMPLE), expected, rtol=0, atol=0)


def test_a_run_dir_whose_model_runs_code_is_exported_only_when_the_user_names_it(
        run_dir: Path, tmp_path: Path, expected: torch.Tensor, capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import shutil

    from dac_search.errors import ConfigError

    marker = tmp_path / "ran"
    (tmp_path / "net.py").write_text(
        "from pathlib import Path\nfrom dac_search.zoo import load_model\n"
        f"def build():\n    Path({str(marker)!r}).touch()\n    return load_model('cifar10-resnet20')\n")
    spec = f"{tmp_path / 'net.py'}:build"
    sent = tmp_path / "sent-run"
    shutil.copytree(run_dir, sent)
    record = json.loads((sent / "run.json").read_text())
    (sent / "run.json").write_text(json.dumps({**record, "model": spec}))
    output = tmp_path / "out" / "m.pt"
    assert main(["export", str(sent), "--format", "pt", "-o", str(output)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--model {spec}" in err and not marker.exists() and not output.exists()
    assert main(["export", str(sent), "--format", "pt", "-o", str(output), "--model", "cifar10-resnet56"]) == 2
    export(sent, output, "--format", "pt", "--model", spec)  # named again: trusted
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ConfigError, match="runs code"):
        load_pt_export(output)  # the export records the spec: it is code again for whoever loads it
    assert not marker.exists()
    with torch.no_grad():
        torch.testing.assert_close(load_pt_export(output, model=spec)(SAMPLE), expected, rtol=0, atol=0)


def test_export_best_to_litert_runs_in_the_interpreter_a_pi_deploys(run_dir: Path, tmp_path: Path,
                                                                     expected: torch.Tensor) -> None:
    import importlib.util

    from tests.conftest import require

    require(importlib.util.find_spec("litert_torch") is not None and importlib.util.find_spec("ai_edge_litert")
            is not None, "litert-torch or ai-edge-litert is not installed (pip install 'dac-search[litert]')")
    from ai_edge_litert.interpreter import Interpreter

    output = export(run_dir, tmp_path / "out" / "best.tflite", "--format", "tflite")
    interpreter = Interpreter(model_path=str(output))
    interpreter.allocate_tensors()
    (entry,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    for image, want in zip(SAMPLE, expected):  # converted for batch 1, the plan's input shape
        interpreter.set_tensor(entry["index"], image[None].numpy())
        interpreter.invoke()
        np.testing.assert_allclose(interpreter.get_tensor(out["index"])[0], want.numpy(), rtol=1e-3, atol=1e-3)
