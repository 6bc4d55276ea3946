"""What a search is, as far as its scores go: the settings that change a trial's score or what it means,
a study name derived from them, and the one-line refusal when a worker or a resume differs.

Two searches with other settings must never share a study (their trials would be scored differently
and end up on one front), and workers sharing one must agree on every one of these settings.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from dac_search.errors import ConfigError
from dac_search.precision import INT8, QuantScheme
from dac_search.search.config import SearchConfig

LEGACY_STUDY = "dac-search"  # the one study name of run dirs written before names were derived
# Settings added since, as run dirs from before them were searched (every layer fp32, the default fit)
LEGACY_SETTINGS = {"precisions": "fp32", "fit_images": "default"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class SearchIdentity:
    name: str
    settings: tuple[tuple[str, str], ...]

    @property
    def settings_dict(self) -> dict[str, str]:
        return dict(self.settings)


def settings_of(config: SearchConfig) -> tuple[tuple[str, str], ...]:
    """Every setting that changes a trial's score, cost or feasibility, as text (run.json and the study)."""
    shape = "default" if config.input_shape is None else ",".join(map(str, config.input_shape))
    return (("model", config.model), ("weights", config.weights or "default"), ("input_shape", shape),
            ("device", config.device), ("budget", config.budget.text), ("methods", ",".join(config.methods)),
            ("correction", config.correction or "none"), ("inputs", config.inputs),
            ("proxy_images", str(config.proxy_images)), ("seed", str(config.seed)),
            ("precisions", ",".join(config.precisions)),
            ("fit_images", str(config.fit_images or "default")),  # what every plan's own model is fitted on
            *((("int8_scheme", json.dumps(QuantScheme().to_dict(), sort_keys=True)),) if INT8 in config.precisions
              else ()))


def identity_of(config: SearchConfig, study: str | None = None) -> SearchIdentity:
    """``study`` (``--study``) or a name read off the settings: model, device, budget and a digest of all."""
    settings = settings_of(config)
    if study is None:
        digest = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:8]
        study = _UNSAFE.sub("_", f"{config.model_label}-{config.device_label}-{config.budget.text}-{digest}")
    return SearchIdentity(study, settings)


def refuse_difference(where: str, recorded: dict[str, str], settings: tuple[tuple[str, str], ...]) -> None:
    """One line naming the first setting that differs from what ``where`` was searched with."""
    recorded = {**LEGACY_SETTINGS, **recorded}
    for key, value in settings:
        if key in recorded and recorded[key] != value:
            raise ConfigError(f"{where} was searched with {key} {recorded[key]!r}, not {value!r}: "
                              f"run with the same settings, or use another --out/--study")
