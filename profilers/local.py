"""Measure on this machine: runner.py in a subprocess, so the measured process is fresh and pinnable."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from profilers import _protocol, errors
from profilers.base import LatencyResult, MeasureSettings, Profiler
from profilers.devices import DeviceConfig


class LocalProfiler(Profiler):
    """Runs ``runner.py`` with the configured python, pinned with ``taskset`` when ``cpus`` is set."""

    def __init__(self, config: DeviceConfig | None = None) -> None:
        self.config = config or DeviceConfig(name="local")
        self.name = self.config.name
        self.runtime = self.config.runtime
        self.threads = self.config.threads

    def measure_many(
        self,
        artifacts: Sequence[Path],
        input_shape: Sequence[int] | Sequence[Sequence[int]],
        *,
        runtime: str | None = None,
        settings: MeasureSettings | None = None,
    ) -> list[LatencyResult]:
        if not artifacts:
            return []
        ctx = self._context(runtime)
        paths = [Path(artifact).resolve() for artifact in artifacts]
        missing = [str(path) for path in paths if not path.is_file()]
        if missing:
            raise errors.BadModel(f"no such model file: {missing[0]}")
        shapes = _protocol.shapes(input_shape, len(paths))
        wait = self.config.lease_wait(len(paths), settings)
        document = _protocol.job(
            [str(p) for p in paths], shapes, ctx.runtime, self.config.threads, settings or self.config.measure,
            _protocol.lease(str(local_lease_path()), wait),
        )
        with tempfile.TemporaryDirectory(prefix="dac-search-") as tmp:
            job_path = Path(tmp) / "job.json"
            job_path.write_text(json.dumps(document), encoding="utf-8")
            limit = self.config.runner_timeout(len(paths), settings) + wait
            outcome = self._run(["--job", str(job_path)], limit, tmp)
        return _protocol.results(_protocol.decode(outcome, ctx), paths, shapes, ctx)

    def info(self, *, runtime: str | None = None) -> dict[str, Any]:
        ctx = self._context(runtime)
        argument = _protocol.info_argument(ctx.runtime, self.config.threads)
        with tempfile.TemporaryDirectory(prefix="dac-search-") as tmp:
            outcome = self._run(["--info", argument], self.config.timeout_s, tmp)
        document = _protocol.decode(outcome, ctx)
        return {"device": self.name, "kind": "local", "cpus": list(self.config.cpus), **document}

    def close(self) -> None:
        """Nothing persistent to release."""

    def _context(self, runtime: str | None) -> _protocol.Context:
        return _protocol.Context(
            device=self.name, python=self.config.python_path, runtime=runtime or self.config.runtime
        )

    def _command(self, arguments: list[str]) -> list[str]:
        command = [self.config.python_path, str(_protocol.RUNNER_PATH), *arguments]
        if self.config.cpus:
            taskset = shutil.which("taskset")
            if taskset is None:
                raise errors.RunnerFailed(f"{self.name}: cpus are set but taskset is not installed (util-linux)")
            command = [taskset, "-c", ",".join(map(str, self.config.cpus)), *command]
        return command

    def _run(self, arguments: list[str], limit_s: float, workdir: str) -> _protocol.RunnerOutcome:
        """Run the runner in its own process group, so a timeout kills it and anything it started."""
        command = self._command(arguments)
        env = {**os.environ, "TMPDIR": workdir}
        start = time.monotonic()
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=workdir,
                env=env,
                start_new_session=True,
            )
        except FileNotFoundError:
            return _protocol.RunnerOutcome(127, "", f"{command[0]}: not found", 0.0, limit_s)
        except PermissionError:
            return _protocol.RunnerOutcome(126, "", f"{command[0]}: not executable", 0.0, limit_s)
        # both pipes read as they come (neither fills and blocks the runner); stderr lines are heard at once
        out, err = _Reader(process.stdout), _Reader(process.stderr, self.runner_said)
        try:
            process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid)
            process.wait()
            return _protocol.RunnerOutcome(124, out.text(), err.text(), time.monotonic() - start, limit_s)
        finally:
            if process.poll() is None:  # interrupted (Ctrl-C): do not leave the runner behind
                _kill_group(process.pid)
                process.wait()
        return _protocol.RunnerOutcome(process.returncode, out.text(), err.text(), time.monotonic() - start, limit_s)


class _Reader:
    """One pipe of the runner read to its end on a thread, each line handed to ``on_line`` as it comes."""

    def __init__(self, pipe: Any, on_line: Callable[[str], None] | None = None) -> None:
        self._lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(pipe, on_line), daemon=True)
        self._thread.start()

    def _read(self, pipe: Any, on_line: Callable[[str], None] | None) -> None:
        with pipe:
            for line in pipe:
                self._lines.append(line)
                if on_line is not None:
                    on_line(line.rstrip("\n"))

    def text(self) -> str:
        self._thread.join()
        return "".join(self._lines)


def local_lease_path() -> Path:
    """This machine's lease, per user (a shared file in /tmp would let another user hold it for good):
    every local device config and every search of this user measure one at a time."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dac-search"
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return root / _protocol.LEASE_FILE


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
