"""``dac-search devices`` and ``dac-search profile`` through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dac_search.cli import main

from .conftest import write_device

MODEL_FILE = """
from torch import nn

def build():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
"""


def test_devices_lists_the_shipped_configs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "local" in out and "pi4" in out and "loopback" in out


def test_devices_check_local(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices", "check", "local"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "python" in out


def test_devices_check_unknown_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices", "check", "nope"]) == 2
    assert "unknown device 'nope'" in capsys.readouterr().err


def test_profile_with_plan_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tiny.py").write_text(MODEL_FILE)
    device = write_device(tmp_path / "fast.toml", kind="local", threads=1)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers": {"2": {"method": "dac", "rank": 2, "variant": "stacked"}}}))
    spec = f"{tmp_path / 'tiny.py'}:build"
    argv = ["profile", "--model", spec, "--input-shape", "1,3,16,16", "--device", str(device), "--plan", str(plan)]
    assert main([*argv, "--batch", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["input_shape"] == [2, 3, 16, 16] and result["device"] == "fast" and result["median_ms"] > 0
    assert main(argv) == 0
    assert "median" in capsys.readouterr().out


def test_profile_bad_device_config_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "ssh"\nhost = "h"\npassword = "x"\n')
    assert main(["profile", "--model", "resnet18", "--device", str(bad)]) == 2
    assert "passwords are never read" in capsys.readouterr().err
