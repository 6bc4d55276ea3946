"""Budget forms and the (log_lambda, shifts) encoding of plans."""

from __future__ import annotations

import math

import optuna
import pytest

from dac_search.budget import parse_budget
from dac_search.errors import ConfigError
from dac_search.hull import Option, lower_hull
from dac_search.methods import METHODS
from dac_search.plan import LayerChoice
from dac_search.search.config import SearchConfig, parse_duration
from dac_search.search.context import worth_scoring
from dac_search.search.refine import Refinement, moves, plan_of, propose
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


def _unit(name: str, *points: tuple[int | None, float, float]) -> LayerOptions:
    """A one-layer unit from (rank or None, the layer's cost share, penalty); the layer costs 0.5 kept."""
    return LayerOptions(name, tuple(Option(((name, _choice(r), "fp32"),) if r else (), cost - 0.5, penalty)
                                    for r, cost, penalty in points))


EVEN = ((None, 0.5, 0.0), (3, 0.3, 0.1), (1, 0.1, 0.5))


def test_lambda_sweeps_from_keep_everything_to_cheapest_and_shifts_move_one_step() -> None:
    space = SearchSpace([_unit("a", *EVEN), _unit("b", *EVEN)], "m", (1, 3, 8, 8))
    assert space.plan(-5).layers == {}
    assert {c.rank for c in space.plan(3).layers.values()} == {1}
    middle = space.plan(0.0)  # lambda 1: rank 3 (0.1 + 0.3) beats keep (0.5) and rank 1 (0.6)
    assert {c.rank for c in middle.layers.values()} == {3}
    shifted = space.plan(0.0, {"a": 1, "b": -1})
    assert shifted.layers["a"].rank == 1 and "b" not in shifted.layers


def test_bisection_finds_the_cheapest_share_within_target() -> None:
    space = SearchSpace([_unit("a", *EVEN), _unit("b", *EVEN)], "m", (1, 3, 8, 8))
    log_lambda = space.log_lambda_for(0.6)
    assert space.additive_cost(log_lambda) <= 0.6
    assert space.additive_cost(log_lambda - 0.01) > 0.6


def test_refinement_trades_rank_between_layers_within_the_budget() -> None:
    # "a" loses little per step, "b" much: from b cheap / a dear, the best exchange is b up and a down.
    a = _unit("a", (None, 0.5, 0.0), (3, 0.3, 0.01), (1, 0.1, 0.02))
    b = _unit("b", (None, 0.5, 0.0), (3, 0.3, 0.3), (1, 0.1, 1.0))
    space = SearchSpace([a, b], "m", (1, 3, 8, 8))
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


def test_the_refinement_takes_turns_at_margins_under_the_budget() -> None:
    """Under a latency budget the moves start from, and stay within, each margin in turn, so plans a little
    under the budget are refined too, not only the edge, where predictions err either way."""
    space = SearchSpace([_unit("a", *EVEN), _unit("b", *EVEN)], "m", (1, 3, 8, 8))
    cost = {None: 0.5, 3: 0.3, 1: 0.1}

    def slack(plan) -> float:  # budget 0.8 of the 1.0 the two units cost kept
        ranks = {name: plan.layers[name].rank if name in plan.layers else None for name in ("a", "b")}
        return (sum(cost[r] for r in ranks.values()) - 0.8) / 0.8

    study = optuna.create_study(directions=["minimize", "minimize"])
    distributions = {"log_lambda": optuna.distributions.FloatDistribution(-5, 3),
                     **{space.shift_param(n): optuna.distributions.IntDistribution(-1, 1) for n in ("a", "b")}}
    for lam, proxy in ((0.0, 0.1), (0.5, 0.6)):  # a and b at rank 3, a quarter under; both at rank 1, far under
        params = {"log_lambda": lam, "shift:a": 0, "shift:b": 0}
        study.add_trial(optuna.create_trial(params=params, distributions=distributions, values=[proxy, 0.0],
                                            user_attrs={"slack": slack(plan_of(space, params))}))
    assert [t.user_attrs["slack"] for t in study.trials] == pytest.approx([-0.25, -0.75])
    refinement = Refinement(space, slack, (0.0, 0.5))
    refinement.enqueue_next(study)  # two trials: the turn of margin 0.0, from the best plan that fits
    queued = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs for t in queued] == [{"refined_from": 0, "margin": 0.0}]
    study._storage.set_trial_state_values(queued[0]._trial_id, optuna.trial.TrialState.FAIL)  # that move ran
    refinement.enqueue_next(study)  # three trials: margin 0.5, from the only plan within half the budget
    queued = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs for t in queued] == [{"refined_from": 1, "margin": 0.5}]
    assert slack(plan_of(space, queued[0].system_attrs["fixed_params"])) <= -0.5


