"""What the server and the workers put in Flower messages, named once for both sides.

Every message and reply is as few Flower objects as it can be: a deployed device pulls and
pushes each object of a message with its own HTTPS request (Flower 1.41 has no batch call),
so each record costs every message a round trip on the SuperLink and one on the device.

A train message holds one config record, the run config with the round header (round, sync
index, local steps, self weight; `HEADER_KEYS`) among its entries, and the arrays: where the
worker's column of W reads other nodes, the mix vector; round 1 carries the initial model
instead. The reply holds the worker's model after its local steps and its metrics. Models
travel as one flat Array because the rules act on the flat vector.

A worker's whole state (for a checkpoint, and in the first message after a resume) travels
as its round and step count (`STATE_ROUND`, `STATE_STEPS`: entries of the header, or of the
reply's metrics) and, when it holds any, its arrays in the `STATE` record: model, momentum,
snapshot and pending gradient, less the model where the reply carries it anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedcoop.config import RunConfig

CONFIG = "run-config"
ARRAYS = "arrays"
METRICS = "metrics"
STATE = "state"
#: ArrayRecord keys
INIT, MIX, MODEL = "init", "mix", "x"
#: the round and step count of the worker state a message carries
STATE_ROUND, STATE_STEPS = "state-round", "state-steps"
#: the entries of a train message's config record that are its round header
HEADER_KEYS = frozenset(
    {
        "update-rule",
        "client-rule",
        "round",
        "local-steps",
        "sync",
        "self-weight",
        "adopt",
        "reset",
        "collect",
        "send-state",
        STATE_ROUND,
        STATE_STEPS,
    }
)
#: message type of the query for a worker's state (Flower routes "query.state")
QUERY_STATE = "query.state"


@lru_cache(maxsize=8)
def config_record(config: RunConfig) -> ConfigRecord:
    """The run config, as the workers need it (run_simulation gives them no run_config).
    Built once per config and shared by its messages (nothing changes a received record):
    building and type-checking its fifty-odd entries was a millisecond per message."""
    return ConfigRecord(config.to_mapping())


def read_config(message: Message) -> RunConfig:
    """The run config a message carries."""
    record = message.content.config_records[CONFIG]
    return _parsed(tuple(sorted((k, v) for k, v in record.items() if k not in HEADER_KEYS)))


@lru_cache(maxsize=8)
def _parsed(items: tuple[tuple[str, Any], ...]) -> RunConfig:
    """A config record's entries as a RunConfig, validated once per distinct config."""
    return RunConfig.from_mapping(dict(items))


def header(message: Message) -> ConfigRecord:
    """The record whose HEADER_KEYS entries are a train message's round header."""
    return message.content.config_records[CONFIG]


def vector_record(**vectors: np.ndarray | None) -> ArrayRecord:
    """An ArrayRecord of flat vectors, leaving out the None ones."""
    return ArrayRecord(
        {k: Array(np.ascontiguousarray(v)) for k, v in vectors.items() if v is not None}
    )


def read_vector(message: Message, key: str) -> np.ndarray | None:
    """A flat vector from a message's arrays, or None if absent."""
    arrays = message.content.array_records.get(ARRAYS)
    if arrays is None or key not in arrays:
        return None
    return arrays[key].numpy()


def train_content(config: RunConfig, header: dict[str, Any], arrays: ArrayRecord) -> RecordDict:
    """The content of a train message: the run config and `header` in one record."""
    unknown = set(header) - HEADER_KEYS
    if unknown:
        raise ValueError(f"not round header entries: {sorted(unknown)}")
    record = ConfigRecord({**config_record(config), **header})
    return RecordDict({CONFIG: record, ARRAYS: arrays})


def reply_content(arrays: ArrayRecord, metrics: dict[str, float | int]) -> RecordDict:
    """The content of a worker's reply."""
    return RecordDict({ARRAYS: arrays, METRICS: MetricRecord(metrics)})


def state_entries(round_: int, steps: int) -> dict[str, int]:
    """The entries that say a message carries a worker's state after `round_` (0: none)."""
    return {STATE_ROUND: round_, STATE_STEPS: steps}


def read_state(
    entries: Mapping[str, Any], content: RecordDict
) -> tuple[int, int, dict[str, np.ndarray]] | None:
    """(round, steps, arrays) of the worker state a message carries, its round and steps
    among `entries` (its header or metrics), or None when it carries none."""
    if STATE_ROUND not in entries:
        return None
    arrays = content.array_records.get(STATE)
    saved = {} if arrays is None else {k: a.numpy().copy() for k, a in arrays.items()}
    return int(entries[STATE_ROUND]), int(entries[STATE_STEPS]), saved
