"""The Flower strategy that runs any A(tau, W, v): a custom loop over the Grid.

Flower's ``Strategy.start`` sends a round and waits for all of it; Cooperative SGD needs each
worker's next message to leave as soon as its own column of W can be computed (a barrier for
J, neighbours for a sparse W, nothing new for anchor columns, which is what lets
Overlap-Local-SGD hide the averaging behind the next tau steps). So this strategy drives the
Grid itself with push_messages/pull_messages and lets `fedcoop.coordinator.Coordinator`
decide what is ready. It also maps Flower node ids to worker columns by a handshake that asks
each node its partition-id, so that column i of W is always partition i.

It is one class of some 700 lines because the loop, the reply checks, the round rows and the
checkpoints all read and write the same per-run tables (messages in flight, late replies,
the states each reply carried); the math it relays lives in `fedcoop.coordinator`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.superlink.grid import InMemoryGrid

from clients import messages
from fedcoop import algorithms, checkpoint, participation
from fedcoop.clock import VirtualClock
from fedcoop.config import RunConfig
from fedcoop.cooperative import CooperativeSpec
from fedcoop.coordinator import Coordinator, Dispatch, QuorumLost, RoundSummary
from fedcoop.errors import ConfigError, RunFailed

LOG = logging.getLogger("flwr.fedcoop")
#: Seconds a simulation's nodes may take to appear. Flower's simulation engine (``flwr run``
#: on a simulation federation, and ``run_simulation``) starts the ServerApp's thread and then
#: registers all num-supernodes nodes at once, before Ray starts; a shortfall after this is
#: the federation's size, which will not change, so there is nothing to wait for.
SIMULATED_NODES_GRACE = 5.0

#: Bytes a serialized model array may take beyond the model's own: its .npy header (128 for
#: a flat vector). A reply's model array larger than that is rejected before it is decoded.
NPY_HEADER_BYTES = 1024

#: (model vector) -> metrics of the server-side evaluation, e.g. test loss and accuracy
EvaluateFn = Callable[[np.ndarray], dict[str, float]]


@dataclass
class RunResult:
    """Everything a run produced, for results files and tests."""

    config: RunConfig
    spec: CooperativeSpec
    node_of_worker: list[int]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    #: workers' models after the final sync (m x d) and auxiliary nodes (v x d)
    workers: np.ndarray | None = None
    aux: np.ndarray | None = None
    client_evaluation: dict[str, float] = field(default_factory=dict)
    #: the run directory its results were written to, if any
    directory: Path | None = None
    #: every fault the run survived: {round, worker, node, kind, reason}; kind is one of
    #: failed, deadline (left out of the round), late (its discarded reply came), busy (left
    #: out of a round while a late reply was still outstanding), rejected, split (those two
    #: name no worker), resumed (the run continued from that round's checkpoint)
    events: list[dict[str, Any]] = field(default_factory=list)
    #: why the run stopped before its last round (e.g. every worker's model became NaN);
    #: `rounds` then holds the rounds settled before it
    failed: str | None = None


@dataclass
class _Tally:
    """Per-round figures gathered while rounds are open: losses, seconds of local steps,
    [bytes up, bytes down], and the workers' final models (m x d, NaN rows until they come:
    one table, written in place, rather than m arrays stacked at the end)."""

    final: np.ndarray
    losses: dict[int, list[float]] = field(default_factory=dict)
    compute: dict[int, list[float]] = field(default_factory=dict)
    traffic: dict[int, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Exchange:
    """One train message and its reply: the message starts `start` (None: it only collects)
    and the reply reports `collect` (None: nothing yet). Without eager replies both are the
    same dispatch; with them, a message collects the round its worker has been running
    since the previous message, and starts the next one."""

    start: Dispatch | None
    collect: Dispatch | None

    @property
    def awaited(self) -> Dispatch:
        """The dispatch whose report this exchange brings, or which it starts."""
        d = self.collect or self.start
        assert d is not None
        return d


class CooperativeStrategy:
    """Run `config` (or an explicit `spec`) over a Flower Grid."""

    def __init__(
        self,
        config: RunConfig,
        x0: np.ndarray,
        *,
        spec: CooperativeSpec | None = None,
        evaluate_fn: EvaluateFn | None = None,
        pull_interval: float = 0.01,
        run_dir: Path | None = None,
        resume: dict[str, Any] | None = None,
        lr: Callable[[int], float] | None = None,
    ) -> None:
        self.config = config
        #: the workers' learning rate per global step, for a tau schedule that reads it
        self.lr = lr
        self.x0 = np.asarray(x0)
        self.spec = spec
        self.evaluate_fn = evaluate_fn
        self.pull_interval = pull_interval
        #: where checkpoints go (None: no checkpoints), and the checkpoint to continue from
        self.run_dir = run_dir
        self.resume = resume
        #: per worker and round: (round, steps, arrays) of its state as its reply carried it
        self._states: dict[int, dict[int, tuple[int, int, dict[str, np.ndarray]]]] = {}
        #: per worker: the last state seen (reply or query), and the last round it answered
        #: (its device's state is the one seen if that is the round it answered last)
        self._known: dict[int, tuple[int, int, dict[str, np.ndarray]]] = {}
        self._answered: dict[int, int] = {}
        #: per worker: the state its next message must restore (resume); None = none yet
        self._to_restore: dict[int, tuple[int, int, dict[str, np.ndarray]] | None] = {}
        self._survivors: list[list[int]] = []
        self._elapsed = 0.0

    # -- the run ------------------------------------------------------------------------
    def start(self, grid: Grid) -> RunResult:
        """Handshake, all rounds, the final sync and the workers' own evaluation."""
        nodes = self._await_nodes(grid)
        node_of, counts = self._handshake(grid, nodes)
        if self.spec is not None:
            spec = self.spec.validate(len(node_of))
        else:  # validated for num-clients, which the handshake matched to the nodes
            spec = algorithms.resolve(self.config, counts, self.lr)
        result = RunResult(config=self.config, spec=spec, node_of_worker=node_of)
        LOG.info(
            "fedcoop: %s, m=%d workers, v=%d auxiliary, tau=%d, %d rounds",
            self.config.algorithm,
            spec.num_workers,
            spec.num_aux,
            spec.tau,
            self.config.num_rounds,
        )
        coordinator = Coordinator(
            spec,
            self.x0,
            self.config.num_rounds,
            participation=self.config.participation,
            seed=self.config.seed,
            quorum=self.config.quorum,
            norm_bound=self.config.update_norm_bound,
            checkpoint_every=self.config.checkpoint_every if self.run_dir else 0,
            eager=self.config.eager_reply,
        )
        clock = VirtualClock.from_config(self.config, spec, model_bytes=self.x0.nbytes)
        # round 0 of a tau schedule's history: the loss of x0 (only a schedule reads it)
        evaluate = self.evaluate_fn if spec.tau_schedule is not None else None
        start = evaluate(self.x0) if evaluate is not None else {}
        coordinator.observe(0, start.get("loss", np.nan), 0.0)
        if self.resume is not None:
            self._continue(self.resume, coordinator, clock, result)
        try:
            self._loop(grid, coordinator, clock, node_of, result)
        except QuorumLost as lost:
            result.failed = str(lost)
            raise RunFailed(str(lost), partial=result) from None
        result.aux = coordinator.aux
        alive = [i for i in range(len(node_of)) if np.all(np.isfinite(result.workers[i]))]
        chosen = participation.subset(self.config.seed, alive, self.config.eval_workers)
        result.client_evaluation = self._evaluate_clients(grid, [node_of[i] for i in chosen])
        return result

    def _await_nodes(self, grid: Grid) -> list[int]:
        """Wait until num-clients nodes are connected: up to round-timeout on a deployment,
        where SuperNodes may join later, but only `SIMULATED_NODES_GRACE` on the simulation
        engine's grid, whose node count is fixed: Flower's `InMemoryGrid`, which only its
        simulation runtime hands a ServerApp (a SuperLink's ServerApp gets an `HttpGrid`)."""
        m = self.config.num_clients
        simulated = isinstance(grid, InMemoryGrid)
        patience = self.config.round_timeout
        if simulated:
            patience = min(patience, SIMULATED_NODES_GRACE)
        start = time.monotonic()
        next_note = start + 10.0
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= m:
                return nodes
            hint = (
                f"{len(nodes)} of num-clients={m} nodes connected (in "
                f'simulation, pass --federation-config "num-supernodes={m}")'
            )
            now = time.monotonic()
            if now - start > patience:
                if simulated:
                    raise RunFailed(
                        f"the simulation has {len(nodes)} SuperNodes but num-clients={m}: "
                        f'pass --federation-config "num-supernodes={m}" to flwr run'
                    )
                raise RunFailed(f"after {patience}s only {hint}")
            if now > next_note:
                LOG.warning("fedcoop: waiting for nodes: %s", hint)
                next_note = now + 10.0
            time.sleep(max(self.pull_interval, 0.1))

    def _handshake(self, grid: Grid, nodes: list[int]) -> tuple[list[int], list[int]]:
        """Ask every node its partition-id; worker i is the node holding partition i."""
        content = RecordDict({messages.CONFIG: messages.config_record(self.config)})
        queries = [
            Message(content, node, MessageType.QUERY, group_id="handshake") for node in nodes
        ]
        replies = self._gather(grid, queries)
        by_partition: dict[int, tuple[int, int]] = {}
        for reply in replies:
            info = reply.content.metric_records[messages.METRICS]
            pid, num = int(info["partition-id"]), int(info["num-partitions"])
            if num != self.config.num_clients:
                raise ConfigError(
                    "num-clients",
                    self.config.num_clients,
                    f"node {reply.metadata.src_node_id} says num-partitions={num}; they must match",
                )
            by_partition.setdefault(pid, (reply.metadata.src_node_id, int(info["num-examples"])))
        missing = sorted(set(range(self.config.num_clients)) - set(by_partition))
        if missing:
            raise RunFailed(f"no connected node holds partition-id(s) {missing}")
        ordered = [by_partition[i] for i in range(self.config.num_clients)]
        return [n for n, _ in ordered], [c for _, c in ordered]

    def _gather(self, grid: Grid, out: list[Message], *, tolerant: bool = False) -> list[Message]:
        """Push `out` and wait for one reply each (used outside the pipelined loop);
        `tolerant`: leave out (and log) nodes that fail or time out instead of raising."""
        ids = list(grid.push_messages(out))
        pending = set(ids)
        replies: list[Message] = []
        deadline = time.monotonic() + self.config.round_timeout
        while pending:
            for reply in grid.pull_messages(list(pending)):
                pending.discard(reply.metadata.reply_to_message_id)
                if tolerant and reply.has_error():
                    LOG.warning(
                        "fedcoop: node %d failed: %s",
                        reply.metadata.src_node_id,
                        reply.error.reason,
                    )
                    continue
                self._raise_if_error(reply, f"node {reply.metadata.src_node_id}")
                replies.append(reply)
            if pending and time.monotonic() > deadline:
                if tolerant:
                    LOG.warning("fedcoop: %d node(s) did not answer in time", len(pending))
                    return replies
                raise RunFailed(f"{len(pending)} node(s) did not answer within the round timeout")
            if pending:
                time.sleep(self.pull_interval)
        return replies

    def _loop(
        self,
        grid: Grid,
        coordinator: Coordinator,
        clock: VirtualClock,
        node_of: list[int],
        result: RunResult,
    ) -> None:
        """Push what is ready, take what arrives, until every worker had its final sync."""
        in_flight: dict[str, tuple[_Exchange, float]] = {}
        late: dict[str, _Exchange] = {}
        #: eager: per worker, the dispatch its device runs, and a released one that waits
        #: for the worker's message in flight to come back
        running: dict[int, Dispatch] = {}
        queued: dict[int, Dispatch] = {}
        tally = _Tally(np.full((len(node_of), self.x0.size), np.nan, dtype=self.x0.dtype))
        # The final sync reaches every worker: at most a cohort's worth of its messages at
        # a time, so m of them (and their replies) are never all held at once.
        cohort = participation.cohort_size(len(node_of), self.config.participation)
        started = time.monotonic() - self._elapsed
        last_progress = time.monotonic()

        def event(round_: int, worker: int, kind: str, reason: str) -> None:
            node = node_of[worker]
            result.events.append(
                {"round": round_, "worker": worker, "node": node, "kind": kind, "reason": reason}
            )
            LOG.warning(
                "fedcoop: round %d, worker %d (node %d) %s: %s", round_, worker, node, kind, reason
            )

        def missed(d: Dispatch, kind: str, reason: str, *, still_running: bool) -> None:
            """Worker d.worker did not bring d's report: what its device runs is void."""
            event(d.round, d.worker, kind, reason)
            coordinator.drop(d.worker, d.round, reason, still_running=still_running)
            running.pop(d.worker, None)
            queued.pop(d.worker, None)

        while not coordinator.done:
            for d in coordinator.ready():
                queued[d.worker] = d
            out_now = [e for e, _ in in_flight.values()]
            exchanges = self._exchanges(queued, running, out_now, late, cohort)
            if not exchanges and not in_flight and not late:
                raise RunFailed(f"nothing in flight and nothing ready: {coordinator.describe()}")
            if exchanges:
                out = [self._message(e, node_of, coordinator.spec) for e in exchanges]
                for e, msg in zip(exchanges, out, strict=True):
                    queued.pop(e.awaited.worker, None)
                    down = tally.traffic.setdefault((e.start or e.awaited).round, [0, 0])
                    down[1] += messages.vector_bytes(msg)
                now = time.monotonic()
                for msg_id, e in zip(grid.push_messages(out), exchanges, strict=True):
                    in_flight[msg_id] = (e, now)
            # a pull can block (on a reply whose node died mid-push): replies that arrive
            # meanwhile come with the next pull, so the deadline is judged at this one's start
            pulled_at = time.monotonic()
            replies = list(grid.pull_messages([*in_flight, *late]))
            for reply in replies:
                msg_id = reply.metadata.reply_to_message_id
                if msg_id in late:
                    d = late.pop(msg_id).awaited
                    coordinator.release(d.worker)
                    if not reply.has_error():
                        self._answered[d.worker] = d.round  # its device moved on
                        self._to_restore.pop(d.worker, None)
                    reason = "its reply came after the round deadline and was discarded"
                    event(d.round, d.worker, "late", reason)
                    continue
                e, _ = in_flight.pop(msg_id)
                if reply.has_error():
                    missed(e.awaited, "failed", reply.error.reason, still_running=False)
                    continue
                # the device took the message: a checkpointed state it carried is installed
                self._to_restore.pop(e.awaited.worker, None)
                if e.collect is not None:
                    node = node_of[e.collect.worker]
                    self._take_report(reply, e.collect, node, coordinator, tally, event)
                start = e.start
                # eager: unless its report was rejected, the device now runs `start`
                if (
                    start is not None
                    and start is not e.collect
                    and coordinator.awaiting(start.worker) == start.round
                ):
                    running[start.worker] = start
            deadline = self.config.round_deadline
            for msg_id, (e, sent) in list(in_flight.items()):
                if deadline and pulled_at - sent > deadline:
                    del in_flight[msg_id]
                    late[msg_id] = e
                    reason = f"no reply within round-deadline={deadline}s"
                    missed(e.awaited, "deadline", reason, still_running=True)
            for summary in coordinator.take_summaries():
                self._settled(summary, coordinator, clock, tally, started, event, result)
            cut = coordinator.take_cut()
            if cut is not None:
                self._checkpoint(grid, coordinator, cut, node_of, result)
            if replies:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > self.config.round_timeout:
                waiting = sorted(e.awaited.worker for e, _ in in_flight.values())
                raise RunFailed(
                    f"no reply for {self.config.round_timeout}s; waiting on workers {waiting}"
                )
            else:
                time.sleep(self.pull_interval)
        result.workers = tally.final

    def _exchanges(
        self,
        queued: dict[int, Dispatch],
        running: dict[int, Dispatch],
        in_flight: list[_Exchange],
        late: dict[str, _Exchange],
        cohort: int,
    ) -> list[_Exchange]:
        """The messages to send now: each released dispatch to a worker with no message
        out (eager: collecting the round its device runs; final dispatches up to `cohort`
        in flight), and, eager, a message that only collects for a device that runs its
        final dispatch."""
        busy = {e.awaited.worker for e in in_flight} | {e.awaited.worker for e in late.values()}
        free = [(i, d) for i, d in sorted(queued.items()) if i not in busy]
        room = cohort - sum(e.awaited.final for e in in_flight)
        finals = [(i, d) for i, d in free if d.final][: max(0, room)]
        free = [(i, d) for i, d in free if not d.final] + finals
        if not self.config.eager_reply:
            return [_Exchange(d, d) for _, d in free]
        out = [_Exchange(d, running.pop(i, None)) for i, d in free]
        for i, d in sorted(running.items()):
            if d.final and i not in busy and i not in queued:
                out.append(_Exchange(None, running.pop(i)))
        return out

    def _take_report(
        self,
        reply: Message,
        d: Dispatch,
        node: int,
        coordinator: Coordinator,
        tally: _Tally,
        event: Callable[[int, int, str, str], None],
    ) -> None:
        """Give the coordinator the model a reply from `node` (the message's destination)
        reports for dispatch `d` (or reject it)."""
        tally.traffic.setdefault(d.round, [0, 0])[0] += messages.vector_bytes(reply)
        x, state, problem = _read_reply(reply, d, node, self.x0.nbytes + NPY_HEADER_BYTES)
        self._answered[d.worker] = d.round
        # (a rejected reply's state is asked for afresh at the checkpoint)
        if state is not None:
            state[2][messages.MODEL] = x  # the reply's model is the state's
            self._states.setdefault(d.worker, {})[d.round] = state
            self._known[d.worker] = state
        if problem is None:
            problem = coordinator.record(d.worker, d.round, x)
        else:
            coordinator.reject(d.worker, d.round, problem)
        if problem is not None:
            event(d.round, d.worker, "rejected", problem)
        elif d.final:
            tally.final[d.worker] = x.reshape(-1)
        else:
            record = messages.reply_record(reply) or {}  # (read by _read_reply)
            tally.losses.setdefault(d.round, []).append(float(record["train-loss"]))
            tally.compute.setdefault(d.round, []).append(float(record["compute-time"]))

    def _settled(
        self,
        summary: RoundSummary,
        coordinator: Coordinator,
        clock: VirtualClock,
        tally: _Tally,
        started: float,
        event: Callable[[int, int, str, str], None],
        result: RunResult,
    ) -> None:
        """Log a settled round's events and append its metrics row."""
        for worker, kind in summary.settled_out.items():
            event(summary.round, worker, kind, summary.missing[worker])
        if summary.components > 1:
            LOG.warning(
                "fedcoop: round %d: the surviving workers %s mix in %d separate parts",
                summary.round,
                summary.survivors,
                summary.components,
            )
            result.events.append(
                {"round": summary.round, "kind": "split", "reason": f"{summary.components} parts"}
            )
        steps = result.rounds[-1]["local-steps"] if result.rounds else 0
        row = self._round_row(summary, steps + summary.tau, tally, started)
        row["virtual-time"] = clock.round(summary.round, summary.survivors, summary.tau)
        coordinator.observe(summary.round, row.get("test-loss", np.nan), row["virtual-time"])
        result.rounds.append(row)
        self._survivors.append(summary.survivors)
        LOG.info("fedcoop: %s", _format_row(row))

    # -- checkpoints ---------------------------------------------------------------------
    def _checkpoint(
        self,
        grid: Grid,
        coordinator: Coordinator,
        cut: dict[str, Any],
        node_of: list[int],
        result: RunResult,
    ) -> None:
        """Write the checkpoint of settled round cut["settled"], with every worker's state
        as of that cut: from its round reply, or asked now from a worker that has been
        idle since, or, for one that cannot answer (a dead device), the state it was last
        seen in if it has not answered a round since. A cut some worker's state cannot be
        had for is skipped (the next one counts)."""
        r = cut["settled"]
        states: dict[int, tuple[int, int, dict[str, np.ndarray]] | None] = {}
        ask: list[int] = []
        kept = {i: by_round.pop(cut["last"][i], None) for i, by_round in self._states.items()}
        for by_round in self._states.values():
            for old in [k for k in by_round if k <= r]:
                del by_round[old]
        for i, last in enumerate(cut["last"]):
            have = kept.get(i)
            if last == 0:
                states[i] = None
            elif have is not None and have[0] == last:
                states[i] = have
            elif coordinator.idle_since(i, last):
                ask.append(i)
            else:
                LOG.info("fedcoop: no checkpoint after round %d: worker %d is busy", r, i)
                return
        content = RecordDict({messages.CONFIG: messages.config_record(self.config)})
        queries = [
            Message(content, node_of[i], messages.QUERY_STATE, group_id=f"checkpoint-{r}")
            for i in ask
        ]
        replies = self._gather(grid, queries, tolerant=True) if queries else []
        worker_of = {node: i for i, node in enumerate(node_of)}
        for reply in replies:
            i = worker_of[reply.metadata.src_node_id]
            problem = "no state"
            try:
                state = messages.read_state(messages.reply_record(reply) or {})
            except ValueError as exc:
                state, problem = None, str(exc)
            if state is None:  # taken as missing below
                LOG.warning("fedcoop: worker %d's reply to the state query: %s", i, problem)
                continue
            # a device that has not yet taken the state it is to restore holds that one
            states[i] = state if state[0] else self._to_restore.get(i)
            if state[0]:
                self._known[i] = state
        for i in set(ask) - set(states):
            seen = self._known.get(i)
            if i in self._to_restore:
                states[i] = self._to_restore[i]
            elif i not in self._answered:
                states[i] = None  # it never completed a round: it holds nothing
            elif seen is not None and seen[0] == self._answered[i]:
                states[i] = seen
        if len(states) < len(node_of):
            LOG.warning("fedcoop: no checkpoint after round %d: a worker's state is missing", r)
            return
        checkpoint.write(
            self.run_dir,
            {
                "round": r,
                "config": self.config.to_mapping(),
                "coordinator": cut,
                "workers": states,
                "rounds": result.rounds[:r],
                "events": [e for e in result.events if e["round"] <= r],
                "survivors": self._survivors[:r],
                "wall-time": result.rounds[r - 1]["wall-time"],
            },
        )

    def _continue(
        self,
        saved: dict[str, Any],
        coordinator: Coordinator,
        clock: VirtualClock,
        result: RunResult,
    ) -> None:
        """Pick up a checkpoint: server state, metrics so far, the clock replayed, and each
        worker's state to restore with its first message."""
        coordinator.restore(saved["coordinator"])
        result.rounds = list(saved["rounds"])
        result.events = list(saved["events"])
        # the interruption itself (a ServerApp or SuperLink that died leaves no word of it)
        result.events.append(
            {
                "round": int(saved["round"]),
                "kind": "resumed",
                "reason": f"the run stopped unfinished after its round-{saved['round']} "
                "checkpoint and was resumed from it: the rounds after it ran again",
            }
        )
        self._survivors = [list(s) for s in saved["survivors"]]
        for row, survivors in zip(result.rounds, self._survivors, strict=True):
            clock.round(row["round"], survivors, row["tau"])
            coordinator.observe(row["round"], row.get("test-loss", np.nan), row["virtual-time"])
        self._to_restore = dict(saved["workers"])
        self._elapsed = float(saved["wall-time"])

    def _message(self, e: _Exchange, node_of: list[int], spec: CooperativeSpec) -> Message:
        """The train message of exchange `e`: the dispatch it starts (header, payload, x0)
        and, with eager replies, the round whose model its reply must carry."""
        worker = e.awaited.worker
        header: dict[str, Any] = {
            "update-rule": spec.rule.value,
            "client-rule": spec.client_rule.value,
        }
        vectors: dict[str, messages.Vector] = {}
        d = e.start
        if d is not None:
            header["round"], header["local-steps"] = d.round, d.local_steps
            vectors[messages.INIT] = self.x0 if d.init else None
            if d.payload is not None:
                header["sync"] = d.payload.sync
                header["self-weight"] = d.payload.self_weight
                header["adopt"] = d.payload.adopt
                header["reset"] = d.payload.reset
                vectors[messages.MIX] = d.payload.mix
        if self.config.eager_reply:
            header["collect"] = 0 if e.collect is None else e.collect.round
        every, reported = self.config.checkpoint_every, e.collect
        if (
            self.run_dir is not None
            and every
            and reported is not None
            and reported.round % every == 0
            and not reported.final
        ):
            header["send-state"] = True
        if worker in self._to_restore:  # kept until a reply says the device has it
            state = self._to_restore[worker]
            header.update(messages.state_entries(*(state if state is not None else (0, 0))))
        content = messages.train_content(self.config, {**header, **vectors})
        group = (d or e.awaited).round
        return Message(content, node_of[worker], MessageType.TRAIN, group_id=str(group))

    def _round_row(
        self, summary: RoundSummary, steps: int, tally: _Tally, started: float
    ) -> dict[str, Any]:
        """One round's metrics, taking what `tally` gathered for it: `steps` local steps per
        worker so far; bytes count the round's messages and replies."""

        def mean(values: list[float]) -> float:
            return float(np.mean(values)) if values else float("nan")

        row: dict[str, Any] = {
            "round": summary.round,
            "tau": summary.tau,
            "local-steps": steps,
            "train-loss": mean(tally.losses.pop(summary.round, [])),
            "consensus-distance": summary.consensus_distance,
            "participants": len(summary.survivors),
            "dropped": len(summary.missing) - len(summary.rejected),
            "rejected": len(summary.rejected),
        }
        if self.evaluate_fn is not None:
            row.update({f"test-{k}": v for k, v in self.evaluate_fn(summary.average).items()})
        row["wall-time"] = time.monotonic() - started
        row["compute-time"] = mean(tally.compute.pop(summary.round, []))
        row["bytes-up"], row["bytes-down"] = tally.traffic.pop(summary.round, [0, 0])
        return row

    def _evaluate_clients(self, grid: Grid, nodes: list[int]) -> dict[str, float]:
        """Each of `nodes` (the workers that ended the run, or a sample of them) evaluates its
        own final model; the mean over them."""
        content = RecordDict({messages.CONFIG: messages.config_record(self.config)})
        out = [Message(content, node, MessageType.EVALUATE, group_id="final") for node in nodes]
        replies = self._gather(grid, out, tolerant=True)
        if not replies:
            return {}
        rows = [dict(r.content.metric_records[messages.METRICS]) for r in replies]
        keys = [k for k in rows[0] if k != "num-examples"]
        return {f"worker-{k}": float(np.mean([row[k] for row in rows])) for k in keys}

    @staticmethod
    def _raise_if_error(reply: Message, who: str) -> None:
        if reply.has_error():
            raise RunFailed(f"{who} failed: {reply.error.reason}")


