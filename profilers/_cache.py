"""The device's cache of uploaded files (the runner, model files): checked by content, pruned by age.

Files are named by their sha256, but a name proves nothing: each file is hashed on the device the first time
a connection uses it, a file whose bytes differ is removed and uploaded again, so a planted or torn file is
never run. Each use touches the file; files not used for ``MIN_AGE_S`` are evicted, least recently used
first, while the cache is above its cap (an SD card must not fill up over a week of searches), and
``.part-*`` leftovers of dropped uploads are removed after the same age. The age keeps a file another
worker has just staged for its own measurement out of reach.

``SCRIPT`` runs on the device as ``python -c SCRIPT JSON``: standard library only, nothing uploaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MIN_AGE_S = 3600.0

SCRIPT = r"""
import hashlib, json, os, sys, time
job = json.loads(sys.argv[1])
present = []
for path, digest in job["check"].items():
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except FileNotFoundError:
        continue
    if h.hexdigest() == digest:
        os.utime(path)
        present.append(path)
    else:
        os.remove(path)
for path in job["touch"]:
    try:
        os.utime(path)
        present.append(path)
    except FileNotFoundError:
        pass
now, wanted = time.time(), set(job["check"]) | set(job["touch"])
files, total, evicted = [], 0, 0
for name in os.listdir(job["dir"]):
    path = os.path.join(job["dir"], name)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        continue
    old = now - st.st_mtime > job["min_age_s"]
    if ".part-" in name:
        if old:
            os.remove(path)
        continue
    total += st.st_size
    if old and path not in wanted:
        files.append((st.st_mtime, st.st_size, path))
for mtime, size, path in sorted(files):
    if total <= job["cap_bytes"]:
        break
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    total, evicted = total - size, evicted + 1
print(json.dumps({"present": present, "evicted": evicted, "bytes": total}))
"""


@dataclass(frozen=True)
class CacheAnswer:
    present: frozenset[str]  # wanted files the device has, with the right bytes
    evicted: int
    bytes: int  # the models cache's size after eviction


def request(models_dir: str, check: Mapping[str, str], touch: Sequence[str], cap_bytes: int,
            min_age_s: float = MIN_AGE_S) -> str:
    """The JSON argument of ``SCRIPT``: remote path -> sha256 to check, remote paths already checked."""
    return json.dumps({"dir": models_dir, "check": dict(check), "touch": list(touch), "cap_bytes": int(cap_bytes),
                       "min_age_s": float(min_age_s)})


def answer(stdout: str) -> CacheAnswer:
    document = json.loads(stdout.strip().splitlines()[-1])
    return CacheAnswer(frozenset(document["present"]), int(document["evicted"]), int(document["bytes"]))
