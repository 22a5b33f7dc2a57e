"""Checkpoint files: written atomically, so a crash at any instant leaves the last good one.

A checkpoint is the server's state at the end of a settled round, every worker's own state
as of that round, and the metrics and events so far (what goes in is the strategy's
business), as plain data. It is one `checkpoint.npz` (numpy's zip of .npy members): every
numpy array is a member of its own, and the member `tree` is a UTF-8 JSON document (a uint8
array) of the layout version and the tree that holds the arrays. One file, so one atomic
rename replaces the whole checkpoint.

Why not pickle (as fedcoop did up to 0.1.0): loading a pickle runs whatever code it names, so a run
directory from elsewhere could take over the machine that resumes it. Here nothing in a file
is executed: the JSON is data, and the arrays are read with `allow_pickle=False` (an object
array is refused), exact in dtype, shape and bits. An old `checkpoint.pkl` is refused with
the way to resume it, never unpickled.

The tree may hold dicts with str or int keys (each key comes back as its type; a numpy
integer key as int, which is equal and hashes the same), lists, tuples (back as tuples),
None, bool, int, float (infinities and NaN included: a float NaN comes back as math.nan,
without its sign and payload bits, which numpy values keep), str, numpy arrays of a bool or
numeric dtype (any shape, 0-d and empty included) and numpy scalars of those dtypes (back as
numpy scalars of the same dtype and bits). Anything else is a TypeError naming its place in
the tree, raised before the file is touched.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from fedcoop.errors import ConfigError

FILENAME = "checkpoint.npz"
#: the pickle that fedcoop wrote until 0.1.0: refused, never loaded
PICKLE_FILENAME = "checkpoint.pkl"
#: bumped when the layout changes, so an old file is refused rather than misread
#: (1 was the pickle; 2 the npz with its JSON tree)
VERSION = 2
#: what the JSON document says it is, so that another program's npz is not misread
FORMAT = "fedcoop-checkpoint"
#: the npz member holding the JSON document (array members are named a0, a1, ...)
TREE = "tree"
#: the dtype kinds an array or numpy scalar may have: bool, signed, unsigned, float, complex
KINDS = frozenset("biufc")
#: how a zip file (so an .npz) starts
ZIP_MAGIC = b"PK\x03\x04"
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}

OLD_PICKLE = (
    f"this is a pickle checkpoint ({PICKLE_FILENAME}) from an earlier fedcoop version (0.1.0, "
    f"before checkpoints moved to {FILENAME}); this version does not load pickles, because "
    "unpickling a file can run any code. To resume it, run `fedcoop run resume=DIR` with the "
    "fedcoop that wrote it (`pip install` a checkout from before the move to .npz "
    "checkpoints); or start the run afresh with this one"
)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call write(file) on a temporary file beside `path`, fsync it, rename it over `path`
    and fsync the directory (so the rename itself survives a power cut): a crash at any
    instant leaves either the old file or the new one, whole."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write(directory: Path, state: dict[str, Any]) -> Path:
    """Write `state` to directory/checkpoint.npz atomically. The whole tree is encoded
    first, so a TypeError for a value it cannot hold leaves the last checkpoint as it was."""
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(state, "state", arrays, set())
    doc = json.dumps({"format": FORMAT, "version": VERSION, "tree": tree}, allow_nan=False)
    members = {TREE: np.frombuffer(doc.encode(), dtype=np.uint8), **arrays}
    path = directory / FILENAME
    atomic_write(path, lambda f: np.savez(f, allow_pickle=False, **members))
    return path


def read(directory: str | Path) -> dict[str, Any]:
    """The checkpoint in a run directory, or a ConfigError saying why there is none."""
    run_dir = Path(directory).expanduser()
    path = run_dir / FILENAME
    if not path.is_file():
        if (run_dir / PICKLE_FILENAME).is_file():
            raise ConfigError("resume", str(run_dir / PICKLE_FILENAME), OLD_PICKLE)
        raise ConfigError("resume", str(directory), f"no {FILENAME} in that run directory")
    try:
        with path.open("rb") as f:
            if f.read(len(ZIP_MAGIC)) != ZIP_MAGIC:  # numpy would take it for a pickle
                raise ValueError("not an .npz (zip) file")
        with np.load(path, allow_pickle=False) as npz:
            doc = _document(npz)
            if doc.get("format") != FORMAT or doc.get("version") != VERSION:
                raise _Outdated(f"format {doc.get('format')!r}, version {doc.get('version')!r}")
            state = _decode(doc.get("tree"), npz)
    except _Outdated as exc:
        raise ConfigError(
            "resume", str(path), f"not a version-{VERSION} fedcoop checkpoint (it says {exc})"
        ) from None
    # KeyError, TypeError, RecursionError: a malformed (or hostile) document or tree
    except (
        OSError,
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        RecursionError,
        zipfile.BadZipFile,
    ) as exc:
        raise ConfigError("resume", str(path), f"unreadable checkpoint: {exc}") from None
    if not isinstance(state, dict):
        raise ConfigError("resume", str(path), "unreadable checkpoint: its tree is not a dict")
    return state


class _Outdated(Exception):
    """A readable document of another format or layout version."""


# -- encoding --------------------------------------------------------------------------------
# A node is JSON null, true/false, an int, a finite float, a string, a list (a Python list),
# or an object with one of these keys: "tuple" (a list of nodes), "dict" (a list of
# [key, node] pairs, key a str or an int), "float" ("nan", "inf" or "-inf"), "array" (the
# name of an npz member), "scalar" (a dtype string, with "bytes": its value's bytes in hex).


def _encode(value: Any, where: str, arrays: dict[str, np.ndarray], open_: set[int]) -> Any:
    """The JSON node of `value` (at `where` in the tree), its arrays added to `arrays`;
    `open_` holds the containers being encoded, so that a cycle is refused."""
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return value if math.isfinite(value) else {"float": repr(value)}
    if kind is np.ndarray:
        _check_dtype(value.dtype, where)
        name = f"a{len(arrays)}"
        arrays[name] = value
        return {"array": name}
    if isinstance(value, np.generic):
        _check_dtype(value.dtype, where)
        return {"scalar": value.dtype.str, "bytes": value.tobytes().hex()}
    if kind not in (list, tuple, dict):
        raise TypeError(
            f"checkpoint: {where} is a {kind.__qualname__}, which a checkpoint cannot hold"
        )
    if id(value) in open_:
        raise TypeError(f"checkpoint: {where} contains itself")
    open_.add(id(value))
    try:
        if kind is dict:
            return {"dict": [_pair(k, v, where, arrays, open_) for k, v in value.items()]}
        nodes = [_encode(v, f"{where}[{i}]", arrays, open_) for i, v in enumerate(value)]
        return nodes if kind is list else {"tuple": nodes}
    finally:
        open_.discard(id(value))


def _pair(key: Any, value: Any, where: str, arrays: dict[str, np.ndarray], open_: set[int]) -> list:
    """A dict entry as [key, node]: the key a str or an int (a numpy integer becomes one)."""
    if isinstance(key, np.integer):
        key = int(key)
    if type(key) not in (str, int):
        raise TypeError(
            f"checkpoint: {where} has the key {key!r} ({type(key).__qualname__}); "
            "a checkpoint's dict keys are str or int"
        )
    return [key, _encode(value, f"{where}[{key!r}]", arrays, open_)]


def _check_dtype(dtype: np.dtype, where: str) -> None:
    if dtype.kind not in KINDS:
        raise TypeError(
            f"checkpoint: {where} has dtype {dtype}; a checkpoint holds bool and numeric "
            "arrays and scalars only"
        )


# -- decoding --------------------------------------------------------------------------------


def _document(npz: np.lib.npyio.NpzFile) -> dict[str, Any]:
    """The JSON document of a checkpoint's npz (strict JSON: no NaN tokens)."""
    if TREE not in npz.files:
        raise ValueError(f"no {TREE!r} member")
    raw = npz[TREE]
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError(f"its {TREE!r} member is not a uint8 vector")
    doc = json.loads(raw.tobytes().decode(), parse_constant=_no_constant)
    if not isinstance(doc, dict):
        raise ValueError("its document is not a JSON object")
    return doc