def _read_reply(
    reply: Message, d: Dispatch, node: int, max_bytes: int
) -> tuple[np.ndarray, tuple[int, int, dict[str, np.ndarray]] | None, str | None]:
    """The model a reply carries and the worker state, if it carries one, or why the reply
    is unusable (checked before the coordinator sees the model: who sent it, its entries and
    the size of each vector, before any is decoded, and the round the worker says it ran).
    `node`: the message's destination; `max_bytes`: the most a serialized vector may take."""
    unusable = np.empty(0), None
    src = reply.metadata.src_node_id
    if src != node:
        return *unusable, f"reply from node {src}, the message was for node {node}"
    record = messages.reply_record(reply)
    if record is None:
        return *unusable, "no reply record"
    problem = messages.reply_entries_problem(record)
    if problem is not None:
        return *unusable, problem
    for key, value in record.items():
        if messages.is_vector(key) and isinstance(value, bytes) and len(value) > max_bytes:
            return *unusable, f"vector {key} of {len(value)} bytes, expected at most {max_bytes}"
    said = record.get("round")
    if said != d.round:
        return *unusable, f"reply says round {said}, the message was round {d.round}"
    try:
        return messages.decode(record[messages.MODEL]), messages.read_state(record), None
    except (ValueError, TypeError) as exc:
        return *unusable, f"unreadable vector or state: {exc}"


def _format_row(row: dict[str, Any]) -> str:
    parts = [f"round {row['round']:>3}", f"train-loss {row['train-loss']:.4f}"]
    for key in ("test-loss", "test-accuracy"):
        if key in row:
            parts.append(f"{key} {row[key]:.4f}")
    parts.append(f"consensus {row['consensus-distance']:.3g}")
    return " | ".join(parts)
