"""What the server and the workers put in Flower messages, named once for both sides.

Each message is as few Flower objects as it can be. Flower moves a message as a tree of
objects (the message, its RecordDict, each record, each Array and each Array's chunks), and
a deployed device pulls and pushes each object with its own HTTPS request, both between the
SuperLink and its SuperNode and between the SuperNode and its ClientApp (Flower 1.41 has no
batch call): a record of arrays holding one vector is three objects, three requests on each
hop. So a train message and its reply each hold one ConfigRecord, and their vectors are
entries of it: .npy bytes, as a Flower Array holds them, with their dtype and shape, read
without pickle. A message is then three objects, not six to eight.

- A train message's record (CONFIG) holds the run config, the round header (`RoundHeader`:
  round, sync index, local steps, self weight, ...) and its vectors: where the worker's
  column of W reads other nodes, the mix vector; round 1 carries the initial model instead;
  under SCAFFOLD, the server's control variate (CONTROL).
  Header, vector and state entries each have a namespace ("header:", "vector:", "state:"),
  which no config key can enter.
- A worker's reply to it (REPLY) holds its model after the round's local steps, its
  training loss, compute seconds and round (SCAFFOLD: the change of its c_i, DELTA).
- A worker's whole state (`WorkerSnapshot`: in a reply, for a checkpoint, and in the first
  message after a resume) is its round and step count (`STATE_ROUND`, `STATE_STEPS`) and
  its arrays, each an entry named with `STATE_PREFIX`: model, momentum, snapshot and pending
  gradient, less the model where the reply carries it anyway.

The handshake and evaluation replies carry only numbers, in a MetricRecord (METRICS).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from fedcoop.config import RunConfig

CONFIG = "run-config"
REPLY = "reply"
METRICS = "metrics"
#: A train record holds the run config (kebab-case keys, never a ":") beside the entries
#: that are not the config's, each in a namespace of its own, so that no config key can
#: collide with one (an "update-rule" config key beside the header's rule was one).
HEADER_NS, VECTOR_NS, STATE_NS = "header:", "vector:", "state:"
#: vector entries: the initial model and the mix payload (train message), a worker's model
#: (its reply, and the name of the model among a worker state's arrays)
INIT, MIX, MODEL = VECTOR_NS + "init", VECTOR_NS + "mix", "x"
#: SCAFFOLD's vectors: the server's control variate c (train message) and the change of
#: the worker's c_i in the round (its reply)
CONTROL, DELTA = VECTOR_NS + "control", VECTOR_NS + "control-delta"
#: the vectors that are the algorithm's traffic (a worker state's are a checkpoint's)
TRAFFIC_VECTORS = frozenset({INIT, MIX, MODEL, CONTROL, DELTA})
#: the entries of a worker state: its round and step count, and each array as STATE_PREFIX
#: + its name
STATE_ROUND, STATE_STEPS, STATE_PREFIX = STATE_NS + "round", STATE_NS + "steps", STATE_NS + "array:"
#: the entries a reply to a train message has, and those it may have besides a state's arrays
REPLY_KEYS = frozenset({MODEL, "train-loss", "compute-time", "round"})
#: what an eval-local-workers worker's reply adds: its own model on the evaluation sample
LOCAL_EVALUATION = ("local-test-loss", "local-test-accuracy")
REPLY_OPTIONAL_KEYS = frozenset({STATE_ROUND, STATE_STEPS, DELTA, *LOCAL_EVALUATION})
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


def is_config_key(key: str) -> bool:
    """Whether a train record's entry `key` is the run config's (in no wire namespace)."""
    return ":" not in key


def read_config(message: Message) -> RunConfig:
    """The run config a message carries."""
    record = message.content.config_records[CONFIG]
    return parsed_config({k: v for k, v in record.items() if is_config_key(k)})


def parsed_config(items: Mapping[str, Any]) -> RunConfig:
    """Config entries as a RunConfig, validated once per distinct config (a message of
    every round carries one)."""
    return _parsed(tuple(sorted(items.items())))


@lru_cache(maxsize=8)
def _parsed(items: tuple[tuple[str, Any], ...]) -> RunConfig:
    """A config record's entries as a RunConfig, validated once per distinct config."""
    return RunConfig.from_mapping(dict(items))


