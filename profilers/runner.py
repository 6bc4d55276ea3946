"""Measure model latency on this machine; the one script both profilers run (locally or on a device).

Self-contained on purpose: standard library plus the runtime being measured, so it can be uploaded to a
bare device and run by its system python. Nothing here imports ``dac_search`` or ``profilers``.

Usage::

    python runner.py --job job.json [--watch-stdin]     # measure; prints one JSON line
    python runner.py --info '{"runtime": "onnxruntime"}'  # describe the device; prints one JSON line

Job (JSON)::

    {"runtime": "onnxruntime" | "torch" | "litert", "threads": 4 | null,
     "input_shape": [1, 3, 32, 32]  (or one shape per model: [[1, 16, 32, 32], [1, 32, 16, 16]]),
     "models": ["/path/a.onnx", "/path/b.onnx"],
     "settings": {"warmup_s": 0.5, "repeat_s": 0.1, "repeats": 10, "max_cov": 0.05,
                  "max_attempts": 3, "cooldown_s": 0.0},
     "lease": {"path": "/home/pi/.cache/dac-search/lease", "holder": "laptop:4242", "wait_s": 900,
               "evict": false}}

Lease (optional): the runner takes an exclusive ``flock`` on ``path`` before it loads anything and holds
it until it exits, so two searches, or two workers, never time models on one device at once (their
timings would both be wrong, and nothing would say so). The kernel releases it when the runner dies,
killed or orphaned by a dropped SSH session. A runner that waits says so on stderr; one that waits past
``wait_s`` exits with ``EXIT_LEASE_TIMEOUT``, naming the holder written in the file. The result then
carries ``lease``: the holder, the seconds waited and the device clock's start and end of the measurement.

Protocol: the device is warmed up for ``warmup_s`` in all, every model for at least ``repeat_s`` (a single
model gets the whole ``warmup_s``), and the number of inferences per repeat is calibrated so that one
repeat lasts at least ``repeat_s``. Then ``repeats`` timed repeats run round-robin over the
models (interleaved, so slow drifts of the device hit every model alike). When a model's coefficient of
variation exceeds ``max_cov`` or the device throttled, all models are measured again, up to
``max_attempts`` in all, and the steadiest attempt is kept for all of them (so every model's samples
come from the same stretch of time). Samples are milliseconds per inference.

Exit codes let the caller tell failures apart without parsing text: see the ``EXIT_*`` constants. On a
failure the last stdout line is still JSON: ``{"ok": false, "error": KIND, "message": ...}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

EXIT_OK = 0
EXIT_BAD_JOB = 3
EXIT_RUNTIME_MISSING = 4
EXIT_OUT_OF_MEMORY = 5
EXIT_BAD_MODEL = 6
EXIT_ORPHANED = 7
EXIT_LEASE_TIMEOUT = 8
WAITING_PREFIX = "waiting for the device lease held by "  # on stderr while the lease is held by another

DEFAULT_SETTINGS: dict[str, float] = {
    "warmup_s": 0.5,
    "repeat_s": 0.1,
    "repeats": 10,
    "max_cov": 0.05,
    "max_attempts": 3,
    "cooldown_s": 0.0,
}
RUNTIMES = ("onnxruntime", "torch", "litert")

# vcgencmd get_throttled bits that mean "happening now": under-voltage, frequency capped, throttled,
# soft temperature limit. The high bits (<< 16) mean "has happened since boot".
_THROTTLED_NOW = 0xF


class JobError(Exception):
    """The job itself is malformed: the caller's fault, not the device's."""


class RuntimeMissing(Exception):
    """The runtime cannot be imported by this python."""


class BadModel(Exception):
    """The runtime refused to load or run a model file."""


class LeaseTimeout(Exception):
    """Another measurement held the device's lease for longer than this job may wait."""


_held_leases: list[Any] = []  # open lock files: the lease lasts as long as this process


