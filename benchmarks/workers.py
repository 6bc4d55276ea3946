"""Workers on one PostgreSQL study: trials per minute with 1, 2 and 4 workers, cold starts on an empty
database, and the cost of a trial's storage bookkeeping as a study grows; prints markdown tables.

    .venv/bin/python benchmarks/workers.py [--workers 1,2,4] [--trials 200] [--storage postgresql://...]
        [--cold 1,4,8] [--long 2000 --long-workers 8]

Each row starts that many ``dac-search`` processes with the same command (ResNet-20, ``--device none``,
``--budget 50%flops``, ``--trials`` in total) on a study of its own, after one small search has filled the
caches of the set-up (distilled inputs, single-layer proxies): warm caches, as every worker after the first
has them. Without ``--storage`` a throwaway PostgreSQL cluster is started on 127.0.0.1 (Debian's server,
as the tests do). Each worker gets ``cores / workers`` torch threads (at least one), so the rows share the
same machine alike. "search" is the time from the first trial's start to the last one's end, read off the
study; "trials/min" is over it; "wall" adds each worker's start-up and its own set-up from the caches.

``--cold``: that many workers started at the same instant on a new, empty database (no schema), as a job
scheduler's array job starts them: every exit code, and the complete trials (exactly ``--trials``).
``--long``: one study of that many trials run by ``--long-workers`` workers, while this process, holding the
study as a worker does, times the storage reads one trial makes (the surplus check, the plan looked up among
the scored ones, the claimed count, trials.csv's rows) when the study reaches 100 trials and again at the end; and the
study's own throughput around trial 100 and near the end, read off its timestamps. Both
need the throwaway cluster (no ``--storage``).
"""

from __future__ import annotations

import argparse
import os
import statistics
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


def cold_start(count: int, trials: int, server, root: Path) -> list[str]:
    """``count`` workers started together on a new database without a schema."""
    storage = server.fresh_database(f"cold{count}")
    study = f"bench-cold-{count}"
    started = time.perf_counter()
    processes = [subprocess.Popen(dac_search("--trials", str(trials), "--storage", storage, "--study", study,
                                             "--out", str(root / f"{study}-{i}")),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=server.env)
                 for i in range(count)]
    codes = [process.wait() for process in processes]
    wall = time.perf_counter() - started
    failures = [p.stderr.read().strip().splitlines()[-1:] for p, code in zip(processes, codes) if code]
    studies = optuna.get_all_study_summaries(storage)
    complete = sum(t.state == TrialState.COMPLETE
                   for t in optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False))
    return [str(count), " ".join(map(str, codes)), str(len(studies)), f"{complete} of {trials}", f"{wall:.0f}",
            "; ".join(line for lines in failures for line in lines) or "-"]


def bookkeeping_ms(study: optuna.Study, run_dir: Path, total: int, rounds: int = 20) -> float:
    """Median time of the storage reads one trial makes, in a process that holds the study as a worker does
    (trials.csv's rows included; the file itself is rewritten at most every few seconds, not timed here)."""
    from dac_search.plan import LayerChoice, RankPlan
    from dac_search.search.objective import rows_of, scored_before
    from dac_search.search.study import claimed_trials, is_surplus

    plan = RankPlan({"layer1.0.conv1": LayerChoice("dac", 1, "stacked")})
    saved: set[int] = set()
    rows_of(study, run_dir, saved)  # the plan files a worker has written by then
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        last = study.get_trials(deepcopy=False)[-1].number
        is_surplus(study, last, total)
        scored_before(study, plan)
        claimed_trials(study)
        rows_of(study, run_dir, saved)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def long_study(trials: int, workers: int, server, root: Path) -> tuple[list[list[str]], list[list[str]]]:
    storage = server.fresh_database("long")
    study_name = "bench-long"
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    env = {**server.env, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    processes = [subprocess.Popen(dac_search("--trials", str(trials), "--storage", storage, "--study", study_name,
                                             "--out", str(root / f"long-{i}")),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
                 for i in range(workers)]
    observer = root / "observer"
    (observer / "plans").mkdir(parents=True)
    study, measured = None, {}
    while any(p.poll() is None for p in processes):
        time.sleep(1.0)
        if study is None:
            try:
                study = optuna.load_study(study_name=study_name, storage=storage)
            except KeyError:
                continue
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if done >= 100 and 100 not in measured:
            measured[100] = (done, bookkeeping_ms(study, observer, trials))
        if done >= trials - 4 * workers and "end" not in measured:
            measured["end"] = (done, bookkeeping_ms(study, observer, trials))
    for process in processes:
        if process.returncode != 0:
            raise SystemExit(f"a worker failed: {process.stderr.read().strip()}")
    complete = sorted((t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE),
                      key=lambda t: t.datetime_complete)

    def per_minute(first: int, last: int) -> float:
        window = complete[first:last]
        span = (window[-1].datetime_complete - window[0].datetime_complete).total_seconds()
        return 60 * (len(window) - 1) / span

    early, late = per_minute(50, 150), per_minute(len(complete) - 100, len(complete))
    (n0, t0), (n1, t1) = measured[100], measured["end"]
    reads = [[f"{n0}", f"{t0:.1f}", "1.00x"], [f"{n1}", f"{t1:.1f}", f"{t1 / t0:.2f}x"]]
    throughput = [["50-150", f"{early:.1f}", "1.00x"],
                  [f"{len(complete) - 100}-{len(complete)}", f"{late:.1f}", f"{late / early:.2f}x"]]
    return reads, throughput


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--trials", type=int, default=200, help="trials in the study in total, per row")
    parser.add_argument("--storage", help="a PostgreSQL URL (default: a throwaway cluster on 127.0.0.1)")
    parser.add_argument("--cold", default="", help="cold starts: workers per row, started at once on an empty database")
    parser.add_argument("--long", type=int, default=0, help="trials of one long study (storage cost as it grows)")
    parser.add_argument("--long-workers", type=int, default=8)
    args = parser.parse_args(argv)
    if (args.cold or args.long) and args.storage:
        raise SystemExit("--cold and --long make databases of their own on the throwaway cluster: drop --storage")
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
        cold = [cold_start(int(count), args.trials, server, Path(tmp)) for count in split(args.cold)]
        long = long_study(args.long, args.long_workers, server, Path(tmp)) if args.long else None
    if cold:
        print(f"**Cold starts**: workers started at the same instant on an empty database, --trials {args.trials}\n")
        print(markdown(["workers", "exit codes", "studies", "complete", "wall s", "errors"], cold))
        print()
    if long:
        reads, throughput = long
        print(f"**One study of {args.long} trials, {args.long_workers} workers**: a trial's storage reads, timed "
              f"by a process holding the study as a worker does (median of 20)\n")
        print(markdown(["complete trials", "reads ms", "vs trial 100"], reads))
        print("\nthe study's throughput, read off its timestamps\n")
        print(markdown(["trials", "trials/min", "vs early"], throughput))
        print()
    if not split(args.workers):
        return
    base = float(rows[0][-1])
    rows = [[*row, f"{float(row[-1]) / base:.2f}x"] for row in rows]
    print(f"**{args.trials} trials in one study**, ResNet-20, --device none, warm caches, {os.cpu_count()} cores\n")
    print(markdown(["workers", "torch threads each", "wall s", "search s", "complete", "trials/min",
                    "vs 1 worker"], rows))


if __name__ == "__main__":
    from _record import run

    run(main, __file__)
