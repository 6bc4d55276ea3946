"""The single-layer KL table on disk: measured once per proxy, shared by every search and benchmark.

It is the slow part of a cold start (about 10 minutes for ResNet-56 with the refit, more with every
method) and depends on the proxy alone: weights, scored and fitted inputs, correction and its settings.
Entries accumulate in one file per proxy, so a search over DAC alone reuses a table measured for every
method, and only the missing (layer, method, rank) entries are ever measured. Writes are atomic; two
processes filling the same table at once may drop each other's new entries, which are then measured again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from dac_search.atomic import write_text_atomic
from dac_search.decompose import decomposable_layers, rank_limit
from dac_search.errors import ConfigError
from dac_search.proxies.layer import RankChoice, resolve_ranks
from dac_search.proxies.model import ModelProxy, layer_sensitivity
from dac_search.proxies.synthetic import cache_root, model_fingerprint

Key = tuple[str, str, int]


def cached_layer_sensitivity(proxy: ModelProxy, layers: Sequence[str], methods: Sequence[str],
                             ranks: RankChoice = None,
                             say: Callable[[str], None] | None = None) -> dict[Key, float]:
    """``layer_sensitivity`` with its entries kept on disk; only entries not yet there are measured."""
    path = cache_path(proxy)
    known = _read(path)
    convs = decomposable_layers(proxy.model)
    wanted: dict[tuple[str, str], list[int]] = {}
    for name in layers:
        if name not in convs:
            raise ConfigError(f"layer {name!r} is not a decomposable conv of this model")
        for method in methods:
            wanted[(name, method)] = resolve_ranks(ranks, name, method, rank_limit(convs[name], method))
    missing = {key: [r for r in rs if (*key, r) not in known] for key, rs in wanted.items()}
    count = sum(len(rs) for rs in missing.values())
    if count:
        if say is not None:
            say(f"measuring the proxy of {count} single-layer changes")
        todo = sorted({name for (name, _), rs in missing.items() if rs})
        known.update(layer_sensitivity(proxy, todo, methods, lambda name, method: missing[(name, method)]))
        write_text_atomic(path, json.dumps([[*key, value] for key, value in sorted(known.items())]))
    return {(name, method, r): known[(name, method, r)] for (name, method), rs in wanted.items() for r in rs}


def cache_path(proxy: ModelProxy) -> Path:
    """One file per proxy: same weights, inputs, correction and settings give the same entries."""
    digest = hashlib.sha256()
    digest.update(model_fingerprint(proxy.model).encode())
    digest.update(_tensor_bytes(proxy.inputs))
    if proxy.held_out:
        digest.update(b"fit:" + _tensor_bytes(proxy.fit_inputs))
    digest.update(repr((proxy.correction, proxy.settings if proxy.correction else None)).encode())
    return cache_root() / "sensitivity" / f"table-{digest.hexdigest()[:32]}.json"


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().numpy().tobytes()


def _read(path: Path) -> dict[Key, float]:
    """The entries on disk; an unreadable file (a crash mid-write cannot leave one) counts as empty."""
    try:
        rows = json.loads(path.read_text())
        return {(str(r[0]), str(r[1]), int(r[2])): float(r[3]) for r in rows}
    except (OSError, ValueError, TypeError, IndexError):
        return {}
