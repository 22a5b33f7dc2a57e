"""A Flower Grid that delivers messages to a ClientApp in this process, without Ray.

It runs the real ClientApp on real Messages with one persistent Context per node (those
beyond a memory budget wait on disk between their messages), exactly the objects Flower's
simulation engine hands a ClientApp, but in a seeded, shuffled order:
on each pull it delivers a random subset of the waiting messages, so replies arrive out of
order as they do from real devices. Tests use it to check the strategy against the matrix
rule in seconds; users can use it to step through a run in a debugger. It also records if a
node ever had two messages waiting at once, which the strategy must never cause.
"""

from __future__ import annotations

import traceback
import weakref
from collections import Counter
from collections.abc import Iterable, Sequence
from uuid import uuid4

import numpy as np
from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedcoop.errors import ConfigError
from simulations.context_store import DEFAULT_BUDGET, ContextStore
from simulations.processes import WorkerProcesses

TRAIN = MessageType.TRAIN

#: Error code of a reply whose ClientApp raised (Flower uses the same meaning).
CLIENT_APP_RAISED = 1


class InProcessGrid(Grid):
    """`num_nodes` simulated SuperNodes running `client_app`, partition i on the i-th node."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        *,
        seed: int = 0,
        node_config: dict[str, bool | int | float | str] | None = None,
        state_budget: int | None = DEFAULT_BUDGET,
        processes: int = 1,
    ) -> None:
        """`node_config`: more node config for every node, as a SuperNode's --node-config
        gives it (e.g. background-steps); `state_budget`: bytes of the nodes' worker states
        held in memory, the least recently used beyond it kept on disk (None: all in memory;
        `simulations.context_store`); `processes`: worker processes that serve the train
        messages, each its share of the nodes (1: this process; `simulations.processes`):
        every waiting train message is then served at each pull, the others still in a
        shuffled subset."""
        self.client_app = client_app
        self._pool: WorkerProcesses | None = None
        if processes > 1:
            if (node_config or {}).get("background-steps"):
                raise ConfigError(
                    "processes", processes, "1 with background-steps (steps outlive messages)"
                )
            self._pool = WorkerProcesses(processes, self._serve_trains, error_reply)
            weakref.finalize(self, self._pool.close)
        self._rng = np.random.default_rng(seed)
        # Node ids unrelated to partition ids, so the strategy has to map them.
        ids = self._rng.choice(10**6, size=num_nodes, replace=False) + 1
        contexts = {
            int(node): Context(
                run_id=1,
                node_id=int(node),
                node_config={
                    "partition-id": i,
                    "num-partitions": num_nodes,
                    **(node_config or {}),
                },
                state=RecordDict(),
                run_config={},
            )
            for i, node in enumerate(ids)
        }
        self.contexts = ContextStore(contexts, state_budget)
        self._waiting: dict[str, Message] = {}
        #: how many messages wait per node (never more than one, if the strategy is right)
        self._waiting_nodes: Counter[int] = Counter()
        self._replies: dict[str, Message] = {}
        self.overlapping_messages = 0
        self._run = Run.create_empty(run_id=1)
        # Messages read their run id from the process's task identity, which Flower's
        # runtimes set before a ServerApp runs; this process is that runtime here.
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = self._run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node not in self.contexts:
                raise ValueError(f"no node {node}")
            if self._waiting_nodes[node]:
                self.overlapping_messages += 1
            self._waiting_nodes[node] += 1
            # Flower's own InMemoryGrid assigns message ids this way.
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            self._waiting[msg.metadata.message_id] = msg
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.contexts.settle()
        waiting = list(self._waiting)
        if waiting:
            count = int(self._rng.integers(1, len(waiting) + 1))
            chosen = [str(i) for i in self._rng.permutation(waiting)[:count]]
            parallel: list[Message] = []
            if self._pool is not None:  # every waiting train message, at once, in parallel
                trains = {i for i in waiting if self._waiting[i].metadata.message_type == TRAIN}
                chosen = [i for i in chosen if i not in trains]
                parallel = [self._take(i) for i in waiting if i in trains]
            for msg_id in chosen:
                self._deliver(self._take(msg_id))
            self._deliver_trains(parallel)
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def _serve_trains(self, batch: Sequence[tuple[Message, Context]]) -> list[Message]:
        """Train messages, each through the ClientApp (a worker process's work)."""
        return [self._reply(msg, context) for msg, context in batch]

    def _deliver_trains(self, trains: Sequence[Message]) -> None:
        """Serve train messages taken from the waiting ones together: shared out among the
        worker processes when there are some, else in this process (`_serve_trains`)."""
        if not trains:
            return
        batch = [(m, self.contexts[m.metadata.dst_node_id]) for m in trains]
        if self._pool is None:
            replies = self._serve_trains(batch)
        else:
            order = [int(context.node_config["partition-id"]) for _, context in batch]
            replies = self._pool.serve(batch, order)
        for msg, reply in zip(trains, replies, strict=True):
            self._replies[msg.metadata.message_id] = reply

    def close(self) -> None:
        """Stop the worker processes, if any (they also stop with this process)."""
        if self._pool is not None:
            self._pool.close()

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        ids = set(self.push_messages(messages))
        out: list[Message] = []
        while ids:
            replies = list(self.pull_messages(ids))
            ids -= {r.metadata.reply_to_message_id for r in replies}
            out.extend(replies)
        return out

    def _take(self, msg_id: str) -> Message:
        """The waiting message `msg_id`, no longer waiting."""
        msg = self._waiting.pop(msg_id)
        self._waiting_nodes[msg.metadata.dst_node_id] -= 1
        return msg

    def _deliver(self, msg: Message) -> None:
        context = self.contexts[msg.metadata.dst_node_id]
        self._replies[msg.metadata.message_id] = self._reply(msg, context)

    def _reply(self, msg: Message, context: Context) -> Message:
        """The ClientApp's reply to `msg`, or the error reply Flower sends if it raised."""
        try:
            return self.client_app(msg, context)
        except Exception as exc:
            return error_reply(msg, exc)


def error_reply(msg: Message, exc: BaseException) -> Message:
    """The reply Flower's runtimes send for a message whose ClientApp raised `exc`."""
    trace = "".join(traceback.format_exception(exc))
    return Message(
        Error(code=CLIENT_APP_RAISED, reason=f"{type(exc).__name__}: {exc}\n{trace}"), reply_to=msg
    )
