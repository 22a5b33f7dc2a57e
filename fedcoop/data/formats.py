"""The two file formats the data sets ship in: IDX (MNIST, Fashion-MNIST) and CIFAR's pickles.

Hand-written readers rather than torchvision's classes, because those insist on their own
folder layout and download logic, while fedcoop reads files from arbitrary places (the package
itself, the Debian and npm copies, tests' temporary files) with no network. Both return numpy
arrays and raise a ConfigError naming the file for anything malformed.
"""

from __future__ import annotations

import gzip
import io
import pickle
from os import PathLike

import numpy as np

from fedcoop.errors import ConfigError

# IDX type codes and their big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a native-endian numpy array."""
    with open(path, "rb") as handle:
        raw = handle.read()
    return parse_idx(raw, str(path))


def parse_idx(raw: bytes, source: str) -> np.ndarray:
    """Parse IDX bytes; ``source`` names the file in errors so a bad file is easy to find."""

    def bad(reason: str) -> ConfigError:
        return ConfigError("path", source, f"not a valid IDX file: {reason}")

    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise bad(f"corrupt gzip stream ({exc})") from exc
    if len(raw) < 4:
        raise bad(f"{len(raw)} bytes is shorter than the 4-byte magic number")
    if raw[0] != 0 or raw[1] != 0:
        raise bad(f"magic number {raw[:4].hex()} does not start with two zero bytes")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        valid = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise bad(f"type code 0x{code:02X} is not one of {valid}")
    if ndim == 0:
        raise bad("number of dimensions is 0")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise bad(f"header declares {ndim} dimensions but the file ends after {len(raw)} bytes")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header_len
    if found != expected:
        raise bad(f"header shape {shape} needs {expected} payload bytes, found {found}")
    data = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


# Only what a CIFAR batch needs: numpy arrays (as pickled by numpy 1 and 2, protocols 2 to 5)
# and bytes from Python 2 pickles. Anything else in a file is refused rather than run.
_CIFAR_PICKLE_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that builds only numpy arrays, since a pickle can otherwise run any code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core.") and np.lib.NumpyVersion(np.__version__) >= "2.0.0":
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def read_cifar_batch(
    path: str | PathLike[str], label_key: str = "labels"
) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch: uint8 images N x 3 x 32 x 32 and int64 labels (N,).

    The file is a dict with ``data`` (uint8 N x 3072, each row the red, green and blue 32 x 32
    planes in row-major order) and ``label_key``: ``labels`` for CIFAR-10's data_batch_1..5 and
    test_batch, ``fine_labels`` for CIFAR-100's train and test. Keys may be bytes (Python 2
    pickles, as published) or str. Only numpy arrays are unpickled; anything else is refused.
    """
    source = str(path)

    def bad(reason: str) -> ConfigError:
        return ConfigError("path", source, f"not a valid CIFAR batch: {reason}")

    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        # latin1 is what numpy needs to rebuild arrays pickled by Python 2 (as published).
        doc = _CifarUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise bad(f"cannot unpickle it ({exc})") from exc
    if not isinstance(doc, dict):
        raise bad(f"holds a {type(doc).__name__}, not a dict")
    doc = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in doc.items()}
    if "data" not in doc or label_key not in doc:
        raise bad(f"needs keys 'data' and {label_key!r}, has {sorted(map(str, doc))}")
    data = doc["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise bad("'data' must be a 2-D uint8 array")
    if data.shape[1] != 3 * 32 * 32:
        raise bad(f"'data' rows have {data.shape[1]} bytes, not 3072")
    labels = np.asarray(doc[label_key])
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise bad(f"{label_key!r} must be {data.shape[0]} integers, one per image")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)
