"""The server's state machine, driven by hand: what is ready when, and with which payload.

The coordinator never sees Flower here: the tests play the workers with small float64
vectors (d = 3), so each payload can be checked against the papers' formulas by hand, and a
whole run against `reference_trajectory`.
"""

from __future__ import annotations

import gc
import re
import weakref

import numpy as np
import pytest

from fedcoop import mixing, topology
from fedcoop.coordinator import Coordinator, Dispatch
from fedcoop.errors import ConfigError
from fedcoop.spec import CooperativeSpec, UpdateRule, reference_trajectory
from tests.conftest import spec_of

D = 3
X0 = np.array([1.0, -2.0, 0.5])


class Driver:
    """Plays the Grid: keeps what the coordinator released and replies on request."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self.sent: dict[int, Dispatch] = {}

    def poll(self) -> dict[int, Dispatch]:
        new = {d.worker: d for d in self.coordinator.ready()}
        assert not set(new) & set(self.sent), "a second message for a busy worker"
        self.sent.update(new)
        return new

    def reply(self, worker: int, model: np.ndarray) -> None:
        d = self.sent.pop(worker)
        self.coordinator.record(worker, d.round, np.array(model, dtype=np.float64))


def models(seed: int, m: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(m, D))


# --- pipelining, barriers and sparse neighbours -------------------------------------------


def test_overlap_starts_the_next_round_before_the_others_report() -> None:
    m, alpha, beta = 3, 0.6, 0.7
    spec = spec_of("overlap", m, tau=2)
    assert spec.anchor_momentum == beta
    driver = Driver(Coordinator(spec, X0, num_rounds=5))
    assert set(driver.poll()) == {0, 1, 2}
    x1, x2 = models(1, m), models(2, m)

    # Worker 0's round 2 reads only the anchor of sync 0 (x0): ready at once.
    driver.reply(0, x1[0])
    ready = driver.poll()
    assert set(ready) == {0} and ready[0].round == 2
    np.testing.assert_allclose(ready[0].payload.mix, alpha * X0, rtol=0, atol=1e-15)
    assert ready[0].payload.self_weight == pytest.approx(1 - alpha)
    for i in (1, 2):
        driver.reply(i, x1[i])
    assert {i: d.round for i, d in driver.poll().items()} == {1: 2, 2: 2}

    # Eq. (7)-(8): pulled = (1-alpha) x' + alpha z; v <- beta v + mean(pulled) - z; z += v.
    z0, v0 = X0, np.zeros(D)
    pulled = (1 - alpha) * x1 + alpha * z0
    v1 = beta * v0 + (pulled.mean(axis=0) - z0)
    z1 = z0 + v1

    # Worker 0 reports round 2 and gets round 3 while workers 1 and 2 still run round 2.
    driver.reply(0, x2[0])
    ready = driver.poll()
    assert set(ready) == {0}
    assert (ready[0].round, ready[0].local_steps, ready[0].payload.sync) == (3, 2, 2)
    np.testing.assert_allclose(ready[0].payload.mix, alpha * z1, rtol=0, atol=1e-14)
    assert set(driver.sent) == {0, 1, 2}
    assert driver.coordinator.next_round(1) == 2 and driver.coordinator.next_round(2) == 2

    # One round ahead at most: round 4 needs the anchor of sync 2, i.e. everyone's round 2.
    driver.reply(0, models(3, m)[0])
    assert driver.poll() == {}
    driver.reply(1, x2[1])
    assert driver.poll() == {1: driver.sent[1]} and driver.sent[1].round == 3
    driver.reply(2, x2[2])
    ready = driver.poll()
    assert set(ready) == {0, 2} and ready[0].round == 4

    # Sync 2 carries the anchor momentum of sync 1.
    v2 = beta * v1 + (((1 - alpha) * x2 + alpha * z1).mean(axis=0) - z1)
    z2 = z1 + v2
    np.testing.assert_allclose(ready[0].payload.mix, alpha * z2, rtol=0, atol=1e-14)
    np.testing.assert_allclose(driver.coordinator.aux, z2[None, :], rtol=0, atol=1e-14)


def started(algorithm: str, m: int = 3) -> tuple[Driver, np.ndarray, np.ndarray]:
    """A 4-round run of `algorithm` (tau 2) with round 1 sent, and the models for rounds 1-2."""
    driver = Driver(Coordinator(spec_of(algorithm, m, tau=2), X0, num_rounds=4))
    driver.poll()
    return driver, models(1, m), models(2, m)


def test_cocod_payload_is_the_stale_mean_and_overlaps_the_next_round() -> None:
    driver, x1, x2 = started("cocod")
    driver.reply(0, x1[0])
    ready = driver.poll()
    assert set(ready) == {0}
    np.testing.assert_allclose(ready[0].payload.mix, X0, rtol=0, atol=1e-15)
    for i in (1, 2):
        driver.reply(i, x1[i])
    driver.poll()
    driver.reply(0, x2[0])
    ready = driver.poll()
    assert set(ready) == {0} and ready[0].round == 3
    assert ready[0].payload.self_weight == 0.0
    np.testing.assert_allclose(ready[0].payload.mix, x1.mean(axis=0), rtol=0, atol=1e-15)


def test_full_averaging_is_a_barrier() -> None:
    driver, x1, x2 = started("local-sgd")
    driver.reply(0, x1[0])
    driver.reply(1, x1[1])
    assert driver.poll() == {}
    driver.reply(2, x1[2])
    assert {i: d.round for i, d in driver.poll().items()} == {0: 2, 1: 2, 2: 2}

    driver.reply(0, x2[0])
    assert driver.poll() == {}
    driver.reply(2, x2[2])
    assert driver.poll() == {}
    driver.reply(1, x2[1])
    ready = driver.poll()
    assert set(ready) == {0, 1, 2}
    for i, d in ready.items():
        assert d.round == 3 and d.payload.sync == 2
        # J: every survivor's new model is the same average, sent as a payload that
        # replaces its model
        assert d.payload.self_weight == 0.0 and not d.payload.adopt
        mixed = d.payload.self_weight * x2[i] + d.payload.mix
        np.testing.assert_allclose(mixed, x2.mean(axis=0), rtol=0, atol=1e-15)


def test_a_sparse_column_waits_for_the_round_to_settle() -> None:
    """A column that reads neighbours waits for every report of the round: had a worker
    failed, the surviving graph's weights would change the column."""
    m = 5
    w = topology.weigh("metropolis-hastings", topology.ring(m))
    spec = CooperativeSpec(tau=1, w=w, rule=UpdateRule.MIX_BEFORE_STEP).validate(m)
    driver = Driver(Coordinator(spec, X0, num_rounds=3))
    driver.poll()
    x = models(1, m)
    for i in (0, 1, 4, 3):
        driver.reply(i, x[i])
        assert driver.poll() == {}  # worker 2 has not reported round 1
    driver.reply(2, x[2])
    ready = driver.poll()
    assert set(ready) == set(range(m))
    expected = w[1, 0] * x[1] + w[4, 0] * x[4]
    np.testing.assert_allclose(ready[0].payload.mix, expected, rtol=0, atol=1e-15)
    assert ready[0].payload.self_weight == pytest.approx(w[0, 0])
    assert w[1, 0] == pytest.approx(1 / 3)


