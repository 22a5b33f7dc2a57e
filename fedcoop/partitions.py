"""Split a labelled data set across clients (IID or non-IID) with flwr-datasets partitioners.

The partitioners run on a local ``datasets.Dataset`` holding only the labels and the row
indices, so partitioning needs no network and returns plain index arrays that select rows of a
``fedcoop.data.ArrayDataset``. Every partition is a function of (labels, num_partitions, scheme,
scheme parameters, seed) alone, so a run can be reproduced from its config. ``plot_histogram``
draws a split's ``class_histogram`` (it needs matplotlib, imported only there).
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedcoop.errors import ConfigError

if TYPE_CHECKING:  # datasets and flwr-datasets (pandas, pyarrow, matplotlib) load on first use
    from datasets import Dataset
    from flwr_datasets.partitioner import Partitioner

SCHEMES = ("iid", "dirichlet", "pathological", "skewed", "shards", "natural")

_INDEX = "index"
_LABEL = "label"


@functools.cache
def _skewed_partitioner() -> type[Partitioner]:
    """SkewedPartitioner, defined on first use (it subclasses flwr-datasets' Partitioner,
    whose import costs some 180 MB: a device taking an IID shard never needs it)."""
    from flwr_datasets.partitioner import Partitioner

    class SkewedPartitioner(Partitioner):
        """The non-IID split of Overlap-Local-SGD (Wang et al., 2020), a flwr-datasets partitioner.

        Every partition gets n = N // num_partitions samples, round(major_fraction * n) of them from
        one "major" class (partition i gets the i-th class, cycling over the sorted classes) and the
        rest drawn without replacement from the samples of the other classes that no partition took
        as major samples. With 16 partitions of CIFAR-10's 50,000 training images and
        major_fraction=0.64 this gives the paper's 3125 samples per node, 2000 of one class. Minor
        samples never come from the partition's own major class, so its major count is exact.
        Subclassing ``Partitioner`` lets the split plug into ``FederatedDataset`` like the others.
        """

        def __init__(
            self,
            num_partitions: int,
            partition_by: str = _LABEL,
            major_fraction: float = 0.64,
            seed: int | None = 42,
        ) -> None:
            super().__init__()
            if num_partitions <= 0:
                raise ConfigError("num_partitions", num_partitions, "must be a positive integer")
            if not 0.0 < major_fraction <= 1.0:
                raise ConfigError("major_fraction", major_fraction, "must lie in (0, 1]")
            self._num_partitions = num_partitions
            self._partition_by = partition_by
            self._major_fraction = major_fraction
            self._seed = seed
            self._partition_id_to_indices: list[np.ndarray] | None = None

        @property
        def num_partitions(self) -> int:
            """Total number of partitions."""
            return self._num_partitions

        def load_partition(self, partition_id: int) -> Dataset:
            """Rows of partition ``partition_id``; the whole split is computed on the first call."""
            if self._partition_id_to_indices is None:
                # Slice the column: iterating a datasets>=4 ``Column`` row by row is ~100x slower.
                labels = np.asarray(self.dataset[self._partition_by][:])
                self._partition_id_to_indices = _skewed_indices(
                    labels,
                    self._num_partitions,
                    self._major_fraction,
                    np.random.default_rng(self._seed),
                )
            return self.dataset.select(self._partition_id_to_indices[partition_id])

    return SkewedPartitioner


def __getattr__(name: str) -> object:
    if name == "SkewedPartitioner":
        return _skewed_partitioner()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _skewed_indices(
    labels: np.ndarray, num_partitions: int, major_fraction: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Row indices of each skewed partition (see ``SkewedPartitioner``)."""
    classes, class_of_row = np.unique(labels, return_inverse=True)
    num_classes = len(classes)
    size = len(labels) // num_partitions
    if size == 0:
        raise ConfigError(
            "num_partitions", num_partitions, f"must be at most the {len(labels)} samples"
        )
    num_major = round(major_fraction * size)
    num_minor = size - num_major
    major = np.arange(num_partitions) % num_classes
    majors_per_class = np.bincount(major, minlength=num_classes)
    counts = np.bincount(class_of_row, minlength=num_classes)

    # Most major samples each class can give to every partition that has it as major class.
    room = np.where(
        majors_per_class > 0, counts // np.maximum(majors_per_class, 1), np.iinfo(np.int64).max
    )
    worst = int(np.argmin(room))
    if num_major > room[worst]:
        most = int(room[worst])
        raise ConfigError(
            "major_fraction",
            major_fraction,
            f"needs {num_major} samples of class {classes[worst]} for each of its "
            f"{majors_per_class[worst]} partitions but it has only {counts[worst]}; the largest "
            f"feasible value is {most}/{size} (about {math.floor(most / size * 1e6) / 1e6})",
        )

    pools = [rng.permutation(np.flatnonzero(class_of_row == c)) for c in range(num_classes)]
    taken = np.zeros(num_classes, dtype=np.int64)
    parts: list[list[np.ndarray]] = []
    for c in major:
        parts.append([pools[c][taken[c] : taken[c] + num_major]])
        taken[c] += num_major

    # Minor samples: what each class still has, and what partitions of each major class still
    # need from the *other* classes. A partition group of major class h can be served iff the
    # other classes hold enough (demand[h] <= left.sum() - left[h]); that, with the total, is
    # Gale's condition for this transportation problem, so a split exists exactly when it holds.
    left = counts - taken
    demand = majors_per_class * num_minor
    short = (demand > 0) & (demand > left.sum() - left)
    if short.any():
        h = int(np.flatnonzero(short)[0])
        raise ConfigError(
            "major_fraction",
            major_fraction,
            f"leaves {demand[h]} minor samples to draw for the partitions of major class "
            f"{classes[h]} but the other classes have only {left.sum() - left[h]} left; raise "
            "major_fraction or use fewer partitions",
        )
    for partition_id, g in enumerate(major):
        demand[g] -= num_minor
        # Take at least what keeps Gale's condition true for the partitions still to come, and
        # draw the rest uniformly (multivariate hypergeometric) from what is left.
        floor = np.where(demand > 0, demand + num_minor + left - left.sum(), 0).clip(min=0)
        floor[g] = 0
        free = left - floor
        free[g] = 0
        drawn = floor + rng.multivariate_hypergeometric(free, num_minor - int(floor.sum()))
        for c in np.flatnonzero(drawn):
            parts[partition_id].append(pools[c][taken[c] : taken[c] + drawn[c]])
            taken[c] += drawn[c]
        left -= drawn
    return [np.sort(np.concatenate(chunks)) for chunks in parts]


