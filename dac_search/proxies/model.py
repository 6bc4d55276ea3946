"""The model proxy: how far a decomposed model's outputs move from the original's on synthetic inputs
(KL of a classifier's softmax; outputs of any structure as ``outputs`` compares them).

It sees through the network, where the layer proxies cannot: an early layer with a small weight error
can move the logits more than a late one with a large error. The original logits and the per-layer
correction targets are computed once; each plan then costs one forward pass of the decomposed model,
the sequential correction included (it is fitted during that same pass), plus one more pass when the
score is taken on held-out inputs. Factorised layers run as the dense convs they equal (same function,
the original model's speed): about 0.3 s per plan for ResNet-56 with 64 images on one core, 0.9 s with
the refit (1.2 s held out).
"""

from __future__ import annotations

import copy
import itertools
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from dac_search.decompose import decomposable_layers, rank_limit, validate_plan
from dac_search.decompose.graph import check_site, model_graph
from dac_search.errors import ConfigError, PlanError
from dac_search.int8_model import CalibratedFloat
from dac_search.int8_simulation import Int8Calibration
from dac_search.methods import default_variant
from dac_search.plan import LayerChoice, RankPlan
from dac_search.progress import OnProgress, part_of
from dac_search.proxies._hooks import eval_mode
from dac_search.proxies.apply import build_model, stream_branches
from dac_search.proxies.calibration import calibration_inputs, quantized
from dac_search.proxies.correction import (
    PassResult,
    Reference,
    RefitSettings,
    assemble,
    assemble_dense,
    check_correction,
    default_inputs,
    evaluate,
    initial_layers,
    reference,
    run_plan,
)
from dac_search.proxies.layer import RankChoice, resolve_ranks
from dac_search.proxies.outputs import ProxyScore, compare, distributions_of
from dac_search.proxies.replay import PartialPass, Prefix, record_prefix, run_network, verify_prefix

# Float models of recent int8 plans kept, each with its activation ranges (and, once built, its ONNX
# export): a search's trials often differ from an earlier one only in which layers are int8 (refinement moves
# one layer's precision), and such a plan then skips the refit pass and the calibration run.
FLOAT_MODELS_KEPT = 4
T = TypeVar("T")
# How int8 plans are scored: "simulated" (``dac_search.int8_simulation``: ONNX Runtime's quantizer and
# session rules followed in PyTorch; the same ranking, 0.55 s a plan against 0.80 s on ResNet-20 with the refit,
# ``benchmarks/int8_fidelity.py``; a model it cannot follow is scored on the file), or "onnxruntime" (the
# quantized file itself, run by ONNX Runtime).
INT8_SCORINGS = ("simulated", "onnxruntime")


