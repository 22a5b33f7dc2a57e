"""The virtual clock against hand-worked times, the papers' runtime claims, and its parsing.

Link and model sizes are chosen so every transfer is a round number of seconds: with
m = 4 workers, B = 1 MB and bandwidth 4 MB/s / TRANSFER, a star transfer shared by all four
workers takes exactly TRANSFER seconds.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pytest

from fedcoop import algorithms
from fedcoop.clock import StepTime, VirtualClock
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError
from fedcoop.links import LINK_PRESETS, Link, parse_link
from tests.conftest import spec_of

M, B = 4, 1_000_000
TAU, STEP = 4, 0.25
#: one round of local steps with constant step times
T = TAU * STEP
CONSTANT = StepTime(STEP)


@dataclass(frozen=True)
class Scripted(StepTime):
    """Step durations written out per round as (m, tau) arrays, then constant `mean`."""

    mean: float = STEP
    script: list[np.ndarray] = field(default_factory=list)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.script.pop(0).ravel() if self.script else super().sample(rng, n)


def clock_of(
    algorithm: str,
    transfer: float,
    *,
    latency: float = 0.0,
    step_time: StepTime = CONSTANT,
    seed: int = 0,
    m: int = M,
    **changes: object,
) -> VirtualClock:
    """A clock whose star transfers, shared by all m workers, take latency + transfer s."""
    link = Link(latency=latency, bandwidth=m * B / transfer)
    spec = spec_of(algorithm, m, tau=TAU, **changes)
    return VirtualClock(spec, model_bytes=B, step_time=step_time, link=link, seed=seed)


def run(clock: VirtualClock, rounds: int) -> list[float]:
    return [clock.round(r) for r in range(1, rounds + 1)]


def replayed_steps(step_time: StepTime, seed: int, rounds: int, m: int = M) -> np.ndarray:
    """The documented draw order: per round, m * tau durations, row i for worker i."""
    rng = np.random.default_rng(seed)
    return np.stack([step_time.sample(rng, m * TAU).reshape(m, TAU) for _ in range(rounds)])


@pytest.mark.parametrize(
    ("algorithm", "transfer", "latency"),
    [
        ("local-sgd", 0.25, 0.0),
        ("local-sgd", 1.5, 0.0),
        ("local-sgd", 0.25, 0.1),  # the latency counts once per transfer
        ("sync", 0.5, 0.0),
        ("fedavg", 0.5, 0.0),
        ("generalized-elastic", 0.5, 0.0),
    ],
)
def test_columns_that_read_workers_pay_compute_up_and_down_every_round(
    algorithm: str, transfer: float, latency: float
) -> None:
    """Local SGD's barrier, and every column that reads workers: each round computes, then
    uploads and downloads, latency + transfer s each way."""
    clock = clock_of(algorithm, transfer, latency=latency)
    compute = clock.spec.tau * STEP  # sync forces tau = 1
    up = down = latency + transfer
    times = run(clock, 5)
    assert times == pytest.approx([r * (compute + up) + (r - 1) * down for r in range(1, 6)])
    assert clock.finish() == pytest.approx(5 * (compute + up + down))


@pytest.mark.parametrize(("up", "steady"), [(0.25, T), (0.75, 1.5), (1.5, 3.0)])
def test_overlap_hides_communication_behind_the_next_round(up: float, steady: float) -> None:
    """T + up for the first round, then max(T, up + down) per round (overlap eq. 10): the
    steady-state round is the longer of compute and communication."""
    clock = clock_of("overlap", up)
    times = run(clock, 10)
    assert times == pytest.approx([T + up + (r - 1) * max(T, 2 * up) for r in range(1, 11)])
    assert np.diff(times)[-5:] == pytest.approx([steady] * 5)
    assert clock.finish() == pytest.approx(times[-1])


@pytest.mark.parametrize("algorithm", ["easgd", "hierarchical", "cocod"])
def test_every_anchor_only_column_pipelines_like_overlap(algorithm: str) -> None:
    assert run(clock_of(algorithm, 1.5), 5) == pytest.approx(run(clock_of("overlap", 1.5), 5))


@pytest.mark.parametrize("distribution", ["constant", "exponential", "lognormal"])
@pytest.mark.parametrize("latency", [0.0, 0.05, 2.0])
@pytest.mark.parametrize("transfer", [0.1, 1.0, 5.0])
def test_overlap_is_never_slower_than_local_sgd(
    distribution: str, latency: float, transfer: float
) -> None:
    step_time = StepTime(STEP, distribution, sigma=1.0)
    for seed in range(3):
        kwargs = dict(latency=latency, step_time=step_time, seed=seed)
        overlap, local = (
            clock_of("overlap", transfer, **kwargs),
            clock_of("local-sgd", transfer, **kwargs),
        )
        assert np.all(np.array(run(overlap, 12)) <= np.array(run(local, 12)) + 1e-12)
        assert overlap.finish() <= local.finish()


def test_the_sync_waits_for_the_slowest_worker() -> None:
    step_time = StepTime(STEP, "lognormal", sigma=1.0)
    steps = replayed_steps(step_time, seed=7, rounds=2)
    clock = clock_of("local-sgd", 0.5, step_time=step_time, seed=7)
    slowest = steps.sum(axis=2).max(axis=1)
    assert clock.round(1) == pytest.approx(slowest[0] + 0.5)
    assert clock.round(2) == pytest.approx(slowest[0] + 0.5 + 0.5 + slowest[1] + 0.5)


def test_overlap_absorbs_a_straggler_that_local_sgd_waits_for() -> None:
    """Worker 0 takes 1.5 s instead of 1 in round 1 and 0.5 s in round 2. Local SGD waits
    for it twice; overlap's others never wait, and worker 0 catches up (overlap sec. 2)."""
    straggle = np.full((M, TAU), STEP)
    straggle[0] = 1.5 / TAU
    catch_up = np.full((M, TAU), STEP)
    catch_up[0] = 0.5 / TAU
    times = {
        algorithm: run(
            clock_of(algorithm, 0.25, step_time=Scripted(script=[straggle, catch_up])), 2
        )
        for algorithm in ("local-sgd", "overlap")
    }
    assert times["local-sgd"] == pytest.approx([1.5 + 0.25, 1.75 + 0.25 + T + 0.25])
    assert times["overlap"] == pytest.approx([1.5 + 0.25, 2 * T + 0.25])


