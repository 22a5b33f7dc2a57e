"""Rounds whose tau changes: explicit lists and AdaComm equal the matrix rule with tau_r.

The runs go through the real strategy and ClientApp (every in-process engine); the reference
replays the taus the run decided. AdaComm's own rule is checked on hand-made histories, and
in a run every tau_r is what the rule gives from the start and the rounds up to r - 2.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedcoop import algorithms, topology, workload
from fedcoop.adacomm import AdaComm
from fedcoop.clock import StepTime, VirtualClock
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError
from fedcoop.links import Link
from fedcoop.round_schedule import LAG, Settled, TauSequence, parse_taus
from simulations.runner import GRIDS
from strategies.server_app import initial_model, server_evaluator
from tests.conftest import (
    assert_follows_rule,
    least_squares_config,
    reference_final,
    run_in_process,
    x0_of,
)

pytestmark = pytest.mark.cross_path

CASES = {
    "local-sgd": dict(algorithm="local-sgd", tau_schedule="3,1,2"),
    "dpsgd": dict(algorithm="dpsgd", tau_schedule="1,2", num_clients=6),
    "overlap": dict(algorithm="overlap", tau_schedule="2,1,3", momentum=0.9, nesterov=True),
    "easgd": dict(algorithm="easgd", tau_schedule="2,1"),
    "cocod": dict(algorithm="cocod", tau_schedule="1,3"),
    "partial": dict(algorithm="local-sgd", tau_schedule="2,3,1", participation=0.6, seed=3),
    "adacomm-local-sgd": dict(algorithm="local-sgd", tau_schedule="adacomm", adacomm_interval=0.2),
    "adacomm-overlap": dict(algorithm="overlap", tau_schedule="adacomm", adacomm_interval=0.2),
    "adacomm-dpsgd": dict(algorithm="dpsgd", tau_schedule="adacomm", adacomm_interval=0.2),
}


@pytest.mark.parametrize("engine", list(GRIDS))
@pytest.mark.parametrize("case", list(CASES))
def test_rounds_of_their_own_tau_equal_the_matrix_rule(case: str, engine: str) -> None:
    config = least_squares_config(num_rounds=6, tau=4, **CASES[case])
    result, grid = run_in_process(config, engine=engine)
    taus = [row["tau"] for row in result.rounds]
    assert len(set(taus)) > 1, taus  # the schedule did change tau
    assert [row["local-steps"] for row in result.rounds] == list(np.cumsum(taus))
    ref = reference_final(config, result)
    assert_follows_rule(result, ref)
    assert grid.overlapping_messages == 0
    if config.tau_schedule != "adacomm":
        assert taus == [parse_taus(config.tau_schedule).tau(r, ()) for r in range(1, 7)]


W_CASES = {
    "matcha": dict(algorithm="matcha", topology="hypercube", num_clients=8, comm_budget=0.5),
    "matcha-tau2-partial": dict(
        algorithm="matcha", tau=2, num_clients=6, comm_budget=0.4, participation=0.7, seed=2
    ),
    "random-matching": dict(algorithm="dpsgd", topology_schedule="random-matching"),
    "random-edge": dict(algorithm="dpsgd", tau=2, topology_schedule="random-edge"),
    "matcha-adacomm": dict(
        algorithm="matcha", tau=3, tau_schedule="adacomm", adacomm_interval=0.2, num_clients=6
    ),
}


@pytest.mark.parametrize("engine", list(GRIDS))
@pytest.mark.parametrize("case", list(W_CASES))
def test_rounds_of_their_own_w_equal_the_matrix_rule(case: str, engine: str) -> None:
    config = least_squares_config(num_rounds=6, **{"tau": 1, **W_CASES[case]})
    result, grid = run_in_process(config, engine=engine)
    spec = result.spec
    assert len({spec.w_at(r).tobytes() for r in range(1, 7)}) > 1  # W does change
    ref = reference_final(config, result)
    assert_follows_rule(result, ref)
    assert grid.overlapping_messages == 0


def test_a_users_sequence_of_matrices_runs_in_order(tmp_path) -> None:
    m = 5
    pair = np.eye(m)
    pair[np.ix_([0, 1], [0, 1])] = 0.5
    ring = topology.weigh("metropolis-hastings", topology.ring(m))
    path = tmp_path / "w.npz"
    np.savez(path, pair, ring)
    config = least_squares_config(
        algorithm="dpsgd", tau=2, num_clients=m, num_rounds=5, topology_schedule=str(path)
    )
    result, _ = run_in_process(config)
    assert [result.spec.w_at(r).tolist() for r in (1, 2, 3)] == [
        pair.tolist(),
        ring.tolist(),
        pair.tolist(),
    ]
    ref = reference_final(config, result)
    assert_follows_rule(result, ref)


def test_the_clock_charges_only_the_activated_matchings() -> None:
    """A worker sends its model once per activated matching it is in (1 s each here): with
    every matching active a hypercube round costs its 3 matchings, at budget 0.5 less."""
    times = {}
    for budget in (1.0, 0.5):
        config = RunConfig(
            algorithm="matcha", topology="hypercube", num_clients=8, comm_budget=budget
        )
        spec = algorithms.resolve(config)
        clock = VirtualClock(
            spec, model_bytes=1, step_time=StepTime(0.0), link=Link(latency=0.0, bandwidth=1.0)
        )
        assert clock.peer
        for r in range(1, 21):
            used = [sum(i in edge for edge in spec.w_schedule.edges(r)) for i in range(8)]
            assert list(clock.degree(r)) == used
            clock.round(r)
        times[budget] = clock.finish()
    assert times[1.0] == pytest.approx(20 * 3)
    assert times[0.5] < 0.75 * times[1.0]


@pytest.mark.parametrize("algorithm", ["local-sgd", "overlap"])
def test_adacomm_decides_each_tau_from_the_rounds_up_to_r_minus_2(algorithm: str) -> None:
    """A run's tau_r is the rule applied to its own recorded rounds 1 .. r - 2: the same
    decision whichever engine, delivery order or pipelining the run had."""
    config = least_squares_config(
        algorithm=algorithm, num_rounds=8, tau=6, tau_schedule="adacomm", adacomm_interval=0.3
    )
    result, _ = run_in_process(config, seed=4)
    rows = result.rounds
    _, test = workload.load_split(config)
    start = server_evaluator(initial_model(config), test)(x0_of(config))
    history = [Settled(start["loss"], 0.0, 0)]
    history += [Settled(r["test-loss"], r["virtual-time"], r["local-steps"]) for r in rows]
    rule = AdaComm(6, 0.3)
    assert [r["tau"] for r in rows] == [
        rule.tau(r, history[: max(0, r - LAG) + 1]) for r in range(1, len(rows) + 1)
    ]
    # the loss of least squares falls, so AdaComm communicates more often
    assert rows[-1]["tau"] < 6


def history(*rows: tuple[float, float, int]) -> list[Settled]:
    return [Settled(loss, time, steps) for loss, time, steps in rows]


def test_adacomm_rule_on_a_known_history() -> None:
    rule = AdaComm(tau0=8, interval=10.0)
    start = (4.0, 0.0, 0)  # round 0: the loss of x0
    rows = history(start, (3.0, 3.0, 8), (2.0, 6.0, 16), (1.0, 11.0, 24), (0.5, 14.0, 32))
    # rounds 1-3 read rounds 0..1 (still interval 0): tau_0
    assert [rule.tau(r, rows[: max(0, r - 2) + 1]) for r in (1, 2, 3, 4)] == [8, 8, 8, 8]
    # round 5 reads rounds 0-3: round 3 entered interval 1 with loss 1 -> ceil(sqrt(1/4) 8)
    assert rule.tau(5, rows[:4]) == 4
    # round 6: still interval 1, the interval's loss is round 3's, not round 4's
    assert rule.tau(6, rows[:5]) == 4
    # a decayed rate raises tau: eta_0 / eta_l = 4 -> ceil(sqrt(4 / 4) 8)
    decayed = AdaComm(8, 10.0, lr=lambda step: 0.1 if step <= 20 else 0.025)
    assert decayed.tau(5, rows[:4]) == 8
    # a loss of 0 cannot take tau below 1; a missing loss keeps tau_0
    assert rule.tau(5, history(start, (3.0, 3.0, 8), (1.0, 6.0, 16), (0.0, 12.0, 24))) == 1
    no_loss = history(start, (3.0, 3.0, 8), (1.0, 6.0, 16), (math.nan, 12.0, 24))
    assert rule.tau(5, no_loss) == 8


def test_adacomm_refuses_a_history_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match=r"rounds 0\.\.3"):
        AdaComm(4, 1.0).tau(5, history((1.0, 0.0, 0), (1.0, 1.0, 4)))


def test_the_clock_charges_each_round_its_own_tau() -> None:
    spec = algorithms.resolve(RunConfig(algorithm="local-sgd", num_clients=4))
    link = Link(latency=0.0, bandwidth=1.0)
    clock = VirtualClock(spec, model_bytes=0, step_time=StepTime(0.5), link=link)
    assert [clock.round(1, tau=2), clock.round(2, tau=6), clock.round(3)] == pytest.approx(
        [1.0, 4.0, 4.0 + 0.5 * spec.tau]
    )


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        (dict(tau_schedule="4,0"), "tau-schedule"),
        (dict(tau_schedule="often"), "tau-schedule"),
        (dict(tau_schedule=""), "tau-schedule"),
        (dict(tau_schedule="adacomm", adacomm_interval=0.0), "adacomm-interval"),
        (dict(adacomm_interval=math.inf), "adacomm-interval"),
        (dict(algorithm="sync", tau_schedule="adacomm"), "tau-schedule"),
        (dict(algorithm="sync", tau_schedule="2,1"), "tau-schedule"),
    ],
)
def test_bad_tau_schedules_are_refused_naming_the_key(changes: dict, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        algorithms.resolve(RunConfig(**changes).checked())
    assert error.value.parameter == key


def test_a_tau_list_repeats_its_last_entry() -> None:
    taus = TauSequence((5, 3))
    assert [taus.tau(r, ()) for r in (1, 2, 3, 9)] == [5, 3, 3, 3]
    assert taus.describe() == "5,3"
