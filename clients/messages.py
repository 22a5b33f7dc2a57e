"""What the server and the workers put in Flower messages, named once for both sides.

A train message holds the run config, the round header (round, sync index, local steps,
self weight) and, where the worker's column of W reads other nodes, the mix vector; round 1
carries the initial model instead. The reply holds the worker's model after its local steps.
Models travel as one flat Array because the rules act on the flat vector.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedcoop.config import RunConfig

CONFIG = "run-config"
HEADER = "round"
ARRAYS = "arrays"
METRICS = "metrics"
#: ArrayRecord keys
INIT, MIX, MODEL = "init", "mix", "x"
#: a worker's whole state (model, momentum, snapshot, pending gradient) and its round and
#: step count: in replies for a checkpoint, and in the first message after a resume
STATE, STATE_META = "state", "state-meta"
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
    return _parsed(tuple(sorted(message.content.config_records[CONFIG].items())))


@lru_cache(maxsize=8)
def _parsed(items: tuple[tuple[str, Any], ...]) -> RunConfig:
    """A config record's entries as a RunConfig, validated once per distinct config."""
    return RunConfig.from_mapping(dict(items))


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
    """The content of a train message."""
    return RecordDict({CONFIG: config_record(config), HEADER: ConfigRecord(header), ARRAYS: arrays})


def reply_content(arrays: ArrayRecord, metrics: dict[str, float | int]) -> RecordDict:
    """The content of a worker's reply."""
    return RecordDict({ARRAYS: arrays, METRICS: MetricRecord(metrics)})