@pytest.mark.parametrize("distribution", ["exponential", "lognormal"])
def test_seeded_random_step_times_are_deterministic(distribution: str) -> None:
    step_time = StepTime(STEP, distribution)
    a, b = (run(clock_of("local-sgd", 0.5, step_time=step_time, seed=3), 5) for _ in range(2))
    other = run(clock_of("local-sgd", 0.5, step_time=step_time, seed=4), 5)
    assert a == b
    assert a != other


def test_a_workers_draws_do_not_depend_on_who_else_takes_part() -> None:
    step_time = StepTime(STEP, "exponential")
    steps = replayed_steps(step_time, seed=1, rounds=2)
    clock = clock_of("local-sgd", 0.5, step_time=step_time, seed=1)
    first = clock.round(1, [2])
    # alone, worker 2's upload has the whole server link: 0.5 / 4 s
    assert first == pytest.approx(steps[0, 2].sum() + 0.125)
    assert clock.round(2, [2]) == pytest.approx(first + 0.125 + steps[1, 2].sum() + 0.125)


@pytest.mark.parametrize("distribution", ["exponential", "lognormal"])
def test_random_step_times_keep_the_mean(distribution: str) -> None:
    draws = StepTime(0.05, distribution, sigma=0.8).sample(np.random.default_rng(0), 200_000)
    assert draws.mean() == pytest.approx(0.05, rel=0.01)
    assert draws.min() >= 0 and draws.std() > 0.01


