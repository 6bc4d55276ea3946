"""``dac-search report``: re-renders identically; a missing or broken run dir is one line and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dac_search.cli import main
from tests.report.conftest import SEARCHED

ROOT = Path(__file__).resolve().parents[2]
FAILED = next(t for t, s in SEARCHED.items() if s[0] == "FAIL")


def test_report_rerenders_the_same_bytes(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(run_dir)]) == 0
    first = (run_dir / "report.html").read_bytes(), (run_dir / "report.md").read_bytes()
    out = capsys.readouterr().out
    assert "Pareto front: cifar10-resnet20" in out and f"wrote {run_dir / 'report.html'}" in out
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir), "--quiet"]) == 0
    assert ((run_dir / "report.html").read_bytes(), (run_dir / "report.md").read_bytes()) == first
    assert "Pareto front" not in capsys.readouterr().out


def test_report_of_a_partial_run_succeeds(partial_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(partial_dir)]) == 0
    assert "PARTIAL RUN" in capsys.readouterr().out


def test_report_on_a_missing_dir_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """Through the real entry point, so no traceback can slip past the CLI's handler."""
    missing = tmp_path / "no-such-run"
    done = subprocess.run(
        [sys.executable, "-m", "dac_search.cli", "report", str(missing)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"dac-search: run dir {missing} does not exist "
                                        "(expected run.json, trials.csv, pareto.csv)"]
    assert done.stdout == ""


def test_report_on_a_broken_run_json_is_exit_2(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run_dir / "run.json").write_text("[]")
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run.json must hold a JSON object" in err


@pytest.mark.parametrize(
    ("pick", "message"),
    [(str(FAILED), f"trial {FAILED} is FAIL"), ("99", "has no trial 99"),
     ("first", "--pick must be 'best' or a trial number")],
)
def test_export_with_a_bad_pick_is_exit_2(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], pick: str, message: str
) -> None:
    output = tmp_path / "model.onnx"
    assert main(["export", str(run_dir), "--pick", pick, "--format", "onnx", "-o", str(output)]) == 2
    assert message in capsys.readouterr().err
    assert not output.exists()


def test_export_best_without_a_feasible_plan_is_exit_2(
    partial_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = partial_dir / "trials.csv"
    csv.write_text(csv.read_text().replace(",True,", ",False,"))
    assert main(["export", str(partial_dir), "--format", "pt", "-o", str(tmp_path / "m.pt")]) == 2
    assert "choose one with --pick TRIAL" in capsys.readouterr().err