def partition(
    labels: np.ndarray,
    num_partitions: int,
    scheme: str,
    *,
    seed: int,
    alpha: float = 0.5,
    classes_per_partition: int = 2,
    major_fraction: float = 0.64,
    groups: np.ndarray | None = None,
    shards_per_partition: int = 2,
) -> list[np.ndarray]:
    """One sorted index array per partition; no index appears in two partitions.

    Schemes: "iid" (seeded shuffle, then sizes differing by at most one), "dirichlet" (per-class
    Dirichlet(alpha) proportions; small alpha is more skewed), "pathological" (each partition
    holds ``classes_per_partition`` classes, the first one partition_id mod C as in the original
    paper, the rest drawn with the seed), "skewed" (``SkewedPartitioner``), "shards" (FedAvg's
    split with flwr-datasets' ``ShardPartitioner``: rows sorted by label are cut into
    num_partitions x ``shards_per_partition`` shards of floor(N / (num_partitions x
    shards_per_partition)) rows and each partition gets ``shards_per_partition`` of them at
    random; the few rows left over belong to no partition) and "natural" (one data-owning
    device per client for data sets whose rows carry a device id in ``groups``, such as FedProx's
    Synthetic: the k-th smallest device id goes to partition k mod num_partitions, so
    num_partitions may not exceed the number of devices; the seed plays no part).
    Parameters a scheme does not use are ignored.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(
            "labels", f"{labels.dtype} array of shape {labels.shape}", "must be 1-D, non-empty ints"
        )
    if scheme not in SCHEMES:
        raise ConfigError("scheme", scheme, f"must be one of {', '.join(SCHEMES)}")
    if not 1 <= num_partitions <= len(labels):
        raise ConfigError(
            "num_partitions",
            num_partitions,
            f"must lie in 1..{len(labels)} (the number of samples)",
        )
    if seed < 0:
        raise ConfigError("seed", seed, "must be a non-negative integer")
    if scheme == "natural":
        return _natural_indices(groups, num_partitions, len(labels))

    if scheme == "iid":
        return _iid_indices(len(labels), num_partitions, seed)
    from datasets import Dataset

    dataset = Dataset.from_dict({_INDEX: np.arange(len(labels)), _LABEL: labels})
    partitioner = _make_partitioner(
        labels,
        num_partitions,
        scheme,
        seed,
        alpha,
        classes_per_partition,
        major_fraction,
        shards_per_partition,
    )
    # ShardPartitioner sorts by label (stably): shuffling first makes the rows of a class fall
    # into its shards at random rather than in storage order (which may follow e.g. devices).
    partitioner.dataset = dataset.shuffle(seed=seed) if scheme == "shards" else dataset
    try:
        with warnings.catch_warnings():
            # datasets' sort (used by ShardPartitioner) trips a pyarrow deprecation warning.
            warnings.filterwarnings("ignore", "Specifying null_placement", FutureWarning)
            parts = [
                np.sort(np.asarray(partitioner.load_partition(i)[_INDEX][:], dtype=np.int64))
                for i in range(num_partitions)
            ]
    except ConfigError:
        raise
    except ValueError as exc:  # flwr-datasets' own refusals, restated with our parameter names
        if scheme == "dirichlet":  # it gives up after 10 draws that leave a partition empty
            raise ConfigError(
                "alpha", alpha, f"too small for {num_partitions} partitions: {exc}"
            ) from exc
        raise ConfigError(
            "num_partitions", num_partitions, f"{scheme} partitioning: {exc}"
        ) from exc
    # flwr-datasets does not promise non-empty partitions, so check rather than trust.
    empty = [i for i, part in enumerate(parts) if len(part) == 0]
    if empty:
        raise ConfigError(
            "num_partitions",
            num_partitions,
            f"leaves partitions {empty} empty under scheme {scheme!r}; use fewer partitions",
        )
    return parts


def _iid_indices(num_samples: int, num_partitions: int, seed: int) -> list[np.ndarray]:
    """The IID split flwr-datasets' IidPartitioner makes of the rows shuffled with `seed` (as
    datasets' Dataset.shuffle shuffles them: numpy's default_rng(seed).permutation), computed
    with numpy alone: contiguous shards of the permutation, the first N mod m one row longer
    (datasets' Dataset.shard). tests/test_partitions.py checks it equals flwr-datasets'."""
    order = np.random.default_rng(seed).permutation(num_samples)
    size, extra = divmod(num_samples, num_partitions)
    bounds = [size * i + min(i, extra) for i in range(num_partitions + 1)]
    return [np.sort(order[lo:hi]).astype(np.int64) for lo, hi in itertools.pairwise(bounds)]


def _make_partitioner(
    labels: np.ndarray,
    num_partitions: int,
    scheme: str,
    seed: int,
    alpha: float,
    classes_per_partition: int,
    major_fraction: float,
    shards_per_partition: int,
) -> Partitioner:
    """The flwr-datasets partitioner for ``scheme``, seeded with our seed, after checking params."""
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        PathologicalPartitioner,
        ShardPartitioner,
    )

    if scheme == "shards":
        if isinstance(shards_per_partition, bool) or not isinstance(
            shards_per_partition, numbers.Integral
        ):
            raise ConfigError("shards_per_partition", shards_per_partition, "must be an integer")
        # Both limits keep every shard non-empty (ShardPartitioner would divide by zero).
        most = len(labels) // num_partitions
        if not 1 <= shards_per_partition <= most:
            raise ConfigError(
                "shards_per_partition",
                shards_per_partition,
                f"must lie in 1..{most} ({len(labels)} samples // {num_partitions} partitions), "
                "so that every shard holds at least one sample",
            )
        # shuffle=False: it would only reorder rows inside a partition, which we sort anyway.
        return ShardPartitioner(
            num_partitions,
            _LABEL,
            num_shards_per_partition=int(shards_per_partition),
            shuffle=False,
            seed=seed,
        )
    if scheme == "dirichlet":
        if not alpha > 0:
            raise ConfigError("alpha", alpha, "must be a positive number")
        # min_partition_size=1: resample (up to 10 times) rather than return an empty partition.
        return DirichletPartitioner(
            num_partitions, _LABEL, float(alpha), min_partition_size=1, seed=seed
        )
    if scheme == "pathological":
        num_classes = len(np.unique(labels))
        if not 1 <= classes_per_partition <= num_classes:
            raise ConfigError(
                "classes_per_partition",
                classes_per_partition,
                f"must lie in 1..{num_classes} (the number of classes)",
            )
        return PathologicalPartitioner(
            num_partitions,
            _LABEL,
            classes_per_partition,
            class_assignment_mode="first-deterministic",
            seed=seed,
        )
    return _skewed_partitioner()(num_partitions, _LABEL, major_fraction, seed=seed)


def class_histogram(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-partition class counts (num_partitions x num_classes), to show how non-IID a split is."""
    labels = np.asarray(labels)
    if len(labels) and not 0 <= labels.min() <= labels.max() < num_classes:
        raise ConfigError(
            "num_classes",
            num_classes,
            f"must cover every label 0..num_classes-1 (labels span {labels.min()}..{labels.max()})",
        )
    counts = [np.bincount(labels[part], minlength=num_classes) for part in parts]
    return np.stack(counts).astype(np.int64)


def format_histogram(hist: np.ndarray) -> str:
    """A right-aligned text table of ``class_histogram`` output with a total column, to print."""
    hist = np.asarray(hist)
    header = ["partition", *(str(c) for c in range(hist.shape[1])), "total"]
    rows = [[str(i), *(str(v) for v in row), str(row.sum())] for i, row in enumerate(hist)]
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
    return "\n".join(
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, *rows]
    )


