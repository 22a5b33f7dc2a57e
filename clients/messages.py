"""What the server and the workers put in Flower messages, named once for both sides.

Each message is as few Flower objects as it can be. Flower moves a message as a tree of
objects (the message, its RecordDict, each record, each Array and each Array's chunks), and
a deployed device pulls and pushes each object with its own HTTPS request, both between the
SuperLink and its SuperNode and between the SuperNode and its ClientApp (Flower 1.41 has no
batch call): a record of arrays holding one vector is three objects, three requests on each
hop. So a train message and its reply each hold one ConfigRecord, and their vectors are
entries of it: .npy bytes, as a Flower Array holds them, with their dtype and shape, read
without pickle. A message is then three objects, not six to eight.

- A train message's record (CONFIG) holds the run config, the round header (`HEADER_KEYS`:
  round, sync index, local steps, self weight, ...) and its vectors: where the worker's
  column of W reads other nodes, the mix vector; round 1 carries the initial model instead.
- A worker's reply to it (REPLY) holds its model after the round's local steps, its
  training loss, compute seconds and round.
- A worker's whole state (in a reply, for a checkpoint, and in the first message after a
  resume) is its round and step count (`STATE_ROUND`, `STATE_STEPS`) and its arrays, each an
  entry named with `STATE_PREFIX`: model, momentum, snapshot and pending gradient, less the
  model where the reply carries it anyway.

The handshake and evaluation replies carry only numbers, in a MetricRecord (METRICS).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedcoop.config import RunConfig

CONFIG = "run-config"
REPLY = "reply"
METRICS = "metrics"
#: vector entries: the initial model, the mix payload, a worker's model
INIT, MIX, MODEL = "init", "mix", "x"
#: the vectors that are the algorithm's traffic (a worker state's are a checkpoint's)
TRAFFIC_VECTORS = frozenset({INIT, MIX, MODEL})
#: the entries of a worker state: its round and step count, and each array as STATE_PREFIX
#: + its name
STATE_ROUND, STATE_STEPS, STATE_PREFIX = "state-round", "state-steps", "state:"
#: the entries of a train message's record that are its round header
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
#: the entries a reply to a train message has, and those it may have besides a state's arrays
REPLY_KEYS = frozenset({MODEL, "train-loss", "compute-time", "round"})
REPLY_OPTIONAL_KEYS = frozenset({STATE_ROUND, STATE_STEPS})
#: message type of the query for a worker's state (Flower routes "query.state")
QUERY_STATE = "query.state"

#: a vector entry's value: an array, its .npy bytes, or None (left out)
Vector = np.ndarray | bytes | None


def encode(vector: np.ndarray) -> bytes:
    """A vector as .npy bytes, as a Flower Array holds it."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(vector), allow_pickle=False)
    return buffer.getvalue()


def decode(data: Any) -> np.ndarray:
    """The array of .npy bytes; ValueError if they are not an array's."""
    if not isinstance(data, bytes):
        raise ValueError(f"a vector entry holds {type(data).__name__}, not .npy bytes")
    return np.load(io.BytesIO(data), allow_pickle=False)


def is_vector(key: str) -> bool:
    """Whether a record's entry `key` is a vector (and so no run config or metric)."""
    return key in TRAFFIC_VECTORS or key.startswith(STATE_PREFIX)


def _entries(named: Mapping[str, Any]) -> dict[str, Any]:
    """Record entries: vectors as .npy bytes, None values left out."""
    return {
        k: encode(v) if isinstance(v, np.ndarray) else v for k, v in named.items() if v is not None
    }


@lru_cache(maxsize=8)
def config_record(config: RunConfig) -> ConfigRecord:
    """The run config, as the workers need it (run_simulation gives them no run_config).
    Built once per config and shared by its messages (nothing changes a received record):
    building and type-checking its fifty-odd entries was a millisecond per message."""
    return ConfigRecord(config.to_mapping())


