"""Budget forms and the (log_lambda, shifts) encoding of plans."""

from __future__ import annotations

import math

import pytest

from dac_search.budget import parse_budget
from dac_search.errors import ConfigError
from dac_search.hull import Option, lower_hull
from dac_search.methods import METHODS
from dac_search.plan import LayerChoice
from dac_search.search.config import SearchConfig, parse_duration
from dac_search.search.refine import moves, propose
from dac_search.search.space import LayerOptions, SearchSpace


@pytest.mark.parametrize("text,kind,value,fraction", [
    ("30ms", "latency", 30.0, None), ("0.5x", "latency", None, 0.5), ("50%flops", "flops", None, 0.5),
    ("2.1GFLOPs", "flops", 2.1e9, None), ("40%params", "params", None, 0.4), ("1.2Mparams", "params", 1.2e6, None),
    ("12.5 MFLOPs", "flops", 12.5e6, None),
])
def test_every_budget_form(text, kind, value, fraction) -> None:
    budget = parse_budget(text)
    assert (budget.kind, budget.value, budget.fraction) == (kind, value, fraction)


def test_relative_budgets_resolve_against_the_baseline() -> None:
    assert parse_budget("0.5x").resolve(20.0).value == 10.0
    assert parse_budget("40%params").resolve(1000).value == pytest.approx(400)
    with pytest.raises(ConfigError, match="unknown"):
        parse_budget("0.5x").resolve(None)


@pytest.mark.parametrize("text", ["30", "30xs", "-1ms", "150%flops", "0ms", "1.5x", "ms", "", "50%", "5 parsecs"])
def test_malformed_budgets_are_clear_errors(text) -> None:
    with pytest.raises(ConfigError, match="budget"):
        parse_budget(text)


def test_durations() -> None:
    assert parse_duration("8h") == 8 * 3600 and parse_duration("90s") == 90 and parse_duration("1.5m") == 90
    with pytest.raises(ConfigError):
        parse_duration("soon")


def _choice(rank: int) -> LayerChoice:
    return LayerChoice("dac", rank, "grouped")


def test_lower_hull_keeps_only_options_some_trade_off_would_pick() -> None:
    options = [Option(None, 1.0, 0.0), Option(_choice(4), 0.7, 0.25), Option(_choice(3), 0.5, 0.2),
               Option(_choice(2), 0.4, 0.5), Option(_choice(1), 0.2, 0.6)]
    hull = lower_hull(options)
    assert [o.choice.rank if o.choice else None for o in hull] == [None, 3, 1]


def test_lambda_sweeps_from_keep_everything_to_cheapest_and_shifts_move_one_step() -> None:
    hull = (Option(None, 0.5, 0.0), Option(_choice(3), 0.3, 0.1), Option(_choice(1), 0.1, 0.5))
    space = SearchSpace([LayerOptions("a", hull), LayerOptions("b", hull)], "m", (1, 3, 8, 8))
    assert space.plan(-5).layers == {}
    assert {c.rank for c in space.plan(3).layers.values()} == {1}
    middle = space.plan(0.0)  # lambda 1: rank 3 (0.1 + 0.3) beats keep (0.5) and rank 1 (0.6)
    assert {c.rank for c in middle.layers.values()} == {3}
    shifted = space.plan(0.0, {"a": 1, "b": -1})
    assert shifted.layers["a"].rank == 1 and "b" not in shifted.layers


def test_bisection_finds_the_cheapest_share_within_target() -> None:
    hull = (Option(None, 0.5, 0.0), Option(_choice(3), 0.3, 0.1), Option(_choice(1), 0.1, 0.5))
    space = SearchSpace([LayerOptions("a", hull), LayerOptions("b", hull)], "m", (1, 3, 8, 8))
    log_lambda = space.log_lambda_for(0.6)
    assert space.additive_cost(log_lambda) <= 0.6
    assert space.additive_cost(log_lambda - 0.01) > 0.6


def test_refinement_trades_rank_between_layers_within_the_budget() -> None:
    # "a" loses little per step, "b" much: from b cheap / a dear, the best exchange is b up and a down.
    a = (Option(None, 0.5, 0.0), Option(_choice(3), 0.3, 0.01), Option(_choice(1), 0.1, 0.02))
    b = (Option(None, 0.5, 0.0), Option(_choice(3), 0.3, 0.3), Option(_choice(1), 0.1, 1.0))
    space = SearchSpace([LayerOptions("a", a), LayerOptions("b", b)], "m", (1, 3, 8, 8))
    lam = math.log10(2.0)  # picks a at rank 1 and b at rank 3; the shifts turn that round
    start = {"log_lambda": lam, "shift:a": -1, "shift:b": 1}
    assert {n: c.rank for n, c in space.plan(lam, {"a": -1, "b": 1}).layers.items()} == {"a": 3, "b": 1}
    found = moves(space, start)
    assert [s.layer for s in found[0].steps] == ["b"] and found[0].penalty == pytest.approx(-0.7)  # b alone
    assert {s.layer for s in found[1].steps} == {"a", "b"} and found[1].penalty == pytest.approx(0.01 - 0.7)
    within = lambda plan: sum(0.3 if c.rank == 3 else 0.1 for c in plan.layers.values()) <= 0.4  # noqa: E731
    best = propose(space, start, set(), within)  # b alone is over the budget; the exchange is not
    assert best == {"log_lambda": lam, "shift:a": 0, "shift:b": 0}  # b back to rank 3, a down to rank 1
    tried = {space.plan(lam, {"a": 0, "b": 0}).to_json()}
    assert propose(space, start, tried, within) != best  # a move is tried once
    assert propose(space, start, set(), lambda plan: False) is None  # nothing fits: no proposal


def test_every_method_is_a_candidate_by_default() -> None:
    assert SearchConfig("cifar10-resnet20", parse_budget("0.6x")).methods == METHODS
    assert SearchConfig("cifar10-resnet20", parse_budget("50%flops"), device="none").methods == METHODS
    assert SearchConfig("cifar10-resnet20", parse_budget("0.6x"), methods=("dac",)).methods == ("dac",)