@dataclass(frozen=True)
class WorkerSnapshot:
    """A worker's whole state after `round` (0: it never trained, and holds nothing): its
    step count and arrays (model `MODEL`, momentum, snapshot, pending gradient), as arrays
    or their .npy bytes. A reply carries one for a checkpoint; a resumed run's first message
    carries one to restore."""

    round: int
    steps: int
    arrays: Mapping[str, Vector] = field(default_factory=dict)

    def entries(self) -> dict[str, Any]:
        """The snapshot as record entries."""
        named = {STATE_PREFIX + k: v for k, v in self.arrays.items()}
        return {STATE_ROUND: self.round, STATE_STEPS: self.steps, **_entries(named)}

    @classmethod
    def read(cls, record: Mapping[str, Any]) -> WorkerSnapshot | None:
        """The snapshot a record holds, or None if it holds none; ValueError if its round
        and step count are not whole numbers or an array entry is not .npy bytes."""
        if STATE_ROUND not in record:
            return None
        try:
            round_, steps = _whole(record[STATE_ROUND]), _whole(record[STATE_STEPS])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"a worker state without a whole round and step count: {exc!r}"
            ) from None
        n = len(STATE_PREFIX)
        arrays = {k[n:]: decode(v) for k, v in record.items() if k.startswith(STATE_PREFIX)}
        return cls(round_, steps, arrays)


#: the state a worker that never trained holds
NO_STATE = WorkerSnapshot(0, 0)


@dataclass(frozen=True)
class RoundHeader:
    """What a train message asks of its worker, besides the vectors it carries.

    update_rule, client_rule: the rules the round runs (`fedcoop` UpdateRule and ClientRule
    values); round: the round whose local_steps the worker runs (None: an eager message that only
    collects); sync, self_weight: the sync to apply first (the mix vector, if any, is the
    message's MIX entry); adopt: replace the model by MIX (a worker that missed a sync),
    reset: also drop its momentum; collect (eager replies only): the round whose model the
    reply carries (0: none yet); send_state: the reply also carries the worker's snapshot;
    restore: the snapshot to install first (a resumed run).
    """

    update_rule: str = ""
    client_rule: str = ""
    round: int | None = None
    local_steps: int = 0
    sync: int | None = None
    self_weight: float = 1.0
    adopt: bool = False
    reset: bool = False
    collect: int | None = None
    send_state: bool = False
    restore: WorkerSnapshot | None = None

    def entries(self) -> dict[str, Any]:
        """The header as record entries (None fields left out)."""
        out = {
            HEADER_NS + f.name.replace("_", "-"): getattr(self, f.name)
            for f in fields(self)
            if f.name != "restore" and getattr(self, f.name) is not None
        }
        return out | (self.restore.entries() if self.restore is not None else {})

    @classmethod
    def read(cls, record: Mapping[str, Any]) -> RoundHeader:
        """The header of a train record; ValueError if an entry has the wrong type."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = HEADER_NS + f.name.replace("_", "-")
            if f.name == "restore" or key not in record:
                continue
            value = record[key]
            kind = _HEADER_TYPES[f.name]
            accepted = (int, float) if kind is float else (kind,)
            if not isinstance(value, accepted) or (kind is not bool and isinstance(value, bool)):
                raise ValueError(f"header entry {key} = {value!r} is not a {kind.__name__}")
            values[f.name] = kind(value)
        missing = [k for k in ("update_rule", "client_rule") if not values.get(k)]
        if missing and "round" in values:
            raise ValueError(f"a train message without {missing}")
        return cls(**values, restore=WorkerSnapshot.read(record))


#: the type each header field's entry must have (ConfigRecord keeps bools, ints, floats, str)
_HEADER_TYPES: dict[str, type] = {
    "update_rule": str,
    "client_rule": str,
    "round": int,
    "local_steps": int,
    "sync": int,
    "self_weight": float,
    "adopt": bool,
    "reset": bool,
    "collect": int,
    "send_state": bool,
}


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{value!r} is not a whole number")
    return int(value)


def train_content(
    config: RunConfig,
    header: RoundHeader,
    *,
    init: Vector = None,
    mix: Vector = None,
    control: Vector = None,
) -> RecordDict:
    """The content of a train message: the run config, the header and the vectors (arrays
    or .npy bytes; None: left out) in one record."""
    entries = {**header.entries(), **_entries({INIT: init, MIX: mix, CONTROL: control})}
    return RecordDict({CONFIG: ConfigRecord({**config_record(config), **entries})})


def train_record(message: Message) -> ConfigRecord:
    """A train message's record: its round header, vectors and the run config."""
    return message.content.config_records[CONFIG]


def read_train(message: Message) -> tuple[RoundHeader, np.ndarray | None, np.ndarray | None]:
    """(header, initial model, mix vector) of a train message; ValueError if malformed."""
    record = train_record(message)
    return RoundHeader.read(record), read_vector(record, INIT), read_vector(record, MIX)


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
    numeric = ("train-loss", "compute-time", "round", *LOCAL_EVALUATION)
    numbers = [k for k in numeric if k in record and not _is_number(record[k])]
    if numbers:
        return f"entries {numbers} are not numbers"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_vector(record: Mapping[str, Any], key: str) -> np.ndarray | None:
    """The vector entry `key` of a record, or None if absent."""
    return None if key not in record else decode(record[key])


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
