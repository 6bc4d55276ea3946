"""`dac-search decompose` through the real entry point: output written, bad input one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from tests.conftest import cli_in_process


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dac_search.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_decompose_writes_onnx_and_prints_the_layer_table(hub_cache, tmp_path) -> None:
    out = tmp_path / "r20.onnx"
    result = run_cli("decompose", "--model", "cifar10-resnet20", "--rank", "4", "--exclude", "conv1",
                     "--variant", "stacked", "-o", str(out))
    assert result.returncode == 0, result.stderr
    onnx.checker.check_model(onnx.load(str(out)))
    assert "layer3.2.conv2" in result.stdout and "60% FLOPs" in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["r20.onnx"]


def test_decompose_applies_a_plan_that_prunes_and_factorises(hub_cache, tmp_path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(
        json.dumps(
            {
                "format": "dac-search/plan@1",
                "model": "cifar10-resnet20",
                "input_shape": [1, 3, 32, 32],
                "layers": {
                    "layer1.0.conv1": {"method": "prune", "rank": 12},
                    "layer3.1.conv2": {"method": "dac", "rank": 2},
                },
            }
        )
    )
    out = tmp_path / "r20.onnx"
    result = run_cli("decompose", "--model", "cifar10-resnet20", "--plan", str(plan), "-o", str(out))
    assert result.returncode == 0, result.stderr
    graph = onnx.load(str(out)).graph
    widths = {init.name: list(init.dims) for init in graph.initializer}
    assert [12, 16, 3, 3] in widths.values() and [16, 12, 3, 3] in widths.values()  # producer and consumer
    assert "inputs pruned" in result.stdout


@pytest.mark.parametrize("args,message", [
    (["--model", "cifar10-resnet21", "--rank", "2"], "unknown model"),
    (["--model", "cifar10-resnet20", "--rank", "12"], "out of range for layer 'conv1'"),
    (["--model", "cifar10-resnet20", "--rank", "2", "--weights", "/etc/hostname"], "cannot read weights"),
    (["--model", "cifar10-resnet20", "--plan", "{plan_other}"], "made for model 'cifar10-resnet56'"),
    (["--model", "cifar10-resnet20", "--plan", "{plan_rank}"], "exceeds the limit"),
    (["--model", "cifar10-resnet20", "--rank", "2", "--input-shape", "1,x"], "--input-shape"),
    (["--model", "cifar10-resnet20", "--rank", "x"], "invalid int value"),
    (["--model", "cifar10-resnet20", "--rank", "2", "--input-shape", "1,1,32,32"],
     "the model cannot run on input shape 1,1,32,32"),
])
def test_bad_input_is_one_line_and_exit_2(hub_cache, tmp_path, capsys, args, message) -> None:
    (tmp_path / "other.json").write_text(json.dumps({"model": "cifar10-resnet56", "layers": {}}))
    (tmp_path / "rank.json").write_text(json.dumps({"layers": {"layer1.0.conv1": {"method": "dac", "rank": 10}}}))
    args = [a.format(plan_other=tmp_path / "other.json", plan_rank=tmp_path / "rank.json") for a in args]
    out = tmp_path / "out.onnx"
    code, stderr = cli_in_process(capsys, "decompose", *args, "-o", str(out))
    assert code == 2
    assert message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert "Traceback" not in stderr and not out.exists()


def test_unwritable_output_is_exit_2_and_leaves_nothing(hub_cache, tmp_path, capsys) -> None:
    for target in (tmp_path / "missing-dir" / "m.onnx", tmp_path / "m.bin", tmp_path):
        code, err = cli_in_process(capsys, "decompose", "--model", "cifar10-resnet20", "--rank", "2", "-o", str(target))
        assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert list(Path(tmp_path).iterdir()) == []
