"""The worker's side of Flower's standard messages, which Flower's stock strategies send.

A stock strategy (`flwr.serverapp.strategy`: FedAvg, FedAdam, FedProx, the DP wrappers, ...)
sends each sampled node one ArrayRecord (the global model, named arrays) and one
ConfigRecord (the train or evaluate config, plus "server-round" and, from FedProx,
"proximal-mu"), and reads back one ArrayRecord and one MetricRecord with "num-examples".
fedcoop's own protocol (`clients.messages`) has a "run-config" record instead, which is how
the two are told apart. The run config travels in the standard ConfigRecord: the server
passes it as the strategy's train and evaluate config (strategies.stock).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod.utils import make_ffn
from flwr.clientapp import mod as flower_mods
from flwr.clientapp.typing import ClientAppCallable, Mod

from clients import messages
from fedcoop.config import SETTINGS, RunConfig, parse_client_mods
from fedcoop.model_vectors import Layout, join_arrays, split_vector

#: what Flower's strategies add to the config they send: the round, and FedProx's mu
SERVER_ROUND, PROXIMAL_MU = "server-round", "proximal-mu"


def is_standard(message: Message) -> bool:
    """Whether a message is Flower's standard one rather than fedcoop's own."""
    return messages.CONFIG not in message.content.config_records


@dataclass(frozen=True)
class StandardMessage:
    """A stock strategy's train or evaluate message, read and checked."""

    config: RunConfig
    round: int
    #: the key of its ArrayRecord, which the reply's ArrayRecord keeps
    arrays_key: str
    arrays: ArrayRecord

    def vector(self, entries: Layout) -> np.ndarray:
        """The model it carries as the flat vector of a model laid out as `entries`."""
        try:
            return record_vector(self.arrays, entries)
        except ValueError as error:
            raise ValueError(f"record {self.arrays_key!r}: {error}") from None


def read(message: Message) -> StandardMessage:
    """The standard message's config, round and model; ValueError if it is not one a
    stock strategy sends (one ArrayRecord, one ConfigRecord holding the run config and a
    whole server-round >= 1)."""
    content = message.content
    if len(content.array_records) != 1 or len(content.config_records) != 1:
        raise ValueError(
            f"a message with {len(content.array_records)} ArrayRecords and "
            f"{len(content.config_records)} ConfigRecords: a stock strategy sends one of each"
        )
    ((arrays_key, record),) = content.array_records.items()
    ((_, config),) = content.config_records.items()
    round_ = config.get(SERVER_ROUND)
    if isinstance(round_, bool) or not isinstance(round_, int) or round_ < 1:
        raise ValueError(f"{SERVER_ROUND} = {round_!r}: a stock strategy's round, 1 or more")
    return StandardMessage(run_config(config), round_, arrays_key, record)


def run_config(record: Mapping[str, Any]) -> RunConfig:
    """The run config a strategy's ConfigRecord carries, with FedProx's proximal-mu as the
    workers' prox-mu (the one local rule, whichever server sends the mu); its other
    entries are the strategy's own (server-round, a DP wrapper's clipping norm, ...)."""
    items = {k: v for k, v in record.items() if k in SETTINGS}
    if PROXIMAL_MU in record:
        items["prox-mu"] = record[PROXIMAL_MU]
    return messages.parsed_config(items)


def train_reply(
    message: Message, arrays_key: str, vector: np.ndarray, entries: Layout, metrics: dict
) -> Message:
    """The reply a stock strategy aggregates: the model as named arrays under the key it
    came in, and `metrics` (with "num-examples", the weight of Flower's averages)."""
    content = RecordDict(
        {arrays_key: model_record(vector, entries), messages.METRICS: MetricRecord(metrics)}
    )
    return Message(content, reply_to=message)


def model_record(vector: np.ndarray, entries: Layout) -> ArrayRecord:
    """A model vector as the ArrayRecord of its named entries that stock strategies read."""
    named = split_vector(vector, entries)
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in named.items()})


def record_vector(record: ArrayRecord, entries: Layout) -> np.ndarray:
    """An ArrayRecord of a model's named entries as its flat vector."""
    return join_arrays({k: a.numpy() for k, a in record.items()}, entries)


@lru_cache(maxsize=8)
def mods(config: RunConfig) -> tuple[Mod, ...]:
    """The Flower mods client-mods names, in order; ValueError naming an unknown one.
    Only the module's functions: a class such as LocalDpMod needs arguments first. Looked
    up once per config: every train message of a stock strategy asks."""
    offered = {
        name: mod
        for name in flower_mods.__all__
        if inspect.isfunction(mod := getattr(flower_mods, name))
    }
    out = []
    for name in parse_client_mods(config.client_mods):
        if name not in offered:
            raise ValueError(
                f"client-mods: no mod {name!r} in flwr.clientapp.mod ({', '.join(offered)})"
            )
        out.append(offered[name])
    return tuple(out)


def with_mods(
    message: Message, context: Context, handler: ClientAppCallable, run_mods: Sequence[Mod]
) -> Message:
    """`handler`'s reply to a stock strategy's train message through `run_mods`, as a
    ClientApp built with `@app.train(mods=...)` would run them."""
    return make_ffn(handler, list(run_mods))(message, context)
