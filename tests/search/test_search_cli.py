"""The search end to end through the CLI: results files, resume after kill -9, the infeasible answer, bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dac_search import load_model
from dac_search.onnx_file import export_onnx
from tests.conftest import cli_in_process

TIMEOUT = 600


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dac_search.cli", *args]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), capture_output=True, text=True, timeout=TIMEOUT)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


# fast: no refit, and no held-out images to judge the front on (tested where asked for)
SEARCH = ("--model", "cifar10-resnet20", "--proxy-images", "16", "--correction", "none", "--agreement-images", "0")


@pytest.mark.slow  # over 10 s here
def test_small_search_writes_every_result_file(hub_cache, tmp_path) -> None:
    out = tmp_path / "run"
    result = run_cli(*SEARCH, "--device", "none", "--budget", "60%flops", "--trials", "20", "--out", str(out))
    assert result.returncode == 0, result.stderr
    trials = rows(out / "trials.csv")
    assert len(trials) == 20 and {t["state"] for t in trials} == {"COMPLETE"}
    for trial in trials:
        plan = json.loads((out / trial["plan"]).read_text())
        assert plan["format"] == "dac-search/plan@2" and plan["model"] == "cifar10-resnet20"
    pareto = rows(out / "pareto.csv")
    assert pareto and all(p["feasible"] == "True" for p in pareto)
    run = json.loads((out / "run.json").read_text())
    baseline = run["baseline"]["flops"]
    assert all(int(p["flops"]) <= 0.6 * baseline for p in pareto)
    assert all(p["latency_ms"] == "" for p in pareto)
    assert run["partial"] is False and run["budget"]["kind"] == "flops" and run["uniform"]
    proxies = [float(p["proxy"]) for p in pareto]
    assert proxies == sorted(proxies, reverse=True)  # cheaper points pay in proxy
    assert (out / "report.html").exists() and (out / "report.md").exists() and (out / "study.db").exists()
    again = run_cli(*SEARCH, "--device", "none", "--budget", "60%flops", "--trials", "20", "--out", str(out))
    assert again.returncode == 0 and len(rows(out / "trials.csv")) == 20  # nothing to do: already done


@pytest.mark.slow  # over 10 s here
def test_search_on_the_local_device_picks_among_every_method_and_judges_each_plan_beside_the_original(
        hub_cache, tmp_path) -> None:
    out = tmp_path / "run"
    device = tmp_path / "quick.toml"  # short timings: this checks the plumbing, not the machine
    device.write_text('name = "quick"\nkind = "local"\nthreads = 1\n'
                      '[measure]\nwarmup_s = 0.05\nrepeat_s = 0.02\nrepeats = 7\nmax_attempts = 1\n')
    result = run_cli(*SEARCH, "--device", str(device), "--budget", "0.7x", "--trials", "12", "--out", str(out))
    assert result.returncode == 0, result.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["methods"] == ["dac", "spatial", "channel", "prune"]  # every method is offered by default
    assert run["settings"]["precisions"] == "fp32,int8"  # int8 is offered by default under a latency budget
    layers = [c for t in rows(out / "trials.csv") for c in json.loads((out / t["plan"]).read_text())["layers"].values()]
    methods = {c["method"] for c in layers if "method" in c}
    assert methods - {"dac"}, methods
    assert any(c.get("precision") == "int8" for c in layers)
    original = run["baseline"]["latency_ms"]
    assert original > 0 and run["budget"]["value"] == pytest.approx(0.7 * original, rel=1e-6)
    where = {stage["name"]: stage["where"] for stage in run["stages"]}  # what to buy down on a slow board
    assert {name for name, w in where.items() if w == "device"} >= {"latency table", "final measurement"}
    assert {name for name, w in where.items() if w == "host"} >= {"distillation", "trials"}
    assert "timing layers and candidates on quick: " in result.stderr  # the set-up's steps count to a total
    pareto = rows(out / "pareto.csv")
    assert pareto and all(p["feasible"] == "True" for p in pareto)
    for point in pareto:  # measured end to end, each against the original timed in the same session
        assert float(point["latency_ms"]) > 0 and float(point["latency_ratio"]) <= 0.7
        assert point["latency_predicted_ms"] != point["latency_ms"]
    trials = {t["trial"]: t for t in rows(out / "trials.csv")}
    for point in pareto:  # trials.csv keeps the measured values of what was measured, predictions elsewhere
        assert trials[point["trial"]]["latency_ratio"] == point["latency_ratio"]
    assert all(t["latency_ms"] for t in trials.values())  # the unmeasured keep the table's prediction
    report = (out / "report.md").read_text()
    assert all(f"{1 / float(p['latency_ratio']):.2f}×" in report for p in pareto)  # speed-up of the pair
    assert "**Time**: host " in report and "; device " in report
    # the user's way: the exported file, timed beside the original in one session, is under the budget
    exported = tmp_path / "best.onnx"
    result = run_cli("export", str(out), "--format", "onnx", "-o", str(exported))
    assert result.returncode == 0, result.stderr
    import onnx

    from profilers.devices import load_device
    from profilers.pool import DevicePool

    assert "QuantizeLinear" in {node.op_type for node in onnx.load(str(exported)).graph.node}  # int8 was picked

    with tempfile.TemporaryDirectory() as tmp:
        original = export_onnx(load_model("cifar10-resnet20"), Path(tmp) / "original.onnx", (1, 3, 32, 32))
        steady = tmp_path / "steady.toml"  # the device's own timings, not the quick ones: this is the verdict
        steady.write_text('name = "steady"\nkind = "local"\nthreads = 1\n')
        pool = DevicePool(load_device(str(steady)), lambda _: None)
        try:
            (pair,) = pool.measure_beside(original, [exported], (1, 3, 32, 32))
        finally:
            pool.close()
    assert pair.ratio <= 0.7 * 1.05, pair.ratio  # the search's own pairs keep it under 0.7; this one is re-timed


@pytest.mark.slow  # over 10 s here
def test_resume_after_kill_9_loses_nothing_and_duplicates_nothing(hub_cache, tmp_path) -> None:
    out = tmp_path / "run"
    args = (*SEARCH, "--device", "none", "--budget", "50%flops", "--trials", "30", "--out", str(out))
    process = subprocess.Popen(cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if (out / "trials.csv").exists() and len(rows(out / "trials.csv")) >= 8:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = rows(out / "trials.csv")
    finished_before = {t["trial"] for t in before if t["state"] == "COMPLETE"}
    assert 0 < len(finished_before) < 30
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    after = rows(out / "trials.csv")
    numbers = [t["trial"] for t in after]
    assert len(numbers) == len(set(numbers))
    complete = [t for t in after if t["state"] == "COMPLETE"]
    assert len(complete) == 30 and finished_before <= {t["trial"] for t in complete}
    assert all((out / t["plan"]).exists() for t in complete)
    assert "RUNNING" not in {t["state"] for t in after}


def test_an_impossible_budget_reports_the_closest_plans(hub_cache, tmp_path) -> None:
    out = tmp_path / "run"
    result = run_cli(*SEARCH, "--device", "none", "--budget", "0.1%params", "--trials", "8",
                     "--agreement-images", "16", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "no plan meets the budget 0.1%params" in result.stderr
    pareto = rows(out / "pareto.csv")
    assert pareto and all(p["feasible"] == "False" for p in pareto)
    # no point is worth judging, so no held-out image is distilled for it
    assert "held-out" not in result.stderr and not any(p["agreement_held_out"] for p in pareto)
    assert not [s for s in json.loads((out / "run.json").read_text())["stages"] if "held-out" in s["name"]]


@pytest.mark.parametrize("budget", ["30", "30xs", "-1ms", "150%flops", "0.5x"])
def test_malformed_budgets_exit_2_with_one_line(budget, tmp_path, capsys) -> None:
    from dac_search.cli import main

    device = "none" if budget == "0.5x" else "local"
    code = main(["--model", "cifar10-resnet20", "--device", device, f"--budget={budget}", "--out", str(tmp_path / "r")])
    stderr = capsys.readouterr().err
    assert code == 2
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
    assert not (tmp_path / "r").exists()


def test_bad_search_arguments_exit_2(tmp_path, capsys) -> None:
    """In one process (each is refused before any set-up): the same main() the console script runs."""
    from dac_search.cli import main

    for args in (["--trials", "0"], ["--methods", "dac,tucker"], ["--device", "no-such-device"],
                 ["--timeout", "soon"], ["--inputs", "photos"], ["--study", ""], ["--input-shape", "1,3,32"],
                 ["--input-shape", "1,3,100000,100000"], ["--budget", "1e400gflops"]):
        try:
            code = main(["--model", "cifar10-resnet20", "--budget", "50%flops", "--out", str(tmp_path / "r"), *args])
        except SystemExit as exited:  # argparse's own refusals
            code = exited.code
        stderr = capsys.readouterr().err
        assert code == 2, (args, stderr)
        assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr, stderr
        assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--input-shape", "1,1,32,32"], "the model cannot run on input shape 1,1,32,32: "),
    (["--eval-data", "no/such/images.npz"], "no/such/images.npz"),
    (["--model", "x[/y]"], "unknown model 'x[/y]'"),
])
def test_input_the_model_cannot_use_is_one_line_before_anything_is_written(hub_cache, tmp_path, capsys, args,
                                                                           message) -> None:
    code, stderr = cli_in_process(capsys, "--model", "cifar10-resnet20", "--device", "none", "--budget", "50%flops",
                                  "--out", str(tmp_path / "r"), *args)
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert message in stderr and "Traceback" not in stderr
    assert not (tmp_path / "r").exists()


def test_a_bad_storage_url_fails_before_any_set_up_and_hides_its_password(tmp_path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    result = subprocess.run(cli("--model", "cifar10-resnet20", "--device", "none", "--budget", "50%flops",
                                "--storage", "nosuchdb://alice:hunter2@127.0.0.1:1/dac", "--out", str(tmp_path / "r")),
                            capture_output=True, text=True, timeout=TIMEOUT,
                            env={**os.environ, "DAC_SEARCH_CACHE": str(cache)})
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "nosuchdb://alice:***@127.0.0.1:1/dac" in result.stderr and "hunter2" not in result.stderr + result.stdout
    assert list(cache.iterdir()) == []  # no distilled inputs, no sensitivities: nothing was set up


def test_a_postgresql_url_without_the_driver_names_the_extra_to_install(tmp_path) -> None:
    shadow = tmp_path / "shadow"  # a Python where no PostgreSQL driver imports, as without the [postgres] extra
    for driver in ("psycopg", "psycopg2"):
        (shadow / driver).mkdir(parents=True)
        (shadow / driver / "__init__.py").write_text(f'raise ImportError("No module named {driver}")\n')
    result = subprocess.run(cli("--model", "cifar10-resnet20", "--device", "none", "--budget", "50%flops",
                                "--storage", "postgresql://alice@127.0.0.1:1/dac", "--out", str(tmp_path / "r")),
                            capture_output=True, text=True, timeout=TIMEOUT,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), *sys.path])})
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "pip install 'dac-search[postgres]'" in result.stderr


def test_an_unreachable_device_leaves_no_run_dir(tmp_path) -> None:
    device = tmp_path / "pi4.toml"  # a board that is off: nothing listens on its port
    device.write_text('name = "pi4"\nkind = "ssh"\nhost = "127.0.0.1"\nport = 1\nconnect_timeout_s = 2\n'
                      'retries = 0\n')
    out = tmp_path / "reports" / "resnet20-pi4-30ms"
    result = run_cli("--model", "cifar10-resnet20", "--weights", "none", "--device", str(device), "--budget", "30ms",
                     "--out", str(out))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "pi4" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()  # no empty study.db or plans/ to mistake for a run


def test_every_command_that_loads_a_model_describes_it_alike(capsys) -> None:
    from dac_search.cli import build_parser

    helps = {}
    for command in ("search", "decompose", "profile"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        helps[command] = " ".join(capsys.readouterr().out.split())
    for text in ("or none for random weights", "a TorchScript file"):
        assert all(text in h for h in helps.values()), text


def test_every_command_prints_its_help(capsys) -> None:
    """argparse formats help strings with %, so one literal % in any of them breaks --help."""
    from dac_search.cli import COMMANDS, build_parser

    for name in ("", *(module.__name__.rpartition(".")[2] for module in COMMANDS)):
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args([*filter(None, [name]), "--help"])
        assert done.value.code == 0, name
        assert "usage: dac-search" in capsys.readouterr().out
