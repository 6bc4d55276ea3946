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
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import torch
from torch import nn

from dac_search.atomic import write_text_atomic
from dac_search.decompose import decomposable_layers, rank_limit
from dac_search.errors import ConfigError
from dac_search.int8_model import int8_variants
from dac_search.int8_simulation import Int8Calibration
from dac_search.precision import QuantScheme
from dac_search.progress import OnProgress
from dac_search.proxies.calibration import calibration_inputs
from dac_search.proxies.layer import RankChoice, resolve_ranks
from dac_search.proxies.model import ModelProxy, layer_sensitivity
from dac_search.proxies.outputs import compare, distributions_of
from dac_search.proxies.synthetic import cache_root, model_fingerprint

Key = tuple[str, str, int]


def cached_layer_sensitivity(proxy: ModelProxy, layers: Sequence[str], methods: Sequence[str],
                             ranks: RankChoice = None, on_progress: OnProgress | None = None) -> dict[Key, float]:
    """``layer_sensitivity`` with its entries kept on disk; only entries not yet there are measured (and
    counted in ``on_progress``)."""
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
    if any(missing.values()):
        todo = sorted({name for (name, _), rs in missing.items() if rs})
        known.update(layer_sensitivity(proxy, todo, methods, lambda name, method: missing[(name, method)], on_progress))
        write_text_atomic(path, json.dumps([[*key, value] for key, value in sorted(known.items())]))
    return {(name, method, r): known[(name, method, r)] for (name, method), rs in wanted.items() for r in rs}


def cached_int8_sensitivity(proxy: ModelProxy, layers: Sequence[str], scheme: QuantScheme,
                            on_progress: OnProgress | None = None) -> dict[str, float]:
    """The proxy's KL of the original with the int8 ops every int8 plan has (additions, pooling: key ``""``, no
    conv in int8), and with each layer in int8 besides them, scored as the proxy scores int8 plans
    (``int8_scoring``): simulated, all from one calibration of the original, or one quantized model per layer
    run by ONNX Runtime, all from one export and one calibration (``int8_variants``). Kept on disk beside the
    single-layer table (method ``int8:<scheme>``, or ``int8-simulated:<scheme>``, rank 0)."""
    path = cache_path(proxy)
    known = _read(path)
    simulated = proxy.int8_scoring == "simulated"
    method = ("int8-simulated:" if simulated else "int8:") \
        + hashlib.sha256(json.dumps(scheme.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    shape = (1, *proxy.inputs.shape[1:])
    wanted = ["", *layers]
    missing = [name for name in wanted if (name, method, 0) not in known]
    distributions = distributions_of(proxy.model, proxy.reference_logits)
    if missing:
        calibration = calibration_inputs(proxy.model, shape, scheme)
        with ExitStack() as stack:
            calibrated = Int8Calibration.of(proxy.model, scheme, calibration) if simulated else None
            file_variant = None
            for done, name in enumerate(missing):
                layer_set = frozenset({name}) if name else frozenset()
                model: nn.Module | None = None if calibrated is None else calibrated.simulate(layer_set)
                if model is None:
                    if file_variant is None:
                        file_variant = stack.enter_context(int8_variants(proxy.model, scheme, calibration, shape))
                    model = file_variant(layer_set)
                with torch.no_grad():
                    known[(name, method, 0)] = compare(proxy.reference_logits, model(proxy.inputs), distributions).kl
                if on_progress is not None:
                    on_progress(done + 1, len(missing))
        write_text_atomic(path, json.dumps([[*key, value] for key, value in sorted(known.items())]))
    return {name: known[(name, method, 0)] for name in wanted}


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