# --- one message in flight per worker, and bad replies --------------------------------------


def test_ready_never_releases_a_second_message_to_a_busy_worker() -> None:
    coordinator = Coordinator(spec_of("overlap", 3, tau=1), X0, num_rounds=3)
    first = coordinator.ready()
    assert sorted(d.worker for d in first) == [0, 1, 2]
    assert coordinator.ready() == []
    coordinator.record(1, 1, models(1, 3)[1])
    again = coordinator.ready()
    assert [(d.worker, d.round) for d in again] == [(1, 2)]
    assert coordinator.ready() == []


def test_a_reply_for_the_wrong_round_is_refused() -> None:
    coordinator = Coordinator(spec_of("local-sgd", 3, tau=1), X0, num_rounds=3)
    coordinator.ready()
    with pytest.raises(ConfigError, match="expected round 1") as err:
        coordinator.record(2, 2, X0.copy())
    assert "worker 2" in str(err.value)
    coordinator.record(2, 1, X0.copy())  # the right reply is still taken


def test_a_reply_from_a_worker_with_nothing_in_flight_is_refused() -> None:
    coordinator = Coordinator(spec_of("local-sgd", 3, tau=1), X0, num_rounds=3)
    with pytest.raises(ConfigError, match="worker 0") as err:
        coordinator.record(0, 1, X0.copy())
    assert "round 1" in str(err.value) and "in flight" in str(err.value)
    coordinator.ready()
    coordinator.record(0, 1, X0.copy())
    with pytest.raises(ConfigError, match="worker 0") as err:
        coordinator.record(0, 1, X0.copy())  # a duplicate reply
    assert "last round was 1" in str(err.value) and "in flight" in str(err.value)
    for stranger in (7, -1):
        with pytest.raises(ConfigError, match=f"no worker {stranger}"):
            coordinator.record(stranger, 1, X0.copy())


