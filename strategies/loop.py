"""The Flower strategy that runs any A(tau, W, v): a custom loop over the Grid.

Flower's ``Strategy.start`` sends a round and waits for all of it; Cooperative SGD needs each
worker's next message to leave as soon as its own column of W can be computed (a barrier for
J, neighbours for a sparse W, nothing new for anchor columns, which is what lets
Overlap-Local-SGD hide the averaging behind the next tau steps). So this strategy drives the
Grid itself and lets `fedcoop.coordinator.Coordinator` decide what is ready; the math it
relays lives there. Its parts, each the one owner of its tables: `strategies.transport`
(the messages in flight and late, the handshake), `strategies.exchanges` (what leaves now;
eager replies), `strategies.ledger` (the workers' states, checkpoints and resume) and
`strategies.rounds` (the round rows and events).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from clients import messages
from clients.messages import RoundHeader, WorkerSnapshot
from fedcoop import algorithms, devices, participation
from fedcoop.clock import VirtualClock
from fedcoop.config import RunConfig
from fedcoop.coordinator import Coordinator, Dispatch, QuorumLost
from fedcoop.errors import RunFailed
from fedcoop.spec import CooperativeSpec
from strategies.exchanges import Exchange, Exchanges
from strategies.ledger import StateLedger
from strategies.result import EvaluateFn, RunResult
from strategies.rounds import RoundLog
from strategies.transport import GridTransport

LOG = logging.getLogger("flwr.fedcoop")

#: Bytes a serialized model array may take beyond the model's own: its .npy header (128 for
#: a flat vector). A reply's model array larger than that is rejected before it is decoded.
NPY_HEADER_BYTES = 1024


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
        #: the checkpoint to continue from
        self.resume = resume
        self.ledger = StateLedger(config, run_dir)

    def start(self, grid: Grid) -> RunResult:
        """Handshake, all rounds, the final sync and the workers' own evaluation."""
        transport: GridTransport[Exchange] = GridTransport(grid, self.config, self.pull_interval)
        node_of, counts = transport.handshake(transport.await_nodes())
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
            checkpoint_every=self.config.checkpoint_every if self.ledger.run_dir else 0,
            eager=self.config.eager_reply,
            available=devices.availability(self.config.device_speeds, len(node_of)),
        )
        clock = VirtualClock.from_config(self.config, spec, model_bytes=self.x0.nbytes)
        # round 0 of a tau schedule's history: the loss of x0 (only a schedule reads it)
        evaluate = self.evaluate_fn if spec.tau_schedule is not None else None
        start = evaluate(self.x0) if evaluate is not None else {}
        coordinator.observe(0, start.get("loss", np.nan), 0.0)
        if self.resume is not None:
            self.ledger.resume(self.resume, coordinator, clock, result)
        try:
            self._loop(transport, coordinator, clock, result)
        except QuorumLost as lost:
            result.failed = str(lost)
            raise RunFailed(str(lost), partial=result) from None
        result.aux = coordinator.aux
        alive = [i for i in range(len(node_of)) if np.all(np.isfinite(result.workers[i]))]
        result.client_evaluation = transport.evaluate_own_models(alive, node_of)
        return result

    def _loop(
        self,
        transport: GridTransport[Exchange],
        coordinator: Coordinator,
        clock: VirtualClock,
        result: RunResult,
    ) -> None:
        """Push what is ready, take what arrives, until every worker had its final sync."""
        m = len(result.node_of_worker)
        log = RoundLog(
            result,
            np.full((m, self.x0.size), np.nan, dtype=self.x0.dtype),
            self.evaluate_fn,
            started=time.monotonic() - self.ledger.elapsed,
        )
        exchanges = Exchanges(
            self.config.eager_reply, participation.cohort_size(m, self.config.participation)
        )
        last_progress = time.monotonic()

        def missed(d: Dispatch, kind: str, reason: str, *, still_running: bool) -> None:
            """Worker d.worker did not bring d's report: what its device runs is void."""
            log.event(d.round, d.worker, kind, reason)
            coordinator.drop(d.worker, d.round, reason, still_running=still_running)
            exchanges.void(d.worker)

        while not coordinator.done:
            exchanges.release(coordinator.ready())
            in_flight = [e for e, _ in transport.in_flight.values()]
            out = exchanges.take(in_flight, list(transport.late.values()), coordinator)
            if not out and transport.idle():
                raise RunFailed(f"nothing in flight and nothing ready: {coordinator.describe()}")
            if out:
                sent = [self._message(e, result.node_of_worker, coordinator.spec) for e in out]
                for e, msg in zip(out, sent, strict=True):
                    log.sent(e.round, messages.vector_bytes(msg))
                transport.push(sent, out)
            arrivals, pulled_at = transport.pull()
            for a in arrivals:
                e, reply = a.tag, a.reply
                if a.late:
                    d = e.awaited
                    coordinator.release(d.worker)
                    if not reply.has_error():
                        self.ledger.moved_on(d.worker, d.round)  # its device moved on
                    reason = "its reply came after the round deadline and was discarded"
                    log.event(d.round, d.worker, "late", reason)
                elif reply.has_error():
                    missed(e.awaited, "failed", reply.error.reason, still_running=False)
                else:
                    # the device took the message: a checkpointed state it carried is installed
                    self.ledger.delivered(e.awaited.worker)
                    if e.collect is not None:
                        self._take_report(reply, e.collect, coordinator, log)
            for e in transport.overdue(pulled_at):
                reason = f"no reply within round-deadline={self.config.round_deadline}s"
                missed(e.awaited, "deadline", reason, still_running=True)
            for summary in coordinator.take_summaries():
                log.settled(summary, coordinator, clock, self.ledger.survivors)
            cut = coordinator.take_cut()
            if cut is not None:
                self.ledger.checkpoint(transport, coordinator, cut, result.node_of_worker, result)
            if arrivals:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > self.config.round_timeout:
                waiting = sorted(e.awaited.worker for e, _ in transport.in_flight.values())
                raise RunFailed(
                    f"no reply for {self.config.round_timeout}s; waiting on workers {waiting}"
                )
            else:
                time.sleep(self.pull_interval)
        result.workers = log.final

    def _take_report(
        self, reply: Message, d: Dispatch, coordinator: Coordinator, log: RoundLog
    ) -> None:
        """Give the coordinator the model a reply reports for dispatch `d` (or reject it)."""
        log.received(d.round, messages.vector_bytes(reply))
        node = log.result.node_of_worker[d.worker]
        x, state, problem = _read_reply(reply, d, node, self.x0.nbytes + NPY_HEADER_BYTES)
        if state is not None:  # the reply's model is the state's
            state = WorkerSnapshot(state.round, state.steps, {**state.arrays, messages.MODEL: x})
        # (a rejected reply's state is asked for afresh at the checkpoint)
        self.ledger.answered(d.worker, d.round, state)
        delta = None
        if problem is None and coordinator.spec.control_variates:
            try:
                delta = messages.read_vector(messages.reply_record(reply) or {}, messages.DELTA)
            except ValueError as exc:
                problem = f"unreadable control variate change: {exc}"
        if problem is None:
            problem = coordinator.record(d.worker, d.round, x, delta)
        else:
            coordinator.reject(d.worker, d.round, problem)
        if problem is not None:
            log.event(d.round, d.worker, "rejected", problem)
        elif d.final:
            log.final[d.worker] = x.reshape(-1)
        else:
            record = messages.reply_record(reply) or {}  # (checked by _read_reply)
            local = {k: float(record[k]) for k in messages.LOCAL_EVALUATION if k in record}
            log.trained(d.round, float(record["train-loss"]), float(record["compute-time"]), local)

    def _message(self, e: Exchange, node_of: list[int], spec: CooperativeSpec) -> Message:
        """The train message of exchange `e`: the dispatch it starts (header, payload, x0)
        and, with eager replies, the round whose model its reply must carry."""
        worker = e.awaited.worker
        d, reported = e.start, e.collect
        collect = None  # eager replies: the round the reply reports (0: none)
        if self.config.eager_reply:
            collect = 0 if reported is None else reported.round
        header = RoundHeader(
            update_rule=spec.rule.value,
            client_rule=spec.client_rule.value,
            round=None if d is None else d.round,
            local_steps=0 if d is None else d.local_steps,
            collect=collect,
            send_state=reported is not None
            and self.ledger.wants_state(reported.round, reported.final),
            restore=self.ledger.to_restore(worker),
        )
        init = mix = control = None
        if d is not None:
            init = self.x0 if d.init else None
            control = d.control
            if d.payload is not None:
                p = d.payload
                header = dataclasses.replace(
                    header, sync=p.sync, self_weight=p.self_weight, adopt=p.adopt, reset=p.reset
                )
                mix = p.mix
        content = messages.train_content(self.config, header, init=init, mix=mix, control=control)
        return Message(content, node_of[worker], MessageType.TRAIN, group_id=str(e.round))


def _read_reply(
    reply: Message, d: Dispatch, node: int, max_bytes: int
) -> tuple[np.ndarray, WorkerSnapshot | None, str | None]:
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
        return messages.decode(record[messages.MODEL]), WorkerSnapshot.read(record), None
    except (ValueError, TypeError) as exc:
        return *unusable, f"unreadable vector or state: {exc}"