def _natural_indices(
    groups: np.ndarray | None, num_partitions: int, num_samples: int
) -> list[np.ndarray]:
    """Row indices of each partition of the "natural" scheme (see ``partition``)."""
    if groups is None:
        raise ConfigError(
            "groups",
            None,
            "scheme 'natural' needs a device id per row (a data set with a group field)",
        )
    groups = np.asarray(groups)
    if groups.shape != (num_samples,) or not np.issubdtype(groups.dtype, np.integer):
        raise ConfigError(
            "groups",
            f"{groups.dtype} array of shape {groups.shape}",
            f"must be 1-D integer device ids, one per label ({num_samples})",
        )
    devices, device_of_row = np.unique(groups, return_inverse=True)
    if num_partitions > len(devices):
        raise ConfigError(
            "num_partitions",
            num_partitions,
            f"must lie in 1..{len(devices)} (the number of devices) for scheme 'natural'",
        )
    client_of_row = device_of_row.reshape(-1) % num_partitions
    return [np.flatnonzero(client_of_row == i).astype(np.int64) for i in range(num_partitions)]


def plot_histogram(hist: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Draw ``class_histogram`` output as one stacked bar per client, coloured by class.

    Written as PNG or PDF by the suffix of ``path`` (whose folder is created if missing); returns
    the path. Uses matplotlib's object API on an Agg canvas, so it neither needs a display nor
    touches pyplot's global state or the process-wide backend.
    """
    hist = np.asarray(hist)
    if (
        hist.ndim != 2
        or hist.size == 0
        or not np.issubdtype(hist.dtype, np.number)
        or not np.all(np.isfinite(hist))
        or (hist < 0).any()
    ):
        raise ConfigError(
            "hist",
            f"{hist.dtype} array of shape {hist.shape}",
            "must be a non-empty 2-D array of non-negative counts (clients x classes)",
        )
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "pdf"):
        raise ConfigError("path", str(path), "must end in .png or .pdf")

    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    num_clients, num_classes = hist.shape
    figure = Figure(figsize=(max(6.0, 2.0 + 0.3 * num_clients), 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if num_classes <= 20:
        cmap = colormaps["tab10" if num_classes <= 10 else "tab20"]
        colours = [cmap(c) for c in range(num_classes)]
    else:
        colours = list(colormaps["viridis"](np.linspace(0.0, 1.0, num_classes)))
    clients = np.arange(num_clients)
    bottom = np.zeros(num_clients)
    for c, colour in enumerate(colours):
        axes.bar(clients, hist[:, c], bottom=bottom, width=0.8, color=colour, label=str(c))
        bottom = bottom + hist[:, c]
    axes.set_xlabel("client")
    axes.set_ylabel("samples")
    if num_clients <= 50:
        axes.set_xticks(clients)
    axes.margins(x=0.01)
    if title:
        axes.set_title(title)
    if num_classes <= 20:
        axes.legend(title="class", loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format=fmt)
    return path