def _no_constant(token: str) -> None:
    raise ValueError(f"non-standard JSON token {token}")


def _decode(node: Any, npz: np.lib.npyio.NpzFile) -> Any:
    """The value a JSON node stands for (a ValueError or KeyError for a malformed one)."""
    if node is None or type(node) in (bool, int, float, str):
        return node
    if type(node) is list:
        return [_decode(n, npz) for n in node]
    if type(node) is not dict or not (len(node) == 1 or node.keys() == {"scalar", "bytes"}):
        raise ValueError(f"malformed node {str(node)[:80]}")
    if "dict" in node:
        out = {}
        for pair in _list(node["dict"]):
            if type(pair) is not list or len(pair) != 2 or type(pair[0]) not in (str, int):
                raise ValueError(f"malformed dict entry {str(pair)[:80]}")
            out[pair[0]] = _decode(pair[1], npz)
        return out
    if "tuple" in node:
        return tuple(_decode(n, npz) for n in _list(node["tuple"]))
    if "float" in node:
        return _NON_FINITE[node["float"]]
    if "array" in node:
        array = npz[str(node["array"])]  # numpy refuses an object array here
        _check_read_dtype(array.dtype)
        return array
    if "scalar" in node:
        dtype = np.dtype(str(node["scalar"]))
        _check_read_dtype(dtype)
        raw = bytes.fromhex(str(node["bytes"]))
        if len(raw) != dtype.itemsize:
            raise ValueError(f"a {dtype} scalar of {len(raw)} bytes")
        return np.frombuffer(raw, dtype=dtype)[0]
    raise ValueError(f"malformed node {str(node)[:80]}")


def _list(node: Any) -> list:
    if type(node) is not list:
        raise ValueError(f"malformed node {str(node)[:80]}")
    return node


def _check_read_dtype(dtype: np.dtype) -> None:
    if dtype.kind not in KINDS:
        raise ValueError(f"an array of dtype {dtype}")
