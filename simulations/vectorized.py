"""The vectorized engine: in-process nodes whose waiting train messages run as one batch.

It is `InProcessGrid` (the real ClientApp's code on real Messages, one persistent Context per
node, the real strategy and Coordinator on the server side) except for how it delivers: on
each pull it serves every waiting message, and the train messages among them together,
through `clients.client_app.train_many`, which reads and checks each message alone and then
runs the cohort's syncs and local steps as batches of `fedcoop.local_rule.LocalRule` (one
`torch.func.vmap` of the loss over the stacked parameters per local step). The models are
the ones the Flower path computes (the same rule, the same seeded batches); only the speed
differs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from flwr.app import Context, Message, MessageType
from flwr.clientapp import ClientApp

from clients.client_app import TrainMany, train_many
from simulations.inprocess import InProcessGrid, error_reply


class VectorizedGrid(InProcessGrid):
    """`num_nodes` in-process nodes; train messages waiting at a pull run as one batch."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        *,
        train: TrainMany = train_many,
        **options: Any,
    ) -> None:
        """`client_app` serves the other messages (handshake, evaluation, checkpoint
        queries); `train` the train messages (tests wrap it to inject faults); `options`
        are InProcessGrid's (seed, node_config)."""
        self._train = train
        super().__init__(client_app, num_nodes, **options)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.contexts.settle()
        waiting = [self._take(msg_id) for msg_id in list(self._waiting)]
        trains = [m for m in waiting if m.metadata.message_type == MessageType.TRAIN]
        for msg in waiting:
            if msg.metadata.message_type != MessageType.TRAIN:
                self._deliver(msg)
        self._deliver_trains(trains)
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def _serve_trains(self, batch: Sequence[tuple[Message, Context]]) -> list[Message]:
        """Train messages as one batch of the local rule (a worker process serves its share
        of the cohort this way too)."""
        replies = self._train(batch)
        return [
            error_reply(msg, reply) if isinstance(reply, Exception) else reply
            for (msg, _), reply in zip(batch, replies, strict=True)
        ]