@pytest.mark.parametrize(
    ("model", "what"),
    [
        (np.array([1.0, np.nan, 0.0]), "NaN"),
        (np.array([1.0, np.inf, 0.0]), "Inf"),
        (np.zeros(4), r"shape \(4,\)"),
        (np.zeros((1, 3)), r"shape \(1, 3\)"),
        (np.zeros(3, dtype=np.float32), "dtype float32"),
    ],
)
def test_a_bad_model_is_left_out_and_its_worker_reset(model: np.ndarray, what: str) -> None:
    coordinator = Coordinator(spec_of("local-sgd", 3, tau=1), X0, num_rounds=2)
    driver = Driver(coordinator)
    driver.poll()
    x = models(2, 3)
    driver.reply(0, x[0])
    driver.sent.pop(1)
    assert re.search(what, coordinator.record(1, 1, model))
    driver.reply(2, x[2])
    ready = driver.poll()
    (summary,) = coordinator.take_summaries()
    assert summary.survivors == [0, 2] and summary.rejected == [1]
    assert re.search(what, summary.missing[1])
    # Everyone gets the survivors' average; the rejected worker adopts it and resets.
    for i, d in ready.items():
        mixed = d.payload.self_weight * x[i] + d.payload.mix
        np.testing.assert_allclose(mixed, x[[0, 2]].mean(axis=0), rtol=0, atol=1e-15)
    assert ready[1].payload.adopt and ready[1].payload.reset
    assert ready[1].payload.self_weight == 0.0
    assert not ready[0].payload.adopt and not ready[0].payload.reset


# --- the final message, summaries and memory ----------------------------------------------


def test_the_final_message_applies_the_last_sync_without_steps() -> None:
    m, rounds = 3, 2
    coordinator = Coordinator(spec_of("local-sgd", m, tau=4), X0, num_rounds=rounds)
    driver = Driver(coordinator)
    for r in range(1, rounds + 1):
        sent = driver.poll()
        assert all(d.local_steps == 4 and not d.final and d.round == r for d in sent.values())
        x = models(r, m)
        for i in range(m):
            driver.reply(i, x[i])
    final = driver.poll()
    assert set(final) == {0, 1, 2}
    for d in final.values():
        assert d.final and d.local_steps == 0 and d.round == rounds + 1
        assert d.payload.sync == rounds
    assert driver.poll() == {}
    for i in range(m):
        assert not coordinator.done
        driver.reply(i, x.mean(axis=0))
    assert coordinator.done
    assert coordinator.ready() == []
    assert [s.round for s in coordinator.take_summaries()] == list(range(1, rounds + 1))
    with pytest.raises(ConfigError, match="worker 0"):
        coordinator.record(0, rounds + 1, X0.copy())


def test_summaries_one_per_round_in_order() -> None:
    m, alpha = 3, 0.6
    spec = spec_of("overlap", m, tau=1, anchor_momentum=0)
    coordinator = Coordinator(spec, X0, num_rounds=3)
    driver = Driver(coordinator)
    driver.poll()
    x1, x2 = models(1, m), models(2, m)
    driver.reply(0, x1[0])
    driver.poll()
    driver.reply(0, x2[0])  # worker 0 is a round ahead; no summary yet
    assert coordinator.take_summaries() == []
    driver.reply(1, x1[1])
    driver.reply(2, x1[2])
    summaries = coordinator.take_summaries()
    assert [s.round for s in summaries] == [1]
    driver.poll()
    driver.reply(1, x2[1])
    driver.reply(2, x2[2])
    summaries += coordinator.take_summaries()
    assert [s.round for s in summaries] == [1, 2]
    assert coordinator.take_summaries() == []

    z = X0
    for summary, x in zip(summaries, (x1, x2), strict=True):
        spread = x - x.mean(axis=0)
        expected = np.mean([spread[i] @ spread[i] for i in range(m)])
        assert summary.consensus_distance == pytest.approx(expected, rel=1e-12)
        mixed_workers = (1 - alpha) * x + alpha * z
        np.testing.assert_allclose(summary.average, mixed_workers.mean(axis=0), atol=1e-14)
        z = (1 - alpha) * x.mean(axis=0) + alpha * z
        np.testing.assert_allclose(summary.aux, z[None, :], atol=1e-14)


