"""What a reconstruction did, as data: the ``reconstruction`` object of a plan file.

A plan rebuilds its model from itself alone, so every setting that shapes the reconstructed weights is
here: the synthetic images (kind, count, seed), the gradient steps per region and end to end, the
learning rate, the batch and which regions are fitted. A leaf module (no torch): ``dac_search.plan``
reads and writes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from dac_search.errors import PlanError

SCOPES = ("changed", "all")  # fit the regions the plan changes, or every region with weights
GRANULARITIES = ("blocks", "ops")  # where the network is cut into regions (``dac_search.reconstruction.regions``)
LIMIT = 1_000_000  # a sanity bound on every count, so a typo is refused rather than run for days


@dataclass(frozen=True)
class ReconstructionSettings:
    """Block-wise reconstruction on synthetic images (see ``dac_search.reconstruction.engine``).

    ``inputs``: the kind of synthetic images (``dac_search.proxies.synthetic``; ``auto`` resolved by the
    model), ``images`` of them made from ``seed`` (not the seeds the proxy fits or scores on, so the
    proxy after reconstruction is taken on images it was not fitted to). ``steps``: Adam steps per region,
    ``batch`` images each; ``lr``: Adam's learning rate. ``logit_steps``: then as many steps on the whole
    network, its logits distilled from the original's (KL), at ``logit_lr``: every weight at once moves
    far more than one region's (at 1e-3, 100 steps took a MobileNet-V2 plan from 72.0% to 0.0%; at 1e-5
    they left it at 72.0%). ``scope``: ``changed`` fits the regions
    holding a layer the plan changes; ``all`` every region with weights (later ones absorb the drift).
    ``regions``: ``blocks`` cuts the network only between the modules that hold its ops (a torchvision
    ``InvertedResidual`` or ``Conv2dNormActivation`` is fitted whole, its nonlinearities inside);
    ``ops`` at every point one tensor carries everything, which cuts a plain chain after every op. A
    plan written before the field existed was cut by ops, and is read so. ``rounding_steps``: of a plan with
    int8 layers, Adam steps a region learning their weights' rounding (``dac_search.reconstruction.rounding``)
    at ``rounding_lr``, after the float fit; 0, and a plan without the fields: rounded to nearest by the
    quantizer. The rate is AdaRound's variables', not the weights': 100 steps at 1e-2 took MobileNet-V2 in
    int8 from 83.6% to 85.4%, 300 steps no further.
    """

    steps: int = 200
    images: int = 1024
    batch: int = 64
    lr: float = 1e-3
    seed: int = 2
    inputs: str = "auto"
    scope: str = "changed"
    logit_steps: int = 0
    logit_lr: float = 1e-5
    regions: str = "blocks"
    rounding_steps: int = 0
    rounding_lr: float = 1e-2

    def __post_init__(self) -> None:
        for name in ("steps", "images", "batch", "seed", "logit_steps", "rounding_steps"):
            value = getattr(self, name)
            lowest = 1 if name in ("images", "batch") else 0
            if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= LIMIT:
                raise PlanError(f"reconstruction: {name} must be an integer >= {lowest}, got {value!r}")
        for name in ("lr", "logit_lr", "rounding_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise PlanError(f"reconstruction: {name} must be a number in (0, 1), got {value!r}")
        if self.scope not in SCOPES:
            raise PlanError(f"reconstruction: scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if self.regions not in GRANULARITIES:
            raise PlanError(f"reconstruction: regions must be one of {', '.join(GRANULARITIES)}, "
                            f"got {self.regions!r}")
        if not isinstance(self.inputs, str):
            raise PlanError(f"reconstruction: inputs must be a kind of synthetic images, got {self.inputs!r}")

    @property
    def trains(self) -> bool:
        """False for zero steps everywhere: the closed-form model, exactly."""
        return self.steps > 0 or self.logit_steps > 0 or self.rounding_steps > 0

    def without_rounding(self) -> ReconstructionSettings:
        """The same float fitting, the int8 weights rounded to nearest: what a plan's float network is made with."""
        return replace(self, rounding_steps=0, rounding_lr=ReconstructionSettings.rounding_lr)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.rounding_steps:  # nearest, as plans said before learned rounding existed
            del data["rounding_steps"], data["rounding_lr"]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ReconstructionSettings:
        if not isinstance(data, Mapping):
            raise PlanError(f"reconstruction must be an object of settings, got {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise PlanError(f"reconstruction: unknown keys {sorted(unknown)}")
        values = {
            key: float(v)
            if key in ("lr", "logit_lr", "rounding_lr") and isinstance(v, int) and not isinstance(v, bool)
            else v
            for key, v in data.items()
        }
        # what a plan meant before it said: cut by ops, its logit steps at the regions' rate
        return cls(**{"regions": "ops", "logit_lr": values.get("lr", cls.lr), **values})
