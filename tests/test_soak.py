"""A soak with crashes (slow suite): 16 SuperNodes on loopback, TLS and node authentication,
a 30-round least-squares run of overlap and of dpsgd through a seeded schedule of faults.

The schedule SIGKILLs SuperNodes (each with its ClientApp) during rounds and restarts them a
few rounds later, in the first attempt and after the resume; once per run it SIGKILLs the
SuperLink with its SuperExec and ServerApp, restarts the SuperLink on the same SQLite
database (registered nodes and their ids survive; the killed run is left to fail) and
submits the run again with `resume=<run dir>`, which continues from the run's last
checkpoint. The run directory must then hold every round once, in order; every kill as the
victim's missed rounds in events.jsonl; and final models equal to the matrix rule run over
the workers that answered each round (1e-6). Every wait is bounded, and every process
started is gone at the end, by pid.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from deploy import processes
from fedcoop import checkpoint
from fedcoop.errors import ConfigError
from strategies.result import RunResult
from tests.conftest import assert_matches_reference, recorded_result
from tests.loopback import HEARTBEAT, Deployment, loopback, saved_round, wait_for

NODES = 16
ROUNDS = 30
CHECKPOINT_EVERY = 5
#: the SuperLink is killed once a checkpoint of this round or later is written
CRASH_AFTER_CHECKPOINT = 10
#: seconds a worker's message may take: above any round of 16 nodes on 2 shared cores, so
#: that only killed nodes miss rounds (Flower reports one unavailable after 20 s)
ROUND_DEADLINE = 45
#: the most seconds one run of the soak may take, every wait included
LIMIT = 720.0
#: the event kinds that leave a worker out of a round (late only reports a discarded reply)
LEFT_OUT = frozenset({"failed", "deadline", "busy"})


@dataclass(frozen=True)
class Kill:
    """SIGKILL SuperNode `victim` and its ClientApp once the run has reached round `at`;
    restart it once it has reached round `back` and the SuperLink has taken it offline."""

    victim: int
    at: int
    back: int


@dataclass(frozen=True)
class Schedule:
    #: in the first attempt, all back before the SuperLink is killed
    before: tuple[Kill, ...]
    #: the SuperLink dies this many rounds after the checkpoint it is killed after
    crash_lag: int
    #: in the resumed run, rounds counted from the checkpoint it resumes from
    after: tuple[Kill, ...]


def draw_schedule(seed: int) -> Schedule:
    """2 to 4 distinct victims, at least one before the SuperLink's crash and one after;
    each killed at one of three rounds and back 3 to 5 rounds later."""
    rng = np.random.default_rng(seed)
    victims = [int(v) for v in rng.choice(NODES, size=int(rng.integers(2, 5)), replace=False)]
    phases = [0, 1, *(int(p) for p in rng.integers(0, 2, size=len(victims) - 2))]

    def kill(victim: int, first: int) -> Kill:
        at = first + int(rng.integers(0, 3))
        return Kill(victim, at, at + int(rng.integers(3, 6)))

    before = tuple(kill(v, 3) for v, p in zip(victims, phases, strict=True) if p == 0)
    after = tuple(kill(v, 2) for v, p in zip(victims, phases, strict=True) if p == 1)
    return Schedule(before, int(rng.integers(1, 4)), after)


def test_the_schedule_is_seeded_and_fits_the_run() -> None:
    """The same seed draws the same schedule; every draw kills 2 to 4 distinct SuperNodes,
    on both sides of the crash, and has each back before the crash or 5 rounds before the
    end, also when the checkpoint the run resumes from is the one after the first it may
    be (a checkpoint is skipped while a worker's state cannot be had)."""
    assert draw_schedule(7) == draw_schedule(7)
    schedules = [draw_schedule(seed) for seed in range(200)]
    assert len(set(schedules)) > 100
    for s in schedules:
        victims = [k.victim for k in (*s.before, *s.after)]
        assert 2 <= len(victims) == len(set(victims)) <= 4 and s.before and s.after
        assert all(3 <= k.at < k.back for k in s.before)
        assert max(k.back for k in s.before) <= CRASH_AFTER_CHECKPOINT
        assert 1 <= s.crash_lag < CHECKPOINT_EVERY
        latest = CRASH_AFTER_CHECKPOINT + CHECKPOINT_EVERY
        assert all(2 <= k.at < k.back and latest + k.back <= ROUNDS - 5 for k in s.after)


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """16 SuperNodes and a SuperLink that keeps its state in SQLite, on loopback."""
    with loopback(tmp_path_factory.mktemp("soak"), NODES, persistent=True) as d:
        yield d


@dataclass(frozen=True)
class Done:
    """A kill as it happened: the rounds the run had reached when the victim was killed and
    restarted, and the size of the victim's ClientApp log before its restart."""

    kill: Kill
    killed_at: int
    back_at: int
    log_from: int


def _state_files(d: Deployment) -> set[Path]:
    """Every worker state file on the devices now (those of the runs so far)."""
    return {p for i in range(NODES) for p in d.device(i).glob("*-partition-*.npz")}


def _reached(d: Deployment, earlier: set[Path]) -> Callable[[], int]:
    """The last round any device of the run (the one whose state files are not `earlier`)
    has finished."""
    return lambda: max(saved_round(d.device(i), earlier) for i in range(NODES))


def _inject(
    d: Deployment, kills: tuple[Kill, ...], earlier: set[Path], left: Callable[[], float]
) -> list[Done]:
    """Kill and restart the victims of `kills` as the run (whose state files are not
    `earlier`) reaches their rounds; return once each restarted victim trains again."""
    reached = _reached(d, earlier)
    steps = [(k.at, False, k) for k in kills] + [(k.back, True, k) for k in kills]
    killed_at: dict[Kill, int] = {}
    done = []
    for round_, restart, k in sorted(steps, key=lambda s: (s[0], s[1], s[2].victim)):
        wait_for(f"round {round_}", lambda r=round_: reached() >= r, left(), every=0.2)
        names = (f"supernode-{k.victim}", f"clientapp-{k.victim}")
        if not restart:
            killed_at[k] = reached()
            d.kill(*names)
            continue
        node = d.node_ids[k.victim]
        wait_for(
            f"node {node} reported offline",
            lambda n=node: d.statuses().get(n) == "offline",
            min(left(), 6 * HEARTBEAT),
            every=2,
        )
        log_from = processes.log_file(d.state, names[1]).stat().st_size
        done.append(Done(k, killed_at[k], reached(), log_from))
        d.start_supernode(k.victim)
    for x in done:
        # (the victim may have saved one more round between the measure and the kill)
        wait_for(
            f"worker {x.kill.victim} trains again",
            lambda v=x.kill.victim, r=x.killed_at: saved_round(d.device(v), earlier) > r + 1,
            min(left(), 120),
            every=0.2,
        )
        print(f"worker {x.kill.victim}: killed at round {x.killed_at}, back at {x.back_at}")
    return done


def _checkpoint_round(run_dir: Path) -> int:
    try:
        return int(checkpoint.read(run_dir)["round"])
    except ConfigError:  # none yet
        return 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _run_statuses(d: Deployment) -> dict[str, str]:
    """Run id -> status (e.g. finished:completed) as the SuperLink reports them."""
    return {r["run-id"]: r["status"] for r in d.flwr_json("ls")["runs"]}


@pytest.mark.slow
@pytest.mark.parametrize(("algorithm", "seed"), [("overlap", 14), ("dpsgd", 15)])
def test_a_run_rides_out_killed_supernodes_and_resumes_after_a_killed_superlink(
    soak: Deployment, algorithm: str, seed: int
) -> None:
    d, plan = soak, draw_schedule(seed)
    print(f"{algorithm}: {plan}")
    start = time.monotonic()

    def left() -> float:
        remaining = LIMIT - (time.monotonic() - start)
        assert remaining > 0, f"the soak ran past {LIMIT}s"
        return remaining

    runs = d.runs / algorithm
    config = (
        f"num-clients={NODES} num-rounds={ROUNDS} seed=3 results-dir='{runs}' "
        f"algorithm='{algorithm}' tau=2 dataset='least-squares' model='linear' batch-size=0 "
        f"checkpoint-every={CHECKPOINT_EVERY} round-deadline={ROUND_DEADLINE} "
        "round-timeout=180 quorum=0.5"
    )
    wait_for("all nodes online", d.all_online, left())
    files = _state_files(d)
    first_log, resume_log = d.root / f"{algorithm}-first.log", d.root / f"{algorithm}-resume.log"
    with d.submitted(config, first_log) as first:
        done = _inject(d, plan.before, files, left)
        reached = _reached(d, files)
        wait_for("the run directory", lambda: runs.is_dir() and any(runs.iterdir()), left())
        (run_dir,) = runs.iterdir()
        wait_for(
            f"a checkpoint of round {CRASH_AFTER_CHECKPOINT} or later",
            lambda: _checkpoint_round(run_dir) >= CRASH_AFTER_CHECKPOINT,
            left(),
            every=0.2,
        )
        lag = _checkpoint_round(run_dir) + plan.crash_lag
        wait_for(f"round {lag}", lambda: reached() >= lag, left(), every=0.2)
        serverapps = [p for p in d.remember() if "serverapp-process" in _cmdline(p)]
        assert len(serverapps) == 1, "the ServerApp runs under the SuperLink"
        crashed_at = reached()
        assert serverapps[0] in d.kill("superlink")
        assert first.wait(timeout=60) != 0  # its log stream broke off
    resumed_from = _checkpoint_round(run_dir)
    print(f"SuperLink killed at round {crashed_at}, checkpoint of round {resumed_from}")
    assert CRASH_AFTER_CHECKPOINT <= resumed_from < crashed_at  # rounds to redo
    assert resumed_from <= CRASH_AFTER_CHECKPOINT + CHECKPOINT_EVERY  # the schedule fits
    d.start_superlink()  # on the same database: the same nodes, by their keys
    wait_for("the same nodes online", lambda: d.statuses() == dict.fromkeys(d.node_ids, "online"),
             min(left(), 6 * HEARTBEAT))  # fmt: skip

    files = _state_files(d)
    with d.submitted(f"resume='{run_dir}'", resume_log) as resume:
        after = tuple(
            Kill(k.victim, resumed_from + k.at, resumed_from + k.back) for k in plan.after
        )
        done += _inject(d, after, files, left)
        assert resume.wait(timeout=left()) == 0, resume_log.read_text()[-5000:]
    print(f"{algorithm}: {time.monotonic() - start:.0f}s")

    # the resumed run continued the killed one's run directory from its checkpoint
    assert f"fedcoop: resuming {run_dir} after round {resumed_from}" in resume_log.read_text()
    config_read, result = recorded_result(run_dir)
    assert config_read.resume == str(run_dir) and config_read.num_rounds == ROUNDS
    # the killed run failed (its ServerApp sent no more heartbeats), the resumed one completed
    ids = [_run_id(log) for log in (first_log, resume_log)]
    wait_for(
        "the killed run failed",
        lambda: [_run_statuses(d).get(i) for i in ids] == ["finished:failed", "finished:completed"],
        min(left(), 6 * HEARTBEAT),
        every=5,
    )
    _assert_faults_recorded(d, result, done, resumed_from)
    # the SuperLink's death is in events.jsonl too, as the resume from its checkpoint
    assert [e["round"] for e in result.events if e["kind"] == "resumed"] == [resumed_from]
    # the final models are the matrix rule's over the workers that answered each round
    assert np.all(np.isfinite(result.workers))
    assert_matches_reference(config_read, result)


def _run_id(log: Path) -> str:
    """The id of the run that `flwr run` started, from its output."""
    started = re.search(r"Successfully started run (\d+)", log.read_text())
    assert started, log.read_text()[-2000:]
    return started.group(1)


def _assert_faults_recorded(
    d: Deployment, result: RunResult, done: list[Done], resumed_from: int
) -> None:
    """Every round once, in order, and each event once (none of the redone rounds twice);
    only the victims missed rounds, each from about the round it was killed (devices run a
    round or two apart), those of a kill before the crash kept by the checkpoint; each
    victim restored its worker from its device; `participants` agrees with the events,
    and every victim was back for the last rounds."""
    assert [row["round"] for row in result.rounds] == list(range(1, ROUNDS + 1))
    events = [e for e in result.events if "worker" in e]  # (dpsgd: a split ring names none)
    assert {e["kind"] for e in events} <= LEFT_OUT | {"late"}, events
    keys = [(e["round"], e["worker"], e["kind"]) for e in events]
    assert len(keys) == len(set(keys)), keys
    left_out = Counter((e["round"], e["worker"]) for e in events if e["kind"] in LEFT_OUT)
    assert {w for _, w in left_out} <= {x.kill.victim for x in done}, sorted(left_out)
    for x in done:
        missed = [r for r, w in left_out if w == x.kill.victim]
        assert missed and min(missed) >= x.killed_at - 2, (x, sorted(missed))
        assert (min(missed) <= resumed_from) == (x.killed_at <= resumed_from), (x, missed)
        restored = processes.log_file(d.state, f"clientapp-{x.kill.victim}").read_text()
        assert "restored the worker of round" in restored[x.log_from :]
    participants = [row["participants"] for row in result.rounds]
    out = Counter(r for r, _ in left_out.elements())
    assert participants == [NODES - out[r] for r in range(1, ROUNDS + 1)]
    assert participants[-3:] == [NODES] * 3
