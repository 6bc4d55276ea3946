"""runner.py on its own: statistics, the JSON protocol, exit codes, both runtimes."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from profilers import runner

from .conftest import FAST_MEASURE, python_without_onnxruntime, tiny_onnx

RUNNER = Path(runner.__file__)


def _run(job: dict[str, object], tmp_path: Path, python: str = sys.executable) -> tuple[int, dict[str, object]]:
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    done = subprocess.run([python, str(RUNNER), "--job", str(path)], capture_output=True, text=True, timeout=60)
    return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])


def test_summarize_matches_numpy() -> None:
    samples = [1.0, 2.0, 2.5, 3.0, 10.0, 4.0, 3.5]
    stats = runner.summarize(samples)
    q25, q50, q75, q90 = np.percentile(samples, [25, 50, 75, 90])
    assert stats["median_ms"] == pytest.approx(q50)
    assert stats["iqr_ms"] == pytest.approx(q75 - q25)
    assert stats["p90_ms"] == pytest.approx(q90)
    assert stats["cov"] == pytest.approx(np.std(samples, ddof=1) / np.mean(samples))
    assert stats["n"] == 7
    assert runner.summarize([2.0])["cov"] == 0.0


def test_throttle_flags() -> None:
    assert not runner._is_throttling(None, None)
    assert not runner._is_throttling("0x0", "0x0")
    assert runner._is_throttling("0x0", "0x4")  # throttled now
    assert runner._is_throttling("0x0", "0x40000")  # throttling happened during the run
    assert not runner._is_throttling("0x50000", "0x50000")  # happened before the run, not now


def test_measures_models_interleaved_in_order(tmp_path: Path) -> None:
    models = [tiny_onnx(tmp_path / "a.onnx", 4), tiny_onnx(tmp_path / "b.onnx", 64)]
    code, doc = _run({"models": [str(m) for m in models], "input_shape": [1, 3, 16, 16], "threads": 1,
                      "settings": FAST_MEASURE}, tmp_path)
    assert code == runner.EXIT_OK and doc["ok"]
    assert [r["model"] for r in doc["results"]] == [str(m) for m in models]
    for result in doc["results"]:
        assert len(result["samples_ms"]) == FAST_MEASURE["repeats"] and result["number"] >= 1
        assert 1 <= result["attempts"] <= FAST_MEASURE["max_attempts"]
    assert doc["conditions"]["cpu_model"]
    assert doc["runtime_version"] and doc["threads"] == 1


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script is deprecated upstream
def test_torch_runtime(tmp_path: Path) -> None:
    import torch  # a dependency of dac-search; the runner itself imports it only for this runtime
    path = tmp_path / "conv.pt"
    torch.jit.script(torch.nn.Conv2d(3, 8, 3, padding=1)).save(str(path))
    code, doc = _run({"models": [str(path)], "input_shape": [1, 3, 16, 16], "runtime": "torch", "threads": 1,
                      "settings": FAST_MEASURE}, tmp_path)
    assert code == runner.EXIT_OK and doc["runtime"] == "torch" and doc["runtime_version"] == torch.__version__


def test_bad_model_has_its_own_exit_code(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    code, doc = _run({"models": [str(garbage)], "input_shape": [1, 3, 16, 16], "settings": FAST_MEASURE}, tmp_path)
    assert code == runner.EXIT_BAD_MODEL and doc["error"] == "bad_model" and "garbage.onnx" in doc["message"]


def test_wrong_input_shape_is_a_bad_model(tmp_path: Path) -> None:
    model = tiny_onnx(tmp_path / "a.onnx")
    code, doc = _run({"models": [str(model)], "input_shape": [1, 5, 16, 16], "settings": FAST_MEASURE}, tmp_path)
    assert code == runner.EXIT_BAD_MODEL


def test_bad_job(tmp_path: Path) -> None:
    code, doc = _run({"models": [], "input_shape": [1]}, tmp_path)
    assert code == runner.EXIT_BAD_JOB and "no models" in doc["message"]
    code, doc = _run({"models": ["x"], "input_shape": [1], "settings": {"repeats": 1}}, tmp_path)
    assert code == runner.EXIT_BAD_JOB
    code, doc = _run({"models": ["x"], "input_shape": [1], "runtime": "tflite"}, tmp_path)
    assert code == runner.EXIT_BAD_JOB and "unknown runtime" in doc["message"]


def test_runtime_missing(tmp_path: Path) -> None:
    bare = python_without_onnxruntime(tmp_path)
    code, doc = _run({"models": ["x.onnx"], "input_shape": [1, 3, 16, 16]}, tmp_path, python=str(bare))
    assert code == runner.EXIT_RUNTIME_MISSING and doc["error"] == "runtime_missing"


def test_info() -> None:
    done = subprocess.run([sys.executable, str(RUNNER), "--info", '{"runtime": "onnxruntime", "threads": 2}'],
                          capture_output=True, text=True, timeout=60, check=True)
    doc = json.loads(done.stdout)
    assert doc["python"] == sys.executable and doc["threads"] == 2 and doc["cpu_count"] >= 1
    assert set(doc["conditions"]) == {"cpu_model", "governor", "freq_mhz", "temp_c", "throttled"}


def test_runner_imports_only_stdlib_and_runtimes() -> None:
    """It is uploaded alone to bare devices: nothing from this project, nothing but the runtimes."""
    tree = ast.parse(RUNNER.read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert imported - set(sys.stdlib_module_names) == {"numpy", "onnxruntime", "torch", "ai_edge_litert"}


def test_job_from_stdin(tmp_path: Path) -> None:
    model = tiny_onnx(tmp_path / "a.onnx")
    job = {"models": [str(model)], "input_shape": [1, 3, 16, 16], "settings": FAST_MEASURE}
    done = subprocess.run([sys.executable, str(RUNNER), "--job", "-"], input=json.dumps(job) + "\n",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == runner.EXIT_OK and json.loads(done.stdout)["results"][0]["model"] == str(model)
