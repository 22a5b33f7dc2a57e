"""The strategy's transport over a Flower Grid: nodes, handshake, queries, and the train
messages in flight with their deadlines.

Flower's Grid moves messages; this module keeps what a run needs to know of them: which
message is out to which worker since when, which ones passed the round deadline and may
still answer (late), and the column of W each node holds (the handshake asks each node its
partition-id, so that column i of W is always partition i).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.superlink.grid import InMemoryGrid

from clients import messages
from fedcoop import participation
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError, RunFailed

LOG = logging.getLogger("flwr.fedcoop")
#: Seconds a simulation's nodes may take to appear. Flower's simulation engine (``flwr run``
#: on a simulation federation, and ``run_simulation``) starts the ServerApp's thread and then
#: registers all num-supernodes nodes at once, before Ray starts; a shortfall after this is
#: the federation's size, which will not change, so there is nothing to wait for.
SIMULATED_NODES_GRACE = 5.0

#: what the caller tags each message in flight with (the exchange it carries)
Tag = TypeVar("Tag")


@dataclass(frozen=True)
class Arrival(Generic[Tag]):
    """A reply to a message in flight, or (`late`) to one that passed its deadline."""

    reply: Message
    tag: Tag
    late: bool


class GridTransport(Generic[Tag]):
    """The run's messages over `grid`, under `config`'s timeouts, pulling every
    `pull_interval` seconds."""

    def __init__(self, grid: Grid, config: RunConfig, pull_interval: float) -> None:
        self.grid = grid
        self.config = config
        self.pull_interval = pull_interval
        #: message id -> (tag, when it was pushed); and the tags of messages past deadline
        self.in_flight: dict[str, tuple[Tag, float]] = {}
        self.late: dict[str, Tag] = {}

    # -- before and after the rounds ------------------------------------------------------
    def await_nodes(self) -> list[int]:
        """Wait until num-clients nodes are connected: up to round-timeout on a deployment,
        where SuperNodes may join later, but only `SIMULATED_NODES_GRACE` on the simulation
        engine's grid, whose node count is fixed: Flower's `InMemoryGrid`, which only its
        simulation runtime hands a ServerApp (a SuperLink's ServerApp gets an `HttpGrid`)."""
        m = self.config.num_clients
        simulated = isinstance(self.grid, InMemoryGrid)
        patience = self.config.round_timeout
        if simulated:
            patience = min(patience, SIMULATED_NODES_GRACE)
        start = time.monotonic()
        next_note = start + 10.0
        while True:
            nodes = sorted(self.grid.get_node_ids())
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

    def handshake(self, nodes: list[int]) -> tuple[list[int], list[int]]:
        """(node of each worker, examples each holds): worker i is the node holding
        partition i."""
        queries = self.to_nodes(nodes, MessageType.QUERY, "handshake")
        by_partition: dict[int, tuple[int, int]] = {}
        for reply in self.gather(queries):
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

    def to_nodes(self, nodes: Iterable[int], message_type: str, group: str) -> list[Message]:
        """A message carrying only the run config to each of `nodes`."""
        content = RecordDict({messages.CONFIG: messages.config_record(self.config)})
        return [Message(content, node, message_type, group_id=group) for node in nodes]

    def gather(self, out: list[Message], *, tolerant: bool = False) -> list[Message]:
        """Push `out` and wait for one reply each (used outside the pipelined rounds);
        `tolerant`: leave out (and log) nodes that fail or time out instead of raising."""
        pending = set(self.grid.push_messages(out))
        replies: list[Message] = []
        deadline = time.monotonic() + self.config.round_timeout
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                pending.discard(reply.metadata.reply_to_message_id)
                if tolerant and reply.has_error():
                    LOG.warning(
                        "fedcoop: node %d failed: %s",
                        reply.metadata.src_node_id,
                        reply.error.reason,
                    )
                    continue
                if reply.has_error():
                    raise RunFailed(
                        f"node {reply.metadata.src_node_id} failed: {reply.error.reason}"
                    )
                replies.append(reply)
            if pending and time.monotonic() > deadline:
                if tolerant:
                    LOG.warning("fedcoop: %d node(s) did not answer in time", len(pending))
                    return replies
                raise RunFailed(f"{len(pending)} node(s) did not answer within the round timeout")
            if pending:
                time.sleep(self.pull_interval)
        return replies

    def evaluate(self, nodes: list[int]) -> dict[str, float]:
        """Each of `nodes` evaluates its own final model; the mean over those that answer."""
        out = self.to_nodes(nodes, MessageType.EVALUATE, "final")
        replies = self.gather(out, tolerant=True)
        rows = [dict(r.content.metric_records[messages.METRICS]) for r in replies]
        if not rows:
            return {}
        keys = [k for k in rows[0] if k != "num-examples"]
        return {f"worker-{k}": float(np.mean([row[k] for row in rows])) for k in keys}

    def evaluate_own_models(self, workers: list[int], node_of: list[int]) -> dict[str, float]:
        """A seeded sample (eval-workers) of `workers` evaluates its own final model: the
        means, and the seconds it took (worker-eval-seconds)."""
        chosen = participation.subset(self.config.seed, workers, self.config.eval_workers)
        started = time.monotonic()
        out = self.evaluate([node_of[i] for i in chosen])
        if out:
            out["worker-eval-seconds"] = time.monotonic() - started
        return out

    # -- the pipelined rounds -------------------------------------------------------------
    def push(self, out: list[Message], tags: list[Tag]) -> None:
        """Send `out`, each tagged with its entry of `tags`."""
        now = time.monotonic()
        for msg_id, tag in zip(self.grid.push_messages(out), tags, strict=True):
            self.in_flight[msg_id] = (tag, now)

    def pull(self) -> tuple[list[Arrival[Tag]], float]:
        """(the replies that came, when the pull began): a pull can block (on a reply whose
        node died mid-push), and replies that arrive meanwhile come with the next pull, so
        deadlines are judged at its start."""
        pulled_at = time.monotonic()
        arrivals = []
        for reply in self.grid.pull_messages([*self.in_flight, *self.late]):
            msg_id = reply.metadata.reply_to_message_id
            if msg_id in self.late:
                arrivals.append(Arrival(reply, self.late.pop(msg_id), late=True))
            else:
                arrivals.append(Arrival(reply, self.in_flight.pop(msg_id)[0], late=False))
        return arrivals, pulled_at

    def overdue(self, pulled_at: float) -> list[Tag]:
        """The messages in flight longer than round-deadline at `pulled_at` (0: never),
        now counted as late."""
        deadline = self.config.round_deadline
        if not deadline:
            return []
        out = []
        for msg_id, (tag, sent) in list(self.in_flight.items()):
            if pulled_at - sent > deadline:
                del self.in_flight[msg_id]
                self.late[msg_id] = tag
                out.append(tag)
        return out

    def tags(self) -> list[Tag]:
        """The tags of every message out, in flight or late."""
        return [t for t, _ in self.in_flight.values()] + list(self.late.values())

    def idle(self) -> bool:
        """No message is out."""
        return not self.in_flight and not self.late
