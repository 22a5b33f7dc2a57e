"""The Flower strategy that runs any A(tau, W, v): a custom loop over the Grid.

Flower's ``Strategy.start`` sends a round and waits for all of it; Cooperative SGD needs each
worker's next message to leave as soon as its own column of W can be computed (a barrier for
J, neighbours for a sparse W, nothing new for anchor columns, which is what lets
Overlap-Local-SGD hide the averaging behind the next tau steps). So this strategy drives the
Grid itself with push_messages/pull_messages and lets `fedcoop.coordinator.Coordinator`
decide what is ready. It also maps Flower node ids to worker columns by a handshake that asks
each node its partition-id, so that column i of W is always partition i.
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

from clients import messages
from fedcoop import algorithms
from fedcoop.config import RunConfig
from fedcoop.cooperative import CooperativeSpec
from fedcoop.coordinator import Coordinator, Dispatch, RoundSummary
from fedcoop.errors import ConfigError

LOG = logging.getLogger("flwr.fedcoop")

#: (model vector) -> metrics of the server-side evaluation, e.g. test loss and accuracy
EvaluateFn = Callable[[np.ndarray], dict[str, float]]


class RunFailed(RuntimeError):
    """A worker failed or stopped answering; the message says which and why."""


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
    ) -> None:
        self.config = config
        self.x0 = np.asarray(x0)
        self.spec = spec
        self.evaluate_fn = evaluate_fn
        self.pull_interval = pull_interval

    # -- the run ------------------------------------------------------------------------
    def start(self, grid: Grid) -> RunResult:
        """Handshake, all rounds, the final sync and the workers' own evaluation."""
        nodes = self._await_nodes(grid)
        node_of, counts = self._handshake(grid, nodes)
        spec = (self.spec or algorithms.resolve(self.config, counts)).validate(len(node_of))
        result = RunResult(config=self.config, spec=spec, node_of_worker=node_of)
        LOG.info(
            "fedcoop: %s, m=%d workers, v=%d auxiliary, tau=%d, %d rounds",
            self.config.algorithm,
            spec.num_workers,
            spec.num_aux,
            spec.tau,
            self.config.num_rounds,
        )
        coordinator = Coordinator(spec, self.x0, self.config.num_rounds)
        self._loop(grid, coordinator, node_of, result)
        result.aux = coordinator.aux
        result.client_evaluation = self._evaluate_clients(grid, node_of)
        return result

    def _await_nodes(self, grid: Grid) -> list[int]:
        """Wait until num-clients nodes are connected."""
        start = time.monotonic()
        next_note = start + 10.0
        while True:
            nodes = sorted(grid.get_node_ids())
            if len(nodes) >= self.config.num_clients:
                return nodes
            hint = (
                f"{len(nodes)} of num-clients={self.config.num_clients} nodes connected (in "
                f'simulation, pass --federation-config "num-supernodes={self.config.num_clients}")'
            )
            now = time.monotonic()
            if now - start > self.config.round_timeout:
                raise RunFailed(f"after {self.config.round_timeout}s only {hint}")
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

    def _gather(self, grid: Grid, out: list[Message]) -> list[Message]:
        """Push `out` and wait for one reply each (used outside the pipelined loop)."""
        ids = list(grid.push_messages(out))
        pending = set(ids)
        replies: list[Message] = []
        deadline = time.monotonic() + self.config.round_timeout
        while pending:
            for reply in grid.pull_messages(list(pending)):
                pending.discard(reply.metadata.reply_to_message_id)
                self._raise_if_error(reply, f"node {reply.metadata.src_node_id}")
                replies.append(reply)
            if pending and time.monotonic() > deadline:
                raise RunFailed(f"{len(pending)} node(s) did not answer within the round timeout")
            if pending:
                time.sleep(self.pull_interval)
        return replies

    def _loop(
        self, grid: Grid, coordinator: Coordinator, node_of: list[int], result: RunResult
    ) -> None:
        """Push what is ready, take what arrives, until every worker had its final sync."""
        in_flight: dict[str, Dispatch] = {}
        losses: dict[int, list[float]] = {}
        traffic: dict[int, list[int]] = {}
        final: dict[int, np.ndarray] = {}
        started = time.monotonic()
        last_progress = started
        while not coordinator.done:
            ready = coordinator.ready()
            if not ready and not in_flight:
                raise RunFailed(f"nothing in flight and nothing ready: {coordinator.describe()}")
            if ready:
                out = [self._message(d, node_of[d.worker], coordinator.spec) for d in ready]
                for d, msg in zip(ready, out, strict=True):
                    traffic.setdefault(d.round, [0, 0])[1] += _nbytes(msg)
                for msg_id, d in zip(grid.push_messages(out), ready, strict=True):
                    in_flight[msg_id] = d
            replies = list(grid.pull_messages(list(in_flight)))
            for reply in replies:
                d = in_flight.pop(reply.metadata.reply_to_message_id)
                self._raise_if_error(reply, f"worker {d.worker} (node {node_of[d.worker]})")
                x = messages.read_vector(reply, messages.MODEL)
                if x is None:
                    raise RunFailed(f"worker {d.worker} replied to round {d.round} without a model")
                coordinator.record(d.worker, d.round, x.astype(self.x0.dtype, copy=False))
                traffic.setdefault(d.round, [0, 0])[0] += _nbytes(reply)
                if d.final:
                    final[d.worker] = x
                else:
                    metrics = reply.content.metric_records[messages.METRICS]
                    losses.setdefault(d.round, []).append(float(metrics["train-loss"]))
            for summary in coordinator.take_summaries():
                row = self._round_row(
                    summary, coordinator.spec.tau, losses.pop(summary.round), started
                )
                row["bytes-up"], row["bytes-down"] = traffic.pop(summary.round)
                result.rounds.append(row)
                LOG.info("fedcoop: %s", _format_row(row))
            if replies:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > self.config.round_timeout:
                waiting = sorted(d.worker for d in in_flight.values())
                raise RunFailed(
                    f"no reply for {self.config.round_timeout}s; waiting on workers {waiting}"
                )
            else:
                time.sleep(self.pull_interval)
        result.workers = np.stack([final[i] for i in range(len(node_of))])

    def _message(self, d: Dispatch, node: int, spec: CooperativeSpec) -> Message:
        """The train message that carries dispatch `d` to its node."""
        header: dict[str, Any] = {
            "round": d.round,
            "local-steps": d.local_steps,
            "update-rule": spec.rule.value,
            "client-rule": spec.client_rule.value,
        }
        if d.payload is None:
            arrays = messages.vector_record(**{messages.INIT: self.x0})
        else:
            header["sync"] = d.payload.sync
            header["self-weight"] = d.payload.self_weight
            arrays = messages.vector_record(**{messages.MIX: d.payload.mix})
        content = messages.train_content(self.config, header, arrays)
        return Message(content, node, MessageType.TRAIN, group_id=str(d.round))

    def _round_row(
        self, summary: RoundSummary, tau: int, losses: list[float], started: float
    ) -> dict[str, Any]:
        """One round's metrics; bytes count the round's messages and replies."""
        row: dict[str, Any] = {
            "round": summary.round,
            "local-steps": summary.round * tau,
            "train-loss": float(np.mean(losses)),
            "consensus-distance": summary.consensus_distance,
        }
        if self.evaluate_fn is not None:
            row.update({f"test-{k}": v for k, v in self.evaluate_fn(summary.average).items()})
        row["wall-time"] = time.monotonic() - started
        return row

    def _evaluate_clients(self, grid: Grid, node_of: list[int]) -> dict[str, float]:
        """Each worker evaluates its own final model; the mean over workers."""
        content = RecordDict({messages.CONFIG: messages.config_record(self.config)})
        out = [Message(content, node, MessageType.EVALUATE, group_id="final") for node in node_of]
        replies = self._gather(grid, out)
        rows = [dict(r.content.metric_records[messages.METRICS]) for r in replies]
        keys = [k for k in rows[0] if k != "num-examples"]
        return {f"worker-{k}": float(np.mean([row[k] for row in rows])) for k in keys}

    @staticmethod
    def _raise_if_error(reply: Message, who: str) -> None:
        if reply.has_error():
            raise RunFailed(f"{who} failed: {reply.error.reason}")


def _nbytes(msg: Message) -> int:
    """Bytes of the arrays a message carries (what dominates the traffic)."""
    return sum(rec.count_bytes() for rec in msg.content.array_records.values())


def _format_row(row: dict[str, Any]) -> str:
    parts = [f"round {row['round']:>3}", f"train-loss {row['train-loss']:.4f}"]
    for key in ("test-loss", "test-accuracy"):
        if key in row:
            parts.append(f"{key} {row[key]:.4f}")
    parts.append(f"consensus {row['consensus-distance']:.3g}")
    return " | ".join(parts)
