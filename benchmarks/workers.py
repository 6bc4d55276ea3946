"""Workers on one PostgreSQL study: trials per minute with 1, 2 and 4 workers; prints a markdown table.

    .venv/bin/python benchmarks/workers.py [--workers 1,2,4] [--trials 200] [--storage postgresql://...]

Each row starts that many ``dac-search`` processes with the same command (ResNet-20, ``--device none``,
``--budget 50%flops``, ``--trials`` in total) on a study of its own, after one small search has filled the
caches of the set-up (distilled inputs, single-layer proxies): warm caches, as every worker after the first
has them. Without ``--storage`` a throwaway PostgreSQL cluster is started on 127.0.0.1 (Debian's server,
as the tests do). Each worker gets ``cores / workers`` torch threads (at least one), so the rows share the
same machine alike. "search" is the time from the first trial's start to the last one's end, read off the
study; "trials/min" is over it; "wall" adds each worker's start-up and its own set-up from the caches.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna  # noqa: E402
from _common import markdown, split  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

ARGS = ("--model", "cifar10-resnet20", "--device", "none", "--budget", "50%flops", "--proxy-images", "16",
        "--correction", "none")


def dac_search(*args: str) -> list[str]:
    return [sys.executable, "-m", "dac_search.cli", *ARGS, *args]


def run_workers(count: int, trials: int, storage: str, env: dict[str, str], root: Path) -> list[str]:
    study = f"bench-workers-{count}-{time.time_ns()}"
    threads = str(max(1, (os.cpu_count() or 1) // count))
    worker_env = {**env, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    started = time.perf_counter()
    processes = [subprocess.Popen(dac_search("--trials", str(trials), "--storage", storage, "--study", study,
                                             "--out", str(root / f"{study}-{i}")),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=worker_env)
                 for i in range(count)]
    for process in processes:
        if process.wait() != 0:
            raise SystemExit(f"a worker failed: {process.stderr.read().strip()}")
    wall = time.perf_counter() - started
    done = [t for t in optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE]
    search = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    return [str(count), threads, f"{wall:.0f}", f"{search:.0f}", str(len(done)), f"{60 * len(done) / search:.1f}"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--trials", type=int, default=200, help="trials in the study in total, per row")
    parser.add_argument("--storage", help="a PostgreSQL URL (default: a throwaway cluster on 127.0.0.1)")
    args = parser.parse_args(argv)
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        storage = args.storage
        if storage is None:
            from tests.postgres import postgres_server, server_binaries

            bin_dir = server_binaries()
            if bin_dir is None:
                raise SystemExit("no PostgreSQL server installed (apt-get install postgresql), and no --storage")
            server = stack.enter_context(postgres_server(bin_dir))
            env = server.env
            os.environ["PGPASSWORD"] = server.password  # for this process's optuna.load_study too
            storage = server.url
        warm = subprocess.run(dac_search("--trials", "2", "--out", str(Path(tmp) / "warm")), env=env,
                              capture_output=True, text=True)
        if warm.returncode != 0:
            raise SystemExit(f"the warm-up search failed: {warm.stderr.strip()}")
        rows = [run_workers(int(count), args.trials, storage, env, Path(tmp)) for count in split(args.workers)]
    base = float(rows[0][-1])
    rows = [[*row, f"{float(row[-1]) / base:.2f}x"] for row in rows]
    print(f"**{args.trials} trials in one study**, ResNet-20, --device none, warm caches, {os.cpu_count()} cores\n")
    print(markdown(["workers", "torch threads each", "wall s", "search s", "complete", "trials/min",
                    "vs 1 worker"], rows))


if __name__ == "__main__":
    main()
