"""Latency tables on the local device: prediction close to measurement on a tiny model, cache hits, I/O."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from dac_search.errors import PlanError
from dac_search.latency import Correction, LatencyTable, LatencyTableBuilder, table_settings
from dac_search.latency.table import Timing, candidate_key, rank_grid
from dac_search.plan import LayerChoice, RankPlan
from profilers import LocalProfiler, MeasureSettings, load_device
from tests.profilers.conftest import write_device

SHAPE = (1, 8, 32, 32)
# Short, yet long enough for layers of ~0.1-0.5 ms to be timed steadily on a busy 2-core machine.
FAST = MeasureSettings(warmup_s=0.1, repeat_s=0.02, repeats=7, max_attempts=2, max_cov=0.1)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(8, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
    ).eval()


def _candidates(name: str, conv: nn.Conv2d) -> list[LayerChoice]:
    return [LayerChoice("dac", 1, "grouped"), LayerChoice("dac", 1, "stacked"), LayerChoice("dac", 3, "grouped"),
            LayerChoice("dac", 3, "stacked"), LayerChoice("channel", 2), LayerChoice("channel", 8)]


@pytest.fixture(scope="module")
def builder(tmp_path_factory: pytest.TempPathFactory) -> LatencyTableBuilder:
    directory = tmp_path_factory.mktemp("table")
    profiler = LocalProfiler(load_device(write_device(directory / "tbl.toml", kind="local", threads=1)))
    return LatencyTableBuilder(profiler, cache_dir=directory / "cache", settings=FAST, model_settings=FAST)


def test_prediction_is_close_and_cache_skips_measuring(builder: LatencyTableBuilder) -> None:
    model = _model()
    table = builder.build(model, SHAPE, candidates=_candidates)
    # Layers 1 and 2 share a geometry: 2 geometries x (original + 6 candidates) + the whole model.
    assert builder.stats.measured == 2 * 7 + 1
    assert set(table.layers) == {"0", "2", "4"} and table.layers["2"] == table.layers["4"]

    plans = [
        RankPlan({"2": LayerChoice("dac", 1, "grouped"), "4": LayerChoice("channel", 2)}),
        RankPlan({"0": LayerChoice("dac", 3, "stacked"), "2": LayerChoice("dac", 1, "stacked")}),
        RankPlan({"4": LayerChoice("dac", 3, "grouped")}),
    ]
    original, *measured = builder.measure_plans(model, SHAPE, [RankPlan(), *plans])
    anchored = table.with_original(original)
    errors = sorted(abs(anchored.predict(plan) / ms - 1) for plan, ms in zip(plans, measured))
    # Only a sanity bound here: on a shared 2-core machine single timings of tiny models swing by 2x.
    # Prediction accuracy is measured, on real models and many plans, by benchmarks/latency_table.py.
    assert errors[1] < 2.0, errors
    plan = plans[0]

    before = builder.stats.measured
    again = builder.build(model, SHAPE, candidates=_candidates)
    assert builder.stats.measured == before  # everything came from the cache
    assert again.timings == table.timings and again.original_ms == table.original_ms

    calibrated, _ = builder.calibrate(table, model, [plan])
    assert calibrated.correction.n == 1
    assert builder.build(model, SHAPE, candidates=_candidates).correction == calibrated.correction  # stored


def _table() -> LatencyTable:
    row = {"original": Timing(1.0, 0.1), "dac/1/grouped": Timing(0.3, 0.01), "dac/1/stacked": Timing(0.2, 0.01),
           "channel/2": Timing(0.4, 0.0), "channel/6": Timing(0.8, 0.0)}
    return LatencyTable(device="d", runtime="onnxruntime", threads=1, input_shape=(1, 3, 8, 8), original_ms=5.0,
                        layers={"a": "g", "b": "g"}, timings={"g": row})


def test_predict_interpolate_and_fastest_variant() -> None:
    table = _table()
    assert table.predict(RankPlan()) == 5.0
    plan = RankPlan({"a": LayerChoice("dac", 1, "stacked"), "b": LayerChoice("channel", 4)})
    assert table.predict(plan) == pytest.approx(5.0 - 1.0 + 0.2 - 1.0 + 0.6)  # channel/4 between 2 and 6
    assert table.fastest_variant("a", "dac", 1) == "stacked"
    assert table.fastest_variant("a", "channel", 2) is None
    with pytest.raises(Exception, match="not in the latency table"):
        table.predict(RankPlan({"zzz": LayerChoice("dac", 1, "grouped")}))
    with pytest.raises(Exception, match="no spatial timings"):
        table.layer_ms("a", LayerChoice("spatial", 2))


def test_correction_fit_and_round_trip(tmp_path: Path) -> None:
    assert Correction.fit([(-1.0, -1.2)]) == Correction(pytest.approx(1.2), 1)
    assert Correction.fit([(1.0, 2.0), (2.0, 4.0), (-1.0, -2.0)]).scale == pytest.approx(2.0)
    assert Correction.fit([(0.01, 5.0)]).scale == Correction.LIMITS[1]  # one wild point cannot run away
    assert Correction.fit([]) == Correction(1.0, 0)
    # the plan replaces a (1.0 ms) by channel/2 (0.4 ms): predicted 4.4 ms, measured 4.1 ms -> scale 1.5
    table = _table().calibrated([(RankPlan({"a": LayerChoice("channel", 2)}), 4.1)])
    assert table.correction.scale == pytest.approx(1.5) and table.predict(RankPlan()) == 5.0
    assert table.predict(RankPlan({"a": LayerChoice("channel", 6)})) == pytest.approx(5.0 - 0.2 * 1.5)
    assert LatencyTable.load(table.save(tmp_path / "t.json")) == table


def test_correction_fits_an_offset_for_any_change_when_the_points_allow() -> None:
    # measured = 1.3 x predicted change + 6% of a 2 ms original, whenever anything changes
    deltas = [(p, 1.3 * p + 0.12) for p in (-0.2, -0.6, -0.9, -1.2)]
    fitted = Correction.fit(deltas, original_ms=2.0)
    assert fitted.scale == pytest.approx(1.3) and fitted.offset == pytest.approx(0.06) and fitted.n == 4
    assert fitted.apply(2.0, 2.0, changed=False) == 2.0  # the original itself stays the original
    assert fitted.apply(2.0, 1.5) == pytest.approx(2.0 - 0.65 + 0.12)
    assert Correction.fit([(-0.5, -0.4), (-0.5, -0.6), (-0.5, -0.5)]).offset == 0.0  # one prediction: scale only
    assert Correction.fit([(-0.1, 5.0), (-0.2, 5.0), (-0.3, 5.0)]).offset == Correction.OFFSET_LIMIT
    table = _table().calibrated([(RankPlan({"a": LayerChoice("channel", r)}), ms)
                                 for r, ms in ((2, 4.7), (6, 4.9), (2, 4.7))])
    assert table.predict(RankPlan()) == table.original_ms == 5.0


def test_rank_grid() -> None:
    assert rank_grid(9) == list(range(1, 10))
    grid = rank_grid(192)
    assert grid[0] == 1 and grid[-1] == 192 and len(grid) <= 10 and grid == sorted(set(grid))
    assert candidate_key(None) == "original" and candidate_key(LayerChoice("dac", 2, "stacked")) == "dac/2/stacked"


def test_a_pruned_producer_is_priced_with_its_consumer_at_the_pruned_width() -> None:
    producer = {"original": Timing(1.0, 0.0), "prune/2": Timing(0.3, 0.0), "prune/6": Timing(0.7, 0.0),
                "dac/1/grouped": Timing(0.5, 0.0)}
    consumer = {"original": Timing(2.0, 0.0), "inputs/2": Timing(0.6, 0.0), "inputs/6": Timing(1.4, 0.0),
                "channel/2": Timing(0.8, 0.0)}
    table = LatencyTable(device="d", runtime="onnxruntime", threads=1, input_shape=(1, 3, 8, 8), original_ms=5.0,
                         layers={"p": "gp", "c": "gc"}, timings={"gp": producer, "gc": consumer},
                         consumers={"p": "c"})
    assert table.predict(RankPlan({"p": LayerChoice("prune", 2)})) == pytest.approx(5.0 - 0.7 - 1.4)
    assert table.predict(RankPlan({"p": LayerChoice("prune", 4)})) == pytest.approx(5.0 - 0.5 - 1.0)  # interpolated
    # a factorised consumer at the pruned width: its own time, slimmed as the dense conv is (0.6 / 2.0)
    both = RankPlan({"p": LayerChoice("prune", 2), "c": LayerChoice("channel", 2)})
    assert table.predict(both) == pytest.approx(5.0 - 0.7 + 0.8 * 0.3 - 2.0)
    assert LatencyTable.from_dict(table.to_dict()) == table
    # an expansion, then a depthwise 3x3 its pruned channels pass through, then the projection
    depthwise = {"original": Timing(0.4, 0.0), "inputs/2": Timing(0.1, 0.0), "inputs/6": Timing(0.3, 0.0)}
    mobile = LatencyTable(device="d", runtime="onnxruntime", threads=1, input_shape=(1, 3, 8, 8), original_ms=5.4,
                          layers={"p": "gp", "dw": "gd", "c": "gc"},
                          timings={"gp": producer, "gd": depthwise, "gc": consumer},
                          consumers={"p": "c"}, through={"p": ("dw",)})
    assert mobile.predict(RankPlan({"p": LayerChoice("prune", 2)})) == pytest.approx(5.4 - 0.7 - 1.4 - 0.3)
    assert LatencyTable.from_dict(mobile.to_dict()) == mobile
    bare = LatencyTable(device="d", runtime="onnxruntime", threads=1, input_shape=(1, 3, 8, 8), original_ms=5.0,
                        layers={"p": "gp", "c": "gc"}, timings={"gp": producer, "gc": consumer})
    with pytest.raises(PlanError, match="cannot price pruning layer 'p'"):
        bare.predict(RankPlan({"p": LayerChoice("prune", 2)}))


def test_the_builder_times_a_producer_pruned_and_its_consumer_slimmed(builder: LatencyTableBuilder) -> None:
    model = _model()  # conv "0" -> ReLU -> conv "2": a prune site

    def candidates(name: str, conv: nn.Conv2d) -> list[LayerChoice]:
        return [LayerChoice("prune", 8), LayerChoice("prune", 16)] if name == "0" else []

    table = builder.build(model, SHAPE, candidates=candidates)
    assert table.consumers == {"0": "2"}
    assert {"prune/8", "prune/16"} <= set(table.timings[table.layers["0"]])
    assert {"inputs/8", "inputs/16"} <= set(table.timings[table.layers["2"]])
    half = RankPlan({"0": LayerChoice("prune", 16)})
    assert table.predict_raw(half) < table.original_ms  # both convs lose half their work
    pruned, = builder.measure_plans(model, SHAPE, [half])
    assert pruned > 0


def test_the_builder_times_the_depthwise_convs_a_pruned_producer_passes_through(
    builder: LatencyTableBuilder,
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(  # MobileNet-V2's inverted residual without the shortcut: expand, depthwise, project
        nn.Conv2d(8, 48, 1), nn.BatchNorm2d(48), nn.ReLU6(), nn.Conv2d(48, 48, 3, padding=1, groups=48),
        nn.BatchNorm2d(48), nn.ReLU6(), nn.Conv2d(48, 8, 1), nn.BatchNorm2d(8),
    ).eval()

    def candidates(name: str, conv: nn.Conv2d) -> list[LayerChoice]:
        return [LayerChoice("prune", 12), LayerChoice("prune", 24)] if name == "0" else []

    table = builder.build(model, SHAPE, candidates=candidates)
    assert table.consumers == {"0": "6"} and table.through == {"0": ("3",)}
    assert {"original", "inputs/12", "inputs/24"} <= set(table.timings[table.layers["3"]])
    quarter = RankPlan({"0": LayerChoice("prune", 12)})
    without_depthwise = replace(table, through={})
    assert table.predict_raw(quarter) < without_depthwise.predict_raw(quarter)  # the 3x3 at 12 channels is faster


def test_a_table_times_each_layer_once_with_a_quarter_of_a_devices_repeats() -> None:
    """A device's own warm-up and cooldown stay; a quarter of its repeats, each a quarter as long, one attempt."""
    device = MeasureSettings(warmup_s=2.0, repeat_s=0.2, repeats=24, max_attempts=3, cooldown_s=5.0)
    assert table_settings(device) == MeasureSettings(warmup_s=2.0, repeat_s=0.05, repeats=6, max_attempts=1,
                                                     max_cov=device.max_cov, cooldown_s=5.0)
    assert table_settings(replace(device, repeats=10)).repeats == 3  # never fewer than three to take a median of