class ModelProxy:
    """Scores plans of one model on fixed synthetic inputs, with an optional data-free correction.

    ``correction``: None, ``"bias"``, ``"refit"`` or ``"stream"`` (see ``correction.py``). A plan naming a different
    correction is refused; ``build`` gives the model the score judged (``decompose_model`` builds a plan's
    own model, with the same layers fitted on more images: ``fit_of``). ``fit_inputs``: fit the
    correction on these and score on ``inputs`` (held out). Scored on the images it was fitted on, a
    refit looks better than it is, and more so the more it can fit: on ResNet-20 held-out scoring
    raised the proxy's Spearman rho against real top-1 from 0.87 to 0.94 (``default_proxy`` does it).
    ``int8_scoring``: how plans with int8 layers are scored (``INT8_SCORINGS``); every model ``build`` gives is
    ONNX Runtime's file. Not thread-safe.
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, correction: str | None = None, *,
                 settings: RefitSettings | None = None, fit_inputs: torch.Tensor | None = None,
                 int8_scoring: str = INT8_SCORINGS[0]) -> None:
        check_correction(correction)
        if int8_scoring not in INT8_SCORINGS:
            raise ConfigError(f"unknown int8 scoring {int8_scoring!r}; choose one of {', '.join(INT8_SCORINGS)}")
        self.int8_scoring = int8_scoring
        self.model = model
        self.inputs = inputs
        self.correction = correction
        self.settings = settings or RefitSettings()
        self.fit_inputs = inputs if fit_inputs is None or correction is None else fit_inputs
        self._workbench = copy.deepcopy(model).eval()  # planned convs are swapped in and out of it
        self._branches = stream_branches(model, correction)
        with eval_mode(model), torch.no_grad():
            if correction is None:
                self._reference = Reference(model(inputs), {})
            else:
                self._reference = reference(model, self.fit_inputs, settings=self.settings,
                                            shortcuts=self._branches.shortcuts if self._branches else None)
            self._scored_logits = model(inputs) if self.held_out else self._reference.logits
        self._distributions = distributions_of(model, self._scored_logits)
        self._front: _Front | None = None  # set while scoring one layer's changes (``changing``)
        self._calibrations: dict[tuple[Any, ...], torch.Tensor] = {}  # int8 calibration images by scheme
        self._float_models: OrderedDict[str, CalibratedFloat] = OrderedDict()  # by float plan, latest last
        self._simulations: OrderedDict[str, Int8Calibration | None] = OrderedDict()  # the same, traced
        self._exports: tempfile.TemporaryDirectory[str] | None = None  # where their ONNX files are
        self._export_numbers = itertools.count()

    @property
    def held_out(self) -> bool:
        """True when the correction is fitted on other images than the ones scored."""
        return self.fit_inputs is not self.inputs

    @property
    def reference_logits(self) -> torch.Tensor:
        """The original model's logits on the scored inputs."""
        return self._scored_logits

    def _plan(self, plan: RankPlan | Mapping[str, Any]) -> RankPlan:
        plan = RankPlan.coerce(plan)
        if plan.correction is not None and plan.correction != self.correction:
            raise ConfigError(f"the plan asks for correction {plan.correction!r} but this proxy applies "
                              f"{self.correction!r}")
        shape = plan.input_shape or (1, *self.inputs.shape[1:])
        return replace(plan, correction=self.correction, input_shape=shape)

    def _calibration(self, plan: RankPlan) -> torch.Tensor:
        """The images the plan's int8 layers are calibrated on (distilled once, kept for the next plan)."""
        assert plan.quantization is not None and plan.input_shape is not None
        key = (plan.quantization, plan.inputs, plan.input_shape[1:])
        if key not in self._calibrations:
            self._calibrations[key] = calibration_inputs(self.model, plan.input_shape, plan.quantization, plan.inputs)
        return self._calibrations[key]

    def _run(self, plan: RankPlan, partial: PartialPass | None = None) -> PassResult:
        return run_plan(self.model, self._workbench, plan, self.fit_inputs, self._reference, self.correction,
                        self.settings, self._branches, partial)

    @contextmanager
    def changing(self, layer: str) -> Iterator[None]:
        """Within it, a plan that changes only ``layer`` is scored without computing again what comes before
        that layer (replayed from one recorded pass of the original), and its fit stops after the last layer
        it fits when it is scored on other inputs: what a table of single-layer changes needs (the same
        scores in half the time on resnet50). Any other plan is scored as outside it."""
        with eval_mode(self.model), torch.no_grad():
            fit = record_prefix(self.model, self.fit_inputs, layer)
            scored = fit if not self.held_out else record_prefix(self.model, self.inputs, layer)
        usable = (fit is not None and scored is not None
                  and verify_prefix(self._workbench, fit, self._reference.logits)
                  and (scored is fit or verify_prefix(self._workbench, scored, self._scored_logits)))
        self._front = _Front(layer, fit, scored, self._consumer(layer)) if usable else None
        try:
            yield
        finally:
            self._front = None

    def _consumer(self, layer: str) -> str | None:
        """The conv a pruned ``layer`` feeds (the last one its pruning refits), None if it cannot be pruned."""
        try:  # PlanError: fx cannot trace the model, or this layer cannot be pruned
            return check_site(model_graph(self.model).sites, layer).consumer
        except PlanError:
            return None

    def build(self, plan: RankPlan | Mapping[str, Any], *, dense: bool = False) -> nn.Module:
        """The decomposed (and corrected) model the score judged, with real factorised layers, in eval mode.

        ``dense``: the same function with dense convs, to measure accuracy fast (never to deploy). A plan with
        int8 layers gives its int8 model (``dense``: its float model), calibrated as the plan says.
        """
        plan = self._plan(plan)
        if plan.int8_layers:
            if dense:
                return self.build(plan.in_fp32(), dense=True)
            kept = self._float_model(plan)
            return quantized(kept.model, plan, self.model, self._calibration(plan), kept).quantized()
        if _prunes(plan):
            return self._pruned(plan, dense)
        if plan.correction is None or not plan.layers:
            validate_plan(self.model, plan)
            layers = initial_layers(self.model, plan)
        else:
            layers = self._run(plan).layers
        return assemble_dense(self.model, layers) if dense else assemble(self.model, plan, layers)

    def _int8_scored(self, plan: RankPlan) -> nn.Module:
        """The model an int8 plan is scored with: its file simulated (``int8_scoring``) where the simulation
        follows the model, else the file run by ONNX Runtime."""
        if self.int8_scoring == "simulated":
            assert plan.quantization is not None
            scheme = plan.quantization
            calibrated = _kept(self._simulations, _float_key(plan), lambda: Int8Calibration.of(
                self.build(plan.in_fp32()), scheme, self._calibration(plan)))
            simulation = None if calibrated is None else calibrated.simulate(plan.int8_layers)
            if simulation is not None:
                return simulation
        return self.build(plan)

    def _float_model(self, plan: RankPlan) -> CalibratedFloat:
        """The float model of an int8 plan, exported, with its ranges kept once measured: built now, or kept
        from an earlier plan with the same float layers and calibration (``FLOAT_MODELS_KEPT``)."""
        assert plan.input_shape is not None
        shape = plan.input_shape

        def written() -> CalibratedFloat:
            if self._exports is None:
                self._exports = tempfile.TemporaryDirectory(prefix="dac-search-proxy-")
            directory = Path(self._exports.name) / str(next(self._export_numbers))
            directory.mkdir()
            return CalibratedFloat.written(self.build(plan.in_fp32()), directory, shape)

        return _kept(self._float_models, _float_key(plan), written,
                     lambda dropped: shutil.rmtree(dropped.onnx.parent, ignore_errors=True))

    def score(self, plan: RankPlan | Mapping[str, Any]) -> ProxyScore:
        """KL and agreement of the plan's model against the original on the (scored) synthetic inputs."""
        plan = self._plan(plan)
        if plan.int8_layers:  # the int8 arithmetic that ships (``int8_scoring``)
            with torch.no_grad():
                return compare(self._scored_logits, self._int8_scored(plan)(self.inputs), self._distributions)
        if not plan.layers:
            return ProxyScore(0.0, 1.0 if self._distributions else None)
        front = self._front if self._front is not None and set(plan.layers) == {self._front.layer} else None
        if _prunes(plan):
            fit = None if front is None else PartialPass(
                front.fit, front.consumer if self.held_out else None)
            network = self._pruned(plan, dense=True, partial=fit)
            with eval_mode(network), torch.no_grad():
                logits = run_network(network, self.inputs, PartialPass(front and front.scored))
            assert logits is not None
            return compare(self._scored_logits, logits, self._distributions)
        if front is None:
            result = self._run(plan)
        else:
            result = self._run(plan, PartialPass(front.fit, front.layer if self.held_out else None))
        if not self.held_out:  # the fitting pass already ran on the scored inputs
            assert result.logits is not None
            return compare(self._scored_logits, result.logits, self._distributions)
        logits = evaluate(self.model, self._workbench, result.layers, self.inputs, front and front.scored)
        return compare(self._scored_logits, logits, self._distributions)

    def score_model(self, model: nn.Module) -> ProxyScore:
        """KL and agreement of any model built from the original (a reconstructed one) on the scored inputs."""
        with eval_mode(model), torch.no_grad():
            return compare(self._scored_logits, model(self.inputs), self._distributions)

    def _pruned(self, plan: RankPlan, dense: bool, partial: PartialPass | None = None) -> nn.Module:
        """A plan that prunes changes widths, which the workbench's swap-in stand-ins cannot: it is built
        whole, by the function that builds every exported model, fitted on this proxy's inputs."""
        ref = self._reference if self.correction is not None else None
        return build_model(self.model, plan, self.fit_inputs, settings=self.settings, dense=dense, ref=ref,
                               branches=self._branches, partial=partial)