def test_full_averaging_summary_average_is_the_mean_of_the_reports() -> None:
    m = 4
    coordinator = Coordinator(spec_of("local-sgd", m, tau=1), X0, num_rounds=1)
    driver = Driver(coordinator)
    driver.poll()
    x = models(5, m)
    for i in range(m):
        driver.reply(i, x[i])
    (summary,) = coordinator.take_summaries()
    np.testing.assert_allclose(summary.average, x.mean(axis=0), atol=1e-15)
    assert summary.consensus_distance > 0


@pytest.mark.parametrize("algorithm", ["local-sgd", "overlap", "dpsgd"])
def test_old_reports_are_released(algorithm: str) -> None:
    """After many rounds only the last few rounds' reports are still referenced."""
    m, rounds = 4, 40
    coordinator = Coordinator(spec_of(algorithm, m, tau=1), X0, num_rounds=rounds)
    rng = np.random.default_rng(0)
    refs: list[weakref.ref[np.ndarray]] = []
    pending: dict[int, Dispatch] = {}
    while not coordinator.done:
        pending.update({d.worker: d for d in coordinator.ready()})
        worker = int(rng.choice(sorted(pending)))
        d = pending.pop(worker)
        model = rng.normal(size=D)
        refs.append(weakref.ref(model))
        coordinator.record(worker, d.round, model)
        del model
    gc.collect()
    alive = sum(ref() is not None for ref in refs)
    assert len(refs) == m * (rounds + 1)
    assert alive <= 3 * m, f"{alive} reports of {len(refs)} still held"
    # The auxiliary values kept besides the summaries: a couple of syncs, not one per round.
    assert len(coordinator._aux) <= 3


# --- a whole run against the dense matrix rule ------------------------------------------


def random_doubly_stochastic(n: int, seed: int) -> np.ndarray:
    """A random symmetric doubly stochastic W: identity plus symmetrised permutations."""
    rng = np.random.default_rng(seed)
    w = 0.2 * np.eye(n)
    for c in rng.dirichlet(np.ones(4)) * 0.8:
        p = np.eye(n)[rng.permutation(n)]
        w += c * (p + p.T) / 2
    return w


def equivalence_specs() -> dict[str, CooperativeSpec]:
    m = 5
    b = np.array([[0.3, 0.7], [0.7, 0.3]])
    return {
        "random-W-v2": CooperativeSpec(tau=2, w=random_doubly_stochastic(m + 2, 3), num_aux=2),
        "random-W-v2-anchor-momentum": CooperativeSpec(
            tau=3, w=random_doubly_stochastic(m + 2, 4), num_aux=2, anchor_momentum=0.5
        ),
        "hierarchical-v2": CooperativeSpec(
            tau=2,
            w=mixing.hierarchical(mixing.even_groups(m, 2), 0.2, aux_mixing=b),
            num_aux=2,
            nonnegative=False,
        ),
        "easgd-remark-1": CooperativeSpec(
            tau=2,
            w=mixing.easgd(m, 0.2),
            num_aux=1,
            rule=UpdateRule.MIX_BEFORE_STEP,
            nonnegative=False,
        ),
    }


