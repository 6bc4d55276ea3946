"""The reconstruction stage through the CLI: Ctrl-C in the middle keeps a valid run dir and the same command
resumes it; the exported model is the reconstructed plan's; a bad budget is one line."""

from __future__ import annotations

import json
import signal
import subprocess
import threading

import pytest
import torch

from dac_search import load_model
from dac_search.export import load_pt_export
from dac_search.plan import RECONSTRUCTED_FORMAT, RankPlan
from dac_search.proxies.apply import decompose_model
from dac_search.rundir import load_run
from tests.conftest import cli_in_process
from tests.search.test_search_cli import SEARCH, TIMEOUT, cli, rows, run_cli

STAGE = (*SEARCH, "--device", "none", "--budget", "60%flops", "--trials", "4", "--reconstruct-images", "64")


def _interrupt_when(process: subprocess.Popen[str], marker: str, seen: list[str]) -> None:
    """Read stderr; send SIGINT once ``marker`` shows up (the stage has started)."""
    assert process.stderr is not None
    for line in process.stderr:
        seen.append(line)
        if marker in line and process.poll() is None:
            process.send_signal(signal.SIGINT)


@pytest.mark.slow  # over 10 s here
def test_ctrl_c_in_the_stage_keeps_the_run_and_the_same_command_resumes_it(hub_cache, tmp_path) -> None:
    out = tmp_path / "run"
    command = (*STAGE, "--reconstruct", "20s", "--agreement-images", "16", "--out", str(out))
    # SIGINT back to its default in the child: a shell that started the tests in the background ignores it,
    # and a Python started with SIGINT ignored never raises KeyboardInterrupt
    process = subprocess.Popen(cli(*command), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    seen: list[str] = []
    reader = threading.Thread(target=_interrupt_when, args=(process, "reconstructing trial", seen))
    reader.start()
    assert process.wait(timeout=TIMEOUT) == 130, "".join(seen)
    reader.join()
    run = load_run(out)  # every file still valid
    assert run.info.partial and run.pareto is not None and run.info.reconstruction is None
    started = sorted((out / "plans").glob("*-reconstructed.json"))
    assert started, "the plan being reconstructed is written before its fitting starts"
    recorded = started[0].read_text()

    again = run_cli(*command)
    assert again.returncode == 0, again.stderr
    assert started[0].read_text() == recorded  # resumed with the settings it started with
    run = load_run(out)
    stage = run.info.reconstruction
    assert stage is not None and stage.plans >= 1 and stage.images == 64 and stage.device in ("cpu", "cuda")
    done = [p for p in rows(out / "pareto.csv") if p["plan_reconstructed"]]
    assert len(done) == stage.plans
    trials = {t["trial"]: t for t in rows(out / "trials.csv")}
    for point in done:
        assert trials[point["trial"]]["plan_reconstructed"] == point["plan_reconstructed"]
        assert float(point["proxy_reconstructed"]) > 0
        assert 0 <= float(point["agreement_reconstructed"]) <= 1  # judged on the held-out images, as the rest
        plan = json.loads((out / point["plan_reconstructed"]).read_text())
        assert plan["format"] == RECONSTRUCTED_FORMAT and plan["reconstruction"]["steps"] >= 1
    report = (out / "report.md").read_text()
    assert "Proxy reconstructed" in report
    assert "Agrees reconstructed (%)" in report and "Agrees (% of 16 held-out synthetic)" in report
    # the front's best feasible points judged on the held-out images asked for, in whole images
    judged = [float(p["agreement_held_out"]) for p in rows(out / "pareto.csv") if p["agreement_held_out"]]
    assert 1 <= len(judged) <= 8 and all(0 <= share <= 1 and (16 * share).is_integer() for share in judged)

    # the exported model is the reconstructed plan's model, as decompose_model builds it
    best = min(done, key=lambda p: float(p["proxy_reconstructed"]))
    exported = tmp_path / "best.pt"
    result = run_cli("export", str(out), "--pick", best["trial"], "--format", "pt", "-o", str(exported))
    assert result.returncode == 0, result.stderr
    assert "reconstructed" in result.stdout
    model = load_pt_export(exported)
    expected = decompose_model(load_model("cifar10-resnet20"), RankPlan.load(out / best["plan_reconstructed"]))
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), expected(x))


def test_a_bad_reconstruction_budget_is_one_line(hub_cache, tmp_path, capsys) -> None:
    for args in (
        ("--reconstruct", "soon"),
        ("--reconstruct", "-5m"),
        ("--reconstruct", "1m", "--reconstruct-images", "0"),
    ):
        code, stderr = cli_in_process(capsys, *STAGE, *args, "--out", str(tmp_path / "run"))
        assert code == 2, stderr
        assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
        assert not (tmp_path / "run").exists()


def test_a_model_that_cannot_be_cut_into_regions_is_refused_before_the_search(tmp_path, capsys) -> None:
    source = tmp_path / "branchy.py"
    source.write_text(
        "import torch\n"
        "class Branchy(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)\n"
        "        self.head = torch.nn.Linear(8, 10)\n"
        "    def forward(self, x):\n"
        "        y = self.conv(x)\n"
        "        if y.mean() > 0:  # data-dependent: torch.fx cannot trace it\n"
        "            y = y.relu()\n"
        "        return self.head(y.mean((2, 3)))\n"
        "def net():\n"
        "    return Branchy()\n")
    code, stderr = cli_in_process(capsys, "--model", f"{source}:net", "--input-shape", "1,3,32,32", "--device",
                                  "none", "--budget", "60%flops", "--reconstruct", "1m", "--out", str(tmp_path / "run"))
    assert code == 2, stderr
    assert "cannot reconstruct" in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