@dataclass(frozen=True)
class _Front:
    """The recorded front of the original before ``layer``, on the fitting and the scored inputs."""

    layer: str
    fit: Prefix
    scored: Prefix
    consumer: str | None


def _kept(cache: OrderedDict[str, T], key: str, make: Callable[[], T],
          dropped: Callable[[T], object] = lambda _: None) -> T:
    """``cache[key]``, made now if absent, as the most recent of the ``FLOAT_MODELS_KEPT`` entries kept (the
    oldest handed to ``dropped`` as it leaves)."""
    value = cache.pop(key) if key in cache else make()
    cache[key] = value
    while len(cache) > FLOAT_MODELS_KEPT:
        dropped(cache.popitem(last=False)[1])
    return value


def _float_key(plan: RankPlan) -> str:
    """Int8 plans with one float model and calibration share this key."""
    return f"{plan.in_fp32().to_json()}|{plan.quantization}"


def _prunes(plan: RankPlan) -> bool:
    return any(choice.structural for choice in plan.layers.values())


def default_proxy(model: nn.Module, input_shape: Sequence[int], correction: str | None = None,
                  inputs: str | None = None, on_progress: OnProgress | None = None) -> ModelProxy:
    """The search's proxy: fitted on ``default_inputs`` of kind ``inputs`` (a plan's own model is fitted on more,
    ``fit_of``), scored on a second batch (next seed) when there is a correction to fit."""
    sets = 1 if correction is None else 2
    fit = default_inputs(model, input_shape, kind=inputs, on_progress=part_of(on_progress, 0, sets))
    if correction is None:
        return ModelProxy(model, fit)
    return ModelProxy(model, default_inputs(model, input_shape, held_out=True, kind=inputs,
                                            on_progress=part_of(on_progress, 1, sets)), correction, fit_inputs=fit)


