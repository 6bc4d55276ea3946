"""Atomic writes: the user's umask, no half file, and a disk that refuses is one line naming the file."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dac_search import atomic
from dac_search.atomic import WriteFailed, write_text_atomic


def test_files_get_the_mode_the_umask_gives(tmp_path: Path) -> None:
    for umask, mode in ((0o022, 0o644), (0o077, 0o600)):
        target = tmp_path / f"run-{umask:o}.json"
        code = (f"import os; os.umask({umask}); from dac_search.atomic import write_text_atomic; "
                f"write_text_atomic({str(target)!r}, '{{}}')")
        subprocess.run([sys.executable, "-c", code], check=True)
        assert target.stat().st_mode & 0o777 == mode


def test_a_refused_write_is_one_line_and_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = write_text_atomic(tmp_path / "run.json", '{"old": true}')

    def full(*_: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(WriteFailed) as raised:
        write_text_atomic(target, '{"new": true}')
    assert str(raised.value) == f"cannot write {target}: No space left on device" and raised.value.exit_code == 1
    assert target.read_text() == '{"old": true}' and [p.name for p in tmp_path.iterdir()] == ["run.json"]