def test_the_default_correction_is_stream_under_a_latency_budget_and_refit_under_others() -> None:
    assert SearchConfig("cifar10-resnet20", parse_budget("0.6x")).correction == "stream"
    assert SearchConfig("cifar10-resnet20", parse_budget("50%flops"), device="none").correction == "refit"
    assert SearchConfig("cifar10-resnet20", parse_budget("0.6x"), correction="refit").correction == "refit"
    assert SearchConfig("cifar10-resnet20", parse_budget("0.6x"), correction=None).correction is None
    with pytest.raises(ConfigError, match="--correction takes auto"):
        SearchConfig("cifar10-resnet20", parse_budget("0.6x"), correction="strem")


def test_every_method_is_a_candidate_by_default() -> None:
    assert SearchConfig("cifar10-resnet20", parse_budget("0.6x")).methods == (*METHODS, "prune")
    assert SearchConfig("cifar10-resnet20", parse_budget("50%flops"), device="none").methods == METHODS
    assert SearchConfig("cifar10-resnet20", parse_budget("0.6x"), methods=("dac",)).methods == ("dac",)


def test_a_producer_offered_pruned_and_its_consumer_are_one_unit() -> None:
    prune, dac = LayerChoice("prune", 8), _choice(2)
    candidates = {"p": [_choice(3), prune], "c": [dac]}
    costs = {("p", _choice(3)): -0.1, ("p", prune): -0.35, ("c", dac): -0.2}

    def delta(plan) -> float:
        return sum(costs[(name, choice)] for name, choice in plan.layers.items())

    penalties = {("p", _choice(3)): 0.1, ("p", prune): 0.4, ("c", dac): 0.15}
    space = SearchSpace.build(candidates, delta, lambda name, c, _: penalties[(name, c)], "m", (1, 3, 8, 8),
                              pairs={"p": "c"})
    (unit,) = space.layers
    assert unit.name == "p"
    options = {tuple(sorted(n for n, _, _ in o.choice)): o for o in unit.hull}
    assert options[("c", "p")].cost == pytest.approx(-0.3)  # the pairing of the two layers' own options
    assert dict(space.plan(3.0).layers) == {"p": prune}  # the cheapest: pruned, its consumer dense
    assert space.plan(-5).layers == {}


def test_only_choices_cheaper_than_every_higher_rank_are_worth_a_proxy() -> None:
    times = {1: -0.1, 2: 0.05, 3: -0.3, 4: -0.2, 5: 0.1}  # rank 2 and 5 slower than the layer, 1 than 3
    choices = [_choice(r) for r in times] + [LayerChoice("prune", 4)]
    change = lambda plan: times[next(iter(plan.layers.values())).rank] if "dac" in str(plan) else -0.5  # noqa: E731
    kept = worth_scoring("a", choices, change)
    assert [(c.method, c.rank) for c in kept] == [("dac", 3), ("dac", 4), ("prune", 4)]


def test_in_a_chain_of_prunable_convs_the_middle_one_is_only_factorised() -> None:
    # a -> b -> c as in a bottleneck: (a, b) is one unit, so pruning b (which slims c, a unit of its own)
    # is not offered: c could be factorised at a width neither its table entries nor its proxy measured
    candidates = {"a": [LayerChoice("prune", 4), _choice(2)], "b": [LayerChoice("prune", 4), _choice(2)],
                  "c": [LayerChoice("channel", 3)]}
    def delta(plan) -> float:
        return sum(-0.3 if c.structural else -0.1 for c in plan.layers.values())

    space = SearchSpace.build(candidates, delta, lambda name, c, _: 0.25 if c.structural else 0.1, "m",
                              (1, 3, 8, 8), pairs={"a": "b", "b": "c"})
    assert [unit.name for unit in space.layers] == ["a", "c"]
    offered = {(name, c.method) for unit in space.layers for option in unit.hull for name, c, _ in option.choice}
    assert ("a", "prune") in offered and ("b", "prune") not in offered
    alone = SearchSpace.build(candidates, delta, lambda name, c, _: 0.25 if c.structural else 0.1, "m", (1, 3, 8, 8),
                              pairs={"b": "c"})  # b heads its own pair: then it may be pruned
    assert ("b", "prune") in {(n, c.method) for u in alone.layers for o in u.hull for n, c, _ in o.choice}