@pytest.mark.parametrize("name", list(equivalence_specs()))
@pytest.mark.parametrize("order_seed", [0, 1])
def test_a_run_of_numpy_workers_equals_the_reference(name: str, order_seed: int) -> None:
    spec = equivalence_specs()[name].validate()
    m, v, eta, rounds = spec.num_workers, spec.num_aux, 0.1, 6
    rng = np.random.default_rng(42)
    hessians = []
    for _ in range(m):
        a = rng.normal(size=(D, D))
        hessians.append(a @ a.T / D + 0.1 * np.eye(D))
    targets = rng.normal(size=(m, D))

    def grad(i: int, x: np.ndarray, _: int) -> np.ndarray:
        return hessians[i] @ (x - targets[i])

    # The workers: apply the payload, then tau plain gradient steps (Remark 1: the last
    # gradient is taken at the reported model and added after the mix).
    x = np.repeat(X0[None, :], m, axis=0)
    pending_grad: list[np.ndarray | None] = [None] * m
    coordinator = Coordinator(spec, X0, num_rounds=rounds)
    order = np.random.default_rng(order_seed)
    in_flight: dict[int, Dispatch] = {}
    while not coordinator.done:
        in_flight.update({d.worker: d for d in coordinator.ready()})
        i = int(order.choice(sorted(in_flight)))
        d = in_flight.pop(i)
        if d.payload is not None:
            mix = 0.0 if d.payload.mix is None else d.payload.mix
            x[i] = d.payload.self_weight * x[i] + mix
            if pending_grad[i] is not None:
                x[i] -= eta * pending_grad[i]
                pending_grad[i] = None
        for step in range(d.local_steps):
            g = grad(i, x[i], 0)
            if spec.rule is UpdateRule.MIX_BEFORE_STEP and step == d.local_steps - 1:
                pending_grad[i] = g
            else:
                x[i] -= eta * g
        coordinator.record(i, d.round, x[i].copy())

    ref = reference_trajectory(spec, X0, grad, eta, rounds * spec.tau)[-1]
    np.testing.assert_allclose(x, ref[:, :m].T, rtol=0, atol=1e-10)
    np.testing.assert_allclose(coordinator.aux, ref[:, m:].T, rtol=0, atol=1e-10)
    assert coordinator.aux.shape == (v, D)
    # The run is not trivial: the workers moved away from x0 and do not all agree.
    assert np.linalg.norm(x - X0) > 1e-2
    assert np.ptp(x, axis=0).max() > 1e-6


def test_a_reset_not_yet_delivered_survives_the_next_missed_sync() -> None:
    """Worker 1's round-1 model is rejected; it is not sampled for round 2, so it gets no
    message before sync 2 replaces its pending payload: that one still clears its momentum."""
    coordinator = Coordinator(spec_of("local-sgd", 4, tau=1), X0, num_rounds=3, participation=0.5)
    driver = Driver(coordinator)
    assert set(driver.poll()) == {1, 3}  # participation.sample(0, r, 4, 0.5): {1,3},{0,2},{1,3}
    driver.reply(1, np.full(D, np.nan))
    driver.reply(3, models(1, 4)[3])
    assert set(driver.poll()) == {0, 2}
    for i in (0, 2):
        driver.reply(i, models(2, 4)[i])
    ready = driver.poll()
    assert ready[1].round == 3 and ready[1].payload.adopt and ready[1].payload.reset
    assert not ready[3].payload.reset


# --- a round costs the cohort -------------------------------------------------------------


def test_workers_that_adopt_the_same_column_share_one_payload() -> None:
    """FedAvg over 40 workers, 4 sampled a round: the 36 others all adopt the survivors'
    average, held once, so a round's payloads cost the cohort and not m."""
    m = 40
    spec = spec_of("local-sgd", m, tau=1)
    coordinator = Coordinator(spec, X0, num_rounds=3, participation=0.1, seed=2)
    driver = Driver(coordinator)
    first = driver.poll()
    assert len(first) == 4
    reports = models(3, m)
    for i in first:
        driver.reply(i, reports[i])
    second = driver.poll()
    pending = coordinator._pending.as_dict()
    adopters = set(range(m)) - set(first) - set(second)
    assert len(adopters) >= 32 and adopters <= set(pending)
    mixes = {id(pending[i].mix) for i in adopters}
    assert len(mixes) == 1
    average = reports[sorted(first)].mean(axis=0)
    for i in adopters:
        assert pending[i].worker == i and pending[i].adopt and pending[i].self_weight == 0.0
        np.testing.assert_allclose(pending[i].mix, average, rtol=0, atol=1e-12)
    # only the next cohort was released; those that missed round 1 adopt the same average
    for d in second.values():
        if d.worker in first:
            continue
        assert d.payload is not None and d.payload.adopt
        np.testing.assert_allclose(d.payload.mix, average, rtol=0, atol=1e-12)