def take_lease(lease: dict[str, Any]) -> dict[str, Any]:
    """Wait for the device's lease (see the module doc) and hold it; returns what the result reports.

    With ``evict``, a lease held by a runner of the same ``holder`` is taken from it: that runner is an
    orphan of a connection that dropped (its caller is retrying now), still measuring, so its process
    group is stopped (TERM, then KILL) instead of waited for.
    """
    import fcntl
    import signal

    path, holder, wait_s = str(lease["path"]), str(lease.get("holder", "?")), float(lease.get("wait_s", 900))
    handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+", encoding="utf-8")
    started = time.monotonic()
    said = evicted = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            waited = time.monotonic() - started
            other = _lease_record(handle)
            if waited >= wait_s:
                handle.close()
                raise LeaseTimeout(f"{_lease_text(other)}; waited {waited:.0f} s") from None
            pgid = other.get("pgid")
            if lease.get("evict") and other.get("holder") == holder and isinstance(pgid, int) and pgid > 1 \
                    and pgid != os.getpgid(0) and (not evicted or waited > 5.0):
                try:
                    os.killpg(pgid, signal.SIGKILL if evicted else signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
                if not evicted:
                    sys.stderr.write(f"stopped the orphaned runner of {holder} (process group {pgid})\n")
                evicted = True
            elif not said:
                sys.stderr.write(f"{WAITING_PREFIX}{_lease_text(other)}\n")  # the caller shows this line
                sys.stderr.flush()
                said = True
            time.sleep(0.05)
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"holder": holder, "pgid": os.getpgid(0), "pid": os.getpid(),
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    handle.flush()
    _held_leases.append(handle)
    return {"holder": holder, "waited_s": time.monotonic() - started, "start": time.time(), "evicted": evicted}


def _lease_record(handle: Any) -> dict[str, Any]:
    """What the lease's holder wrote: who, its process group, since when."""
    handle.seek(0)
    text = handle.read().strip()
    try:
        record = json.loads(text)
    except ValueError:
        return {"holder": text or "another process"}
    return record if isinstance(record, dict) else {"holder": text}


def _lease_text(record: dict[str, Any]) -> str:
    since = f" since {record['since']}" if record.get("since") else ""
    return f"{record.get('holder', 'another process')}{since}"


# --------------------------------------------------------------------------------------------- statistics


def _quantile(ordered: list[float], q: float) -> float:
    """Linear-interpolation quantile of already sorted values (numpy's default method)."""
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(samples: list[float]) -> dict[str, float]:
    """Median, IQR, p90 and coefficient of variation of the samples (shared with ``profilers.base``)."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    mean = statistics.fmean(ordered)
    std = statistics.stdev(ordered) if len(ordered) > 1 else 0.0
    return {
        "median_ms": statistics.median(ordered),
        "iqr_ms": _quantile(ordered, 0.75) - _quantile(ordered, 0.25),
        "p90_ms": _quantile(ordered, 0.9),
        "cov": std / mean if mean > 0 else 0.0,
        "n": len(ordered),
    }


# --------------------------------------------------------------------------------------- device conditions


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _cpu_model() -> str | None:
    text = _read("/proc/cpuinfo") or ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    for key in ("model name", "Model", "Hardware", "cpu model"):
        if fields.get(key):
            return fields[key]
    if fields.get("CPU part"):  # ARM without a model name: report the implementer and part numbers
        return f"ARM implementer {fields.get('CPU implementer', '?')} part {fields['CPU part']}"
    return platform.processor() or None


def _throttled() -> str | None:
    """``vcgencmd get_throttled`` as a hex string (Raspberry Pi only), else None."""
    if shutil.which("vcgencmd") is None:
        return None
    try:
        out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    _, _, value = out.strip().partition("=")
    return value or None


def conditions() -> dict[str, Any]:
    """What the device looks like right now; fields the device does not expose are None."""
    cpufreq = "/sys/devices/system/cpu/cpu0/cpufreq/"
    freq = _read(cpufreq + "scaling_cur_freq")
    temp = _read("/sys/class/thermal/thermal_zone0/temp")
    return {
        "cpu_model": _cpu_model(),
        "governor": _read(cpufreq + "scaling_governor"),
        "freq_mhz": int(freq) / 1000 if freq and freq.isdigit() else None,
        "temp_c": int(temp) / 1000 if temp and temp.lstrip("-").isdigit() else None,
        "throttled": _throttled(),
    }


def _is_throttling(before: str | None, after: str | None) -> bool:
    """True when the device is throttled now or a throttle event happened since ``before``."""
    if after is None:
        return False
    try:
        now = int(after, 16)
        then = int(before, 16) if before else 0
    except ValueError:
        return False
    return bool(now & _THROTTLED_NOW) or (now >> 16) != (then >> 16)


# ------------------------------------------------------------------------------------------------ runtimes


def _load_runtime(name: str, threads: int | None) -> tuple[str, Callable[[str, list[int]], Callable[[], Any]]]:
    """Import the runtime and return (version, make_session); make_session(path, shape) -> run()."""
    if name == "onnxruntime":
        try:
            import numpy as np
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeMissing(str(exc)) from exc

        def make_onnx(path: str, shape: list[int]) -> Callable[[], Any]:
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            try:
                session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            except MemoryError:
                raise
            except Exception as exc:  # onnxruntime raises its own classes for every load failure
                raise _classify(exc, path) from exc
            feed = {session.get_inputs()[0].name: np.random.default_rng(0).random(shape, dtype=np.float32)}
            return lambda: session.run(None, feed)

        return ort.__version__, make_onnx

    if name == "torch":
        try:
            import torch
        except ImportError as exc:
            raise RuntimeMissing(str(exc)) from exc
        if threads:
            torch.set_num_threads(threads)

        def make_torch(path: str, shape: list[int]) -> Callable[[], Any]:
            try:
                module = torch.jit.load(path, map_location="cpu").eval()
            except MemoryError:
                raise
            except Exception as exc:  # torch.jit.load raises RuntimeError and friends
                raise _classify(exc, path) from exc
            data = torch.rand(*shape)

            def run() -> Any:
                with torch.inference_mode():
                    return module(data)

            return run

        return torch.__version__, make_torch

    if name == "litert":  # TensorFlow Lite's successor; its CPU path is XNNPACK, what a Pi deploys with
        try:
            import numpy as np
            from ai_edge_litert import interpreter as litert
        except ImportError as exc:
            raise RuntimeMissing(str(exc)) from exc

        def make_litert(path: str, shape: list[int]) -> Callable[[], Any]:
            try:
                model = litert.Interpreter(model_path=path, num_threads=threads or None)
                model.allocate_tensors()
                (entry,) = model.get_input_details()
                if list(entry["shape"]) != list(shape):
                    model.resize_tensor_input(entry["index"], shape)
                    model.allocate_tensors()
                data = np.random.default_rng(0).random(shape, dtype=np.float32)
                if entry["dtype"] != np.float32:  # a full-integer model: its input quantized as the file says
                    scale, zero = entry["quantization"]
                    limits = np.iinfo(entry["dtype"])
                    data = np.clip(np.round(data / scale + zero), limits.min, limits.max).astype(entry["dtype"])
                model.set_tensor(entry["index"], data)
            except MemoryError:
                raise
            except Exception as exc:  # the interpreter raises ValueError and RuntimeError for a bad file
                raise _classify(exc, path) from exc
            return model.invoke

        return _litert_version(litert), make_litert

    raise JobError(f"unknown runtime {name!r}; expected one of {', '.join(RUNTIMES)}")


def _litert_version(module: Any) -> str:
    try:
        from importlib.metadata import version

        return version("ai-edge-litert")
    except Exception:  # an interpreter installed some other way
        return str(getattr(module, "__version__", "unknown"))


def _classify(exc: BaseException, path: str) -> BaseException:
    """Runtimes report allocation failures as generic errors; tell them apart by their text."""
    text = str(exc)
    if any(marker in text for marker in ("bad_alloc", "Failed to allocate", "out of memory")):
        return MemoryError(f"{os.path.basename(path)}: {text.splitlines()[0] if text else type(exc).__name__}")
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return BadModel(f"{os.path.basename(path)}: {first}")


# --------------------------------------------------------------------------------------------- measurement


class _Model:
    """One model being measured: its run function and calibrated repeat size."""

    def __init__(self, path: str, run: Callable[[], Any]) -> None:
        self.path = path
        self.run = run
        self.number = 1

    def warm_up(self, warmup_s: float, repeat_s: float) -> None:
        """Run for ``warmup_s``; size a repeat from the steadier second half of the warm-up runs."""
        durations: list[float] = []
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            self._call()
            durations.append(time.perf_counter() - t0)
            if time.perf_counter() - start >= warmup_s and len(durations) >= 2:
                break
        per_call = statistics.median(durations[len(durations) // 2 :])
        self.number = max(1, math.ceil(repeat_s / max(per_call, 1e-9)))

    def repeat(self) -> float:
        """One timed repeat; milliseconds per inference."""
        run, number = self.run, self.number
        t0 = time.perf_counter()
        for _ in range(number):
            run()
        return (time.perf_counter() - t0) * 1000.0 / number

    def _call(self) -> None:
        try:
            self.run()
        except MemoryError:
            raise
        except Exception as exc:  # a model that loads but cannot run at this shape
            raise _classify(exc, self.path) from exc



def _settings(raw: dict[str, Any]) -> dict[str, float]:
    unknown = set(raw) - set(DEFAULT_SETTINGS)
    if unknown:
        raise JobError(f"unknown settings: {', '.join(sorted(unknown))}")
    merged = {**DEFAULT_SETTINGS, **raw}
    for key, value in merged.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise JobError(f"setting {key} must be a non-negative number, got {value!r}")
    if merged["repeats"] < 2 or merged["max_attempts"] < 1:
        raise JobError("settings need repeats >= 2 and max_attempts >= 1")
    return merged


def _shapes(raw: Any, count: int) -> list[list[int]]:
    """One input shape for every model, or a list with one shape per model."""
    if raw and all(isinstance(item, list) for item in raw):
        if len(raw) != count:
            raise ValueError(f"{len(raw)} input shapes for {count} models")
        return [[int(dim) for dim in item] for item in raw]
    return [[int(dim) for dim in raw]] * count


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Run a job (see the module docstring) and return the result document."""
    try:
        paths = [str(path) for path in job["models"]]
        shapes = _shapes(job["input_shape"], len(paths))
        runtime = str(job.get("runtime", "onnxruntime"))
        threads = job.get("threads")
    except (KeyError, TypeError, ValueError) as exc:
        raise JobError(f"job needs models and input_shape: {exc}") from exc
    if not paths:
        raise JobError("job lists no models")
    settings = _settings(dict(job.get("settings") or {}))
    lease = take_lease(job["lease"]) if job.get("lease") else None
    version, make_session = _load_runtime(runtime, int(threads) if threads else None)

    before = conditions()
    models = [_Model(path, make_session(path, shape)) for path, shape in zip(paths, shapes)]
    # The device warms up for warmup_s in all; each model for at least one repeat's length (enough for
    # lazy initialisation and to size its repeats), so many small models do not cost 0.5 s each.
    per_model = max(settings["repeat_s"], settings["warmup_s"] / len(models))
    for model in models:
        model.warm_up(per_model, settings["repeat_s"])

    # Every attempt measures every model, and one attempt is kept for all: samples of different models
    # then always come from the same stretch of time, so comparing them stays fair.
    attempts: list[dict[str, Any]] = []
    for attempt in range(int(settings["max_attempts"])):
        if settings["cooldown_s"] and attempt > 0:
            time.sleep(settings["cooldown_s"])
        flags_before = _throttled()
        samples: list[list[float]] = [[] for _ in models]
        for _ in range(int(settings["repeats"])):
            for model, row in zip(models, samples):  # round-robin: interleaved repeats
                row.append(model.repeat())
        covs = [summarize(row)["cov"] for row in samples]
        attempts.append({"samples": samples, "covs": covs, "throttled": _is_throttling(flags_before, _throttled())})
        if not attempts[-1]["throttled"] and max(covs) <= settings["max_cov"]:
            break
    kept = min(attempts, key=lambda a: (a["throttled"], max(a["covs"])))

    results = [
        {
            "model": model.path,
            "samples_ms": row,
            "number": model.number,
            "attempts": len(attempts),
            "stable": cov <= settings["max_cov"] and not kept["throttled"],
        }
        for model, row, cov in zip(models, kept["samples"], kept["covs"])
    ]
    throttle_events = sum(a["throttled"] for a in attempts)
    after = conditions()
    if lease is not None:
        lease["end"] = time.time()
    return {
        "ok": True,
        "lease": lease,
        "runtime": runtime,
        "runtime_version": version,
        "threads": int(threads) if threads else None,
        "settings": settings,
        "conditions": {**after, "temp_c_before": before["temp_c"], "throttle_events": throttle_events},
        "results": results,
    }


def info(job: dict[str, Any]) -> dict[str, Any]:
    """Describe the device and check that the runtime imports, without measuring anything."""
    runtime = str(job.get("runtime", "onnxruntime"))
    threads = job.get("threads")
    version, _ = _load_runtime(runtime, int(threads) if threads else None)
    return {
        "ok": True,
        "runtime": runtime,
        "runtime_version": version,
        "threads": int(threads) if threads else None,
        "python": sys.executable,
        "python_version": platform.python_version(),
        "machine": platform.machine(),
        "system": platform.system(),
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "conditions": conditions(),
    }


# ----------------------------------------------------------------------------------------------------- CLI


def _watch_stdin() -> None:
    """Exit when stdin closes: the caller (an SSH session, a parent process) is gone, so stop working."""

    def watch() -> None:
        # os.read on the raw descriptor: a buffered read would hold a lock that interpreter shutdown needs.
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()


def _emit(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _fail(kind: str, message: str, code: int) -> int:
    _emit({"ok": False, "error": kind, "message": message})
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure model latency (dac-search runner).")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--job", help="path to the JSON job, or - for stdin")
    mode.add_argument("--info", metavar="JSON", help="describe the device for this runtime/threads")
    parser.add_argument("--watch-stdin", action="store_true", help="exit when stdin reaches EOF")
    args = parser.parse_args(argv)
    try:
        if args.info is not None:
            _emit(info(json.loads(args.info)))
            return EXIT_OK
        if args.job == "-":
            job = json.loads(sys.stdin.readline())
        else:
            with open(args.job, encoding="utf-8") as handle:
                job = json.load(handle)
        if args.watch_stdin:
            _watch_stdin()
        _emit(measure(job))
        return EXIT_OK
    except RuntimeMissing as exc:
        return _fail("runtime_missing", str(exc), EXIT_RUNTIME_MISSING)
    except MemoryError as exc:
        return _fail("out_of_memory", str(exc) or "MemoryError", EXIT_OUT_OF_MEMORY)
    except BadModel as exc:
        return _fail("bad_model", str(exc), EXIT_BAD_MODEL)
    except LeaseTimeout as exc:
        return _fail("lease_timeout", str(exc), EXIT_LEASE_TIMEOUT)
    except (JobError, OSError, ValueError) as exc:
        return _fail("bad_job", f"{type(exc).__name__}: {exc}", EXIT_BAD_JOB)


if __name__ == "__main__":
    sys.exit(main())