def read_config(message: Message) -> RunConfig:
    """The run config a message carries."""
    record = message.content.config_records[CONFIG]
    items = ((k, v) for k, v in record.items() if k not in HEADER_KEYS and not is_vector(k))
    return _parsed(tuple(sorted(items)))


@lru_cache(maxsize=8)
def _parsed(items: tuple[tuple[str, Any], ...]) -> RunConfig:
    """A config record's entries as a RunConfig, validated once per distinct config."""
    return RunConfig.from_mapping(dict(items))


def train_content(config: RunConfig, entries: Mapping[str, Any]) -> RecordDict:
    """The content of a train message: the run config and `entries` (the round header and
    the vectors, as arrays or .npy bytes; None values left out) in one record."""
    unknown = [k for k in entries if k not in HEADER_KEYS and not is_vector(k)]
    if unknown:
        raise ValueError(f"neither round header nor vector entries: {sorted(unknown)}")
    return RecordDict({CONFIG: ConfigRecord({**config_record(config), **_entries(entries)})})


def header(message: Message) -> ConfigRecord:
    """A train message's record: its round header, vectors and the run config."""
    return message.content.config_records[CONFIG]


def reply_content(entries: Mapping[str, Any]) -> RecordDict:
    """The content of a worker's reply to a train message or a state query."""
    return RecordDict({REPLY: ConfigRecord(_entries(entries))})


def reply_record(message: Message) -> ConfigRecord | None:
    """A reply's record (None: it has none)."""
    return message.content.config_records.get(REPLY)


def reply_entries_problem(record: Mapping[str, Any]) -> str | None:
    """Why `record` does not have a train reply's entries, or None if it has them."""
    missing = sorted(REPLY_KEYS - set(record))
    if missing:
        return f"no {missing} entries in the reply"
    known = REPLY_KEYS | REPLY_OPTIONAL_KEYS
    unknown = sorted(k for k in record if k not in known and not k.startswith(STATE_PREFIX))
    if unknown:
        return f"entries {unknown}, which a reply does not have"
    numbers = [k for k in ("train-loss", "compute-time", "round") if not _is_number(record[k])]
    if numbers:
        return f"entries {numbers} are not numbers"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_vector(record: Mapping[str, Any], key: str) -> np.ndarray | None:
    """The vector entry `key` of a record, or None if absent."""
    return None if key not in record else decode(record[key])


def state_entries(
    round_: int, steps: int, arrays: Mapping[str, Vector] | None = None
) -> dict[str, Any]:
    """The entries of a worker state after `round_` (0: none) with `arrays`."""
    named = {STATE_PREFIX + k: v for k, v in (arrays or {}).items()}
    return {STATE_ROUND: round_, STATE_STEPS: steps, **_entries(named)}


def read_state(record: Mapping[str, Any]) -> tuple[int, int, dict[str, np.ndarray]] | None:
    """(round, steps, arrays) of the worker state a record holds, or None if it holds none;
    ValueError if an array entry is not an array's .npy bytes."""
    if STATE_ROUND not in record:
        return None
    try:
        round_, steps = int(record[STATE_ROUND]), int(record[STATE_STEPS])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"a worker state without a whole round and step count: {exc!r}") from None
    arrays = {
        k[len(STATE_PREFIX) :]: decode(v) for k, v in record.items() if k.startswith(STATE_PREFIX)
    }
    return round_, steps, arrays


def vector_bytes(message: Message) -> int:
    """Bytes of the vectors a message carries other than a state's (what dominates the
    algorithm's traffic; checkpoint state is not the algorithm's)."""
    return sum(
        len(v)
        for record in message.content.config_records.values()
        for k, v in record.items()
        if k in TRAFFIC_VECTORS
    )


def vector_record(**vectors: np.ndarray | None) -> ArrayRecord:
    """An ArrayRecord of flat vectors, leaving out the None ones: a worker's state in its
    node's context.state."""
    return ArrayRecord(
        {k: Array(np.ascontiguousarray(v)) for k, v in vectors.items() if v is not None}
    )