def test_int8_is_offered_for_every_option_and_the_layer_kept_but_not_for_a_pruned_width() -> None:
    prune, dac = LayerChoice("prune", 4), _choice(2)
    candidates = {"a": [dac, prune], "b": [dac]}

    def delta(plan) -> float:  # int8 halves what a layer costs; a factorisation saves a third, pruning more
        total = 0.0
        for name in {*plan.layers, *plan.precisions}:
            choice = plan.layers.get(name)
            cost = 0.5 if choice is None else (0.2 if choice.structural else 0.33)
            total += (cost * (0.5 if plan.precision_of(name) == "int8" else 1.0)) - 0.5
        return total

    def penalty(name, choice, precision) -> float:
        return (0.0 if choice is None else 0.2) + (0.01 if precision == "int8" else 0.0)

    space = SearchSpace.build(candidates, delta, penalty, "m", (1, 3, 8, 8), precisions=("fp32", "int8"))
    offered = {(n, c and c.method, p) for u in space.layers for o in u.hull for n, c, p in o.choice}
    assert ("a", None, "int8") in offered  # the layer kept, in int8: cheap and nearly free of loss
    assert ("a", "prune", "int8") not in offered
    plan = space.plan(0.0)  # an even trade-off: every layer kept, in int8
    assert plan.layers == {} and plan.precisions == {"a": "int8", "b": "int8"}
    assert plan.quantization is not None
    fp32_only = SearchSpace.build(candidates, delta, penalty, "m", (1, 3, 8, 8))
    assert all(p == "fp32" for u in fp32_only.layers for o in u.hull for _, _, p in o.choice)


def test_precision_defaults_by_budget_and_bad_ones_are_refused() -> None:
    from dac_search.precision import parse_precisions

    assert SearchConfig("cifar10-resnet20", parse_budget("0.6x")).precisions == ("fp32", "int8")
    assert SearchConfig("cifar10-resnet20", parse_budget("50%flops"), device="none").precisions == ("fp32",)
    assert parse_precisions("fp32") == ("fp32",) and parse_precisions("int8") == ("fp32", "int8")
    with pytest.raises(ConfigError, match="unknown precision 'int4'"):
        parse_precisions("fp32,int4")
    with pytest.raises(ConfigError, match="needs a latency budget"):
        SearchConfig("cifar10-resnet20", parse_budget("50%flops"), device="none", precisions=("fp32", "int8"))


def test_a_run_dir_from_before_precisions_resumes_as_fp32_and_refuses_int8() -> None:
    from dac_search.search.identity import refuse_difference, settings_of

    recorded = {"model": "cifar10-resnet20", "budget": "0.6x"}  # written before precision was a setting
    fp32 = SearchConfig("cifar10-resnet20", parse_budget("0.6x"), precisions=("fp32",))
    refuse_difference("run", recorded, settings_of(fp32))  # the same search: resumes
    with pytest.raises(ConfigError, match="precisions 'fp32', not 'fp32,int8'"):
        refuse_difference("run", recorded, settings_of(SearchConfig("cifar10-resnet20", parse_budget("0.6x"))))


def test_fit_images_are_a_setting_a_resume_must_agree_on_and_need_a_correction() -> None:
    """Every plan names the images its own model is fitted on: a run dir (or study) searched with one count
    refuses another, and one from before the setting existed was searched with the default."""
    from dac_search.search.identity import refuse_difference, settings_of

    default = SearchConfig("cifar10-resnet20", parse_budget("50%flops"), device="none")
    fewer = SearchConfig("cifar10-resnet20", parse_budget("50%flops"), device="none", fit_images=64)
    recorded_before = {"model": "cifar10-resnet20", "budget": "50%flops"}
    refuse_difference("run", recorded_before, settings_of(default))
    for recorded, config in ((recorded_before, fewer), (dict(settings_of(fewer)), default),
                             (dict(settings_of(default)), fewer)):
        with pytest.raises(ConfigError, match="fit_images"):
            refuse_difference("run", recorded, settings_of(config))
    with pytest.raises(ConfigError, match="needs --correction"):
        SearchConfig("cifar10-resnet20", parse_budget("50%flops"), device="none", correction=None, fit_images=64)
    with pytest.raises(ConfigError, match="at least 1"):
        SearchConfig("cifar10-resnet20", parse_budget("50%flops"), device="none", fit_images=0)


def test_an_int8_plan_pays_once_for_the_int8_ops_around_its_convs_so_no_int8_plan_scores_zero() -> None:
    from dac_search.plan import RankPlan
    from dac_search.precision import INT8, QuantScheme
    from dac_search.search.context import Penalties

    # measured KLs: the int8 ops alone 0.05; layer a in int8 beside them 0.04 (noise: below), b 0.06
    penalty = Penalties(None, QuantScheme(), {("b", "dac", 2): 0.3}, {"": 0.05, "a": 0.04, "b": 0.06})  # type: ignore[arg-type]
    assert penalty("a", None, INT8) == 0.0 and penalty("b", None, INT8) == pytest.approx(0.01)
    assert penalty.additive(RankPlan(precisions={"a": INT8})) == pytest.approx(0.05)  # MobileNet-V2's case: not 0
    assert penalty.additive(RankPlan(precisions={"a": INT8, "b": INT8})) == pytest.approx(0.06)
    assert penalty.additive(RankPlan({"b": LayerChoice("dac", 2, "grouped")})) == pytest.approx(0.3)  # fp32: none