def layer_sensitivity(proxy: ModelProxy, layers: Sequence[str] | None = None, methods: Sequence[str] = ("dac",),
                      ranks: RankChoice = None,
                      on_progress: OnProgress | None = None) -> dict[tuple[str, str, int], float]:
    """(layer, method, rank) -> the proxy's KL when only that layer is decomposed (and corrected).

    ``ranks``: None (every rank), a list (clipped to each layer), or ``f(layer, method) -> ranks``.
    One forward pass per entry: the table a greedy allocator or a search's additive model reads.
    """
    convs = decomposable_layers(proxy.model)
    names = list(convs) if layers is None else list(layers)
    wanted: dict[str, list[tuple[str, int]]] = {}
    for name in names:
        conv = convs.get(name)
        if conv is None:
            raise ConfigError(f"layer {name!r} is not a decomposable conv of this model")
        wanted[name] = [(method, rank) for method in methods
                        for rank in resolve_ranks(ranks, name, method, rank_limit(conv, method))]
    total = sum(len(entries) for entries in wanted.values())
    table: dict[tuple[str, str, int], float] = {}
    for name, entries in wanted.items():
        if not entries:
            continue
        with proxy.changing(name):
            for method, rank in entries:
                choice = LayerChoice(method, rank, default_variant(method))
                table[(name, method, rank)] = proxy.score(RankPlan({name: choice})).kl
                if on_progress is not None:
                    on_progress(len(table), total)
    return table