def test_constant_step_times_draw_nothing() -> None:
    rng = np.random.default_rng(0)
    assert list(StepTime(0.1).sample(rng, 3)) == [0.1, 0.1, 0.1]
    assert rng.random() == np.random.default_rng(0).random()
    assert list(StepTime(0.0, "lognormal").sample(rng, 2)) == [0.0, 0.0]


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ((0.1, "weibull"), "step-time-distribution"),
        ((-0.1,), "step-time"),
        ((0.1, "lognormal", -1.0), "step-time-sigma"),
    ],
)
def test_step_time_refuses_bad_values(args: tuple, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        StepTime(*args)


def test_partial_participation_shares_the_server_link_among_participants() -> None:
    """Worked by hand: per-worker share of the server link 0.25 s for B."""
    clock = clock_of("local-sgd", 1.0)  # all four: up = down = 1.0; two: 0.5
    assert clock.round(1) == pytest.approx(T + 1.0)
    # workers 0 and 1: fetch sync 1 (0.5), compute, upload (0.5)
    assert clock.round(2, [0, 1]) == pytest.approx(2.0 + 0.5 + T + 0.5)
    # everyone fetches sync 2 (the mix of workers 0 and 1, known at 4.0), computes, uploads
    assert clock.round(3) == pytest.approx(4.0 + 1.0 + T + 1.0)
    assert clock.finish() == pytest.approx(7.0 + 1.0)


def test_non_participants_do_not_compute_or_upload() -> None:
    """Workers 1-3 sit out round 2, whose script gives them 100 s of steps: none of it shows."""
    idle = np.full((M, TAU), STEP)
    idle[1:] = 100.0
    clock = clock_of("local-sgd", 1.0, step_time=Scripted(script=[np.full((M, TAU), STEP), idle]))
    assert clock.round(1) == pytest.approx(T + 1.0)
    # worker 0 alone has the server link: 0.25 s down, compute, 0.25 s up
    assert clock.round(2, [0]) == pytest.approx(2.0 + 0.25 + T + 0.25)
    # all fetch sync 2 (1.0 s), compute, upload (1.0 s)
    assert clock.round(3) == pytest.approx(3.5 + 1.0 + T + 1.0)


@pytest.mark.parametrize(
    ("topology", "degree"), [("ring", 2), ("hypercube", 3), ("exponential", 5)]
)
def test_peer_exchange_time_grows_with_the_degree(topology: str, degree: int) -> None:
    """D-PSGD sends B to each of deg(i) neighbours over the worker's own link."""
    m, per_copy = 8, 0.25
    spec = spec_of("dpsgd", m, tau=TAU, topology=topology)
    link = Link(latency=0.01, bandwidth=B / per_copy)
    clock = VirtualClock(spec, model_bytes=B, step_time=StepTime(STEP), link=link)
    assert clock.peer
    assert list(clock.degree(1)) == [degree] * m
    exchange = 0.01 + degree * per_copy
    assert run(clock, 3) == pytest.approx([r * (T + exchange) for r in (1, 2, 3)])
    assert clock.finish() == pytest.approx(3 * (T + exchange))


def test_dense_w_without_an_anchor_is_a_star() -> None:
    assert not clock_of("dpsgd", 1.0, topology="complete").peer
    assert not clock_of("local-sgd", 1.0).peer


def test_round_order_and_participants_are_checked() -> None:
    clock = clock_of("local-sgd", 1.0)
    with pytest.raises(ValueError, match="out of order"):
        clock.round(2)
    with pytest.raises(ValueError, match="participants"):
        clock.round(1, [])
    with pytest.raises(ValueError, match="participants"):
        clock.round(1, [M])
    assert clock.finish() == 0.0


def test_from_config_reads_the_clock_keys() -> None:
    config = RunConfig(
        algorithm="overlap",
        num_clients=M,
        step_time=0.2,
        step_time_distribution="lognormal",
        step_time_sigma=0.3,
        link="lte",
        seed=5,
    )
    clock = VirtualClock.from_config(config, algorithms.resolve(config), model_bytes=B)
    assert clock.step_time == StepTime(0.2, "lognormal", 0.3)
    assert clock.link == LINK_PRESETS["lte"]
    same = VirtualClock(
        clock.spec, model_bytes=B, step_time=clock.step_time, link=clock.link, seed=5
    )
    assert run(clock, 3) == run(same, 3)
    with pytest.raises(ConfigError, match="link"):
        VirtualClock.from_config(config.replace(link="dialup"), clock.spec, model_bytes=B)


def test_link_transfer_is_latency_plus_bytes_over_bandwidth() -> None:
    assert Link(0.05, 2.5e6).transfer(5_000_000) == pytest.approx(2.05)
    assert Link(0.05, 2.5e6).transfer(0) == 0.05
    with pytest.raises(ConfigError):
        Link(0.0, 0.0)
    with pytest.raises(ConfigError):
        Link(-1.0, 1.0)


@pytest.mark.parametrize(
    ("text", "latency", "bandwidth"),
    [
        ("50ms/20mbit", 0.05, 2.5e6),
        ("1s/1gbit", 1.0, 1.25e8),
        ("0.5ms/100kbit", 0.0005, 12_500.0),
        (" 50MS / 20Mbit ", 0.05, 2.5e6),
        ("0ms/10gbit", 0.0, 1.25e9),
    ],
)
def test_parse_link_custom(text: str, latency: float, bandwidth: float) -> None:
    link = parse_link(text)
    assert link.latency == pytest.approx(latency)
    assert link.bandwidth == pytest.approx(bandwidth)


@pytest.mark.parametrize(
    "text", ["", "fast", "50ms", "50/20", "50ms/0mbit", "-1ms/2mbit", "50ms/20mb", "50us/1mbit"]
)
def test_parse_link_refuses_anything_else(text: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_link(text)
    assert error.value.parameter == "link"
    assert "datacenter-10g" in str(error.value) and "'<ms>ms/<mbit>mbit'" in str(error.value)


def test_link_presets() -> None:
    names = ["datacenter-40g", "datacenter-10g", "wifi", "lte", "congested-wireless"]
    assert list(LINK_PRESETS) == names
    assert all(parse_link(name) is LINK_PRESETS[name] for name in names)
    assert LINK_PRESETS["datacenter-40g"] == Link(1e-4, 5e9)
    assert LINK_PRESETS["datacenter-10g"] == Link(1e-4, 1.25e9)
    assert LINK_PRESETS["lte"] == parse_link("50ms/20mbit")
    # slower presets: never faster bandwidth, never lower latency
    links = [LINK_PRESETS[name] for name in names]
    assert all(a.bandwidth > b.bandwidth for a, b in itertools.pairwise(links))
    assert all(a.latency <= b.latency for a, b in itertools.pairwise(links))
    assert RunConfig().link in LINK_PRESETS
