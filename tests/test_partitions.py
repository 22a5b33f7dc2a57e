"""Client partitions: disjointness, determinism, the skewed split's exact counts, and refusals."""

from __future__ import annotations

import re

import numpy as np
import pytest
from datasets import Dataset
from flwr_datasets.partitioner import Partitioner

from fedcoop.data import load_dataset
from fedcoop.errors import ConfigError
from fedcoop.partitions import (
    SCHEMES,
    SkewedPartitioner,
    class_histogram,
    format_histogram,
    partition,
    plot_histogram,
)


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """2000 labels of 10 classes in random order, unequal class sizes."""
    return np.random.default_rng(123).choice(10, size=2000, p=np.linspace(0.05, 0.15, 10))


@pytest.fixture(scope="module")
def groups() -> np.ndarray:
    """A device id per row of ``labels``: 25 devices with ids 100, 103, ... in random order."""
    return 100 + 3 * np.random.default_rng(7).integers(0, 25, size=2000)


def _assert_valid(parts: list[np.ndarray], num_samples: int, num_partitions: int) -> None:
    assert len(parts) == num_partitions
    assert all(len(p) > 0 and p.dtype == np.int64 for p in parts)
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted, no repeats inside
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined)  # no repeats across partitions
    assert joined.min() >= 0 and joined.max() < num_samples


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.filterwarnings("ignore:Classes.*will NOT be used:UserWarning")  # 8 parts < 10 classes
@pytest.mark.parametrize("scheme", SCHEMES)
def test_partitions_are_disjoint_deterministic_and_seeded(
    labels: np.ndarray, groups: np.ndarray, scheme: str
) -> None:
    # class 0 has ~100 samples: room for 0.3 * 250 = 75; groups is used by "natural" alone.
    params = {"major_fraction": 0.3, "groups": groups, "shards_per_partition": 3}
    first = partition(labels, 8, scheme, seed=5, **params)
    _assert_valid(first, len(labels), 8)
    assert _same(first, partition(labels, 8, scheme, seed=5, **params))
    # "natural" follows the devices, not the seed.
    assert _same(first, partition(labels, 8, scheme, seed=6, **params)) == (scheme == "natural")


# Each scheme with the parameters it uses (skewed needs major_fraction <= ~0.3 here, see above).
SCHEME_PARAMS = [
    ("iid", {}),
    ("dirichlet", {"alpha": 0.2}),
    ("dirichlet", {"alpha": 5.0}),
    ("pathological", {"classes_per_partition": 1}),
    ("pathological", {"classes_per_partition": 3}),
    ("skewed", {"major_fraction": 0.2}),
    ("skewed", {"major_fraction": 0.3}),
    ("shards", {}),
    ("shards", {"shards_per_partition": 5}),
    ("natural", {}),
]


@pytest.mark.filterwarnings("ignore:Classes.*will NOT be used:UserWarning")
@pytest.mark.parametrize(("scheme", "params"), SCHEME_PARAMS)
@pytest.mark.parametrize("num_partitions", [8, 16])
def test_same_inputs_give_the_same_partition(
    labels: np.ndarray, groups: np.ndarray, scheme: str, params: dict, num_partitions: int
) -> None:
    """Determinism: (labels, m, scheme, params, seed) fix the split, call after call."""
    assert {s for s, _ in SCHEME_PARAMS} == set(SCHEMES)
    kwargs = {"seed": 11, "groups": groups, **params}
    first = partition(labels.copy(), num_partitions, scheme, **kwargs)
    _assert_valid(first, len(labels), num_partitions)
    assert _same(first, partition(labels.copy(), num_partitions, scheme, **kwargs))


def test_iid_covers_everything_with_balanced_sizes(labels: np.ndarray) -> None:
    parts = partition(labels, 7, "iid", seed=0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))
    # Shuffled, not contiguous shards of the input order.
    assert not np.array_equal(parts[0], np.arange(len(parts[0])))


@pytest.mark.parametrize(("num_samples", "num_partitions"), [(2000, 7), (10, 10), (61, 4), (5, 1)])
@pytest.mark.parametrize("seed", [0, 3])
def test_iid_is_flwr_datasets_iid_split_of_the_seeded_shuffle(
    num_samples: int, num_partitions: int, seed: int
) -> None:
    """IID is computed with numpy alone (a device need not import datasets), and equals what
    flwr-datasets' IidPartitioner makes of the rows datasets shuffles with the seed."""
    from flwr_datasets.partitioner import IidPartitioner

    dataset = Dataset.from_dict({"index": np.arange(num_samples), "label": np.zeros(num_samples)})
    partitioner = IidPartitioner(num_partitions)
    partitioner.dataset = dataset.shuffle(seed=seed)
    expected = [np.sort(partitioner.load_partition(i)["index"][:]) for i in range(num_partitions)]
    got = partition(np.zeros(num_samples, dtype=np.int64), num_partitions, "iid", seed=seed)
    assert len(got) == num_partitions
    for mine, theirs in zip(got, expected, strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_a_device_imports_no_partitioner_library_nor_torchvision() -> None:
    """The ClientApp's imports leave out datasets, flwr-datasets, torchvision and matplotlib
    (hundreds of MB on a device), which load only for the schemes and models that need them."""
    import subprocess
    import sys

    heavy = ["datasets", "flwr_datasets", "torchvision", "matplotlib", "pandas"]
    code = (
        "import sys, clients.client_app; from fedcoop import partitions, workload; "
        "partitions.partition(__import__('numpy').zeros(20, dtype=int), 4, 'iid', seed=0); "
        f"print([m for m in {heavy!r} if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_skewed_matches_the_overlap_paper_split() -> None:
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 5000))
    parts = partition(labels, 16, "skewed", seed=0)
    _assert_valid(parts, 50000, 16)
    hist = class_histogram(labels, parts, 10)
    assert hist.sum(axis=1).tolist() == [3125] * 16
    assert [hist[i, i % 10] for i in range(16)] == [2000] * 16
    # Here the majors and minors use up every sample exactly.
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(50000))
    # The major class dominates: no other class comes close.
    others = hist.copy()
    others[np.arange(16), np.arange(16) % 10] = 0
    assert others.max() < 400


def test_skewed_on_embedded_mnist_train_split() -> None:
    train, _ = load_dataset(seed=0)
    labels = train.y.numpy()
    parts = partition(labels, 16, "skewed", seed=1, major_fraction=0.64)
    hist = class_histogram(labels, parts, 10)
    assert hist.sum(axis=1).tolist() == [500] * 16  # 8000 // 16
    assert [hist[i, i % 10] for i in range(16)] == [320] * 16  # round(0.64 * 500)


def test_skewed_partitioner_plugs_into_flwr_datasets() -> None:
    labels = np.repeat(np.arange(4), 25)
    partitioner = SkewedPartitioner(num_partitions=4, major_fraction=0.6, seed=3)
    assert isinstance(partitioner, Partitioner) and partitioner.num_partitions == 4
    partitioner.dataset = Dataset.from_dict({"label": labels})
    rows = [partitioner.load_partition(i)["label"][:] for i in range(4)]
    assert [len(r) for r in rows] == [25] * 4
    assert [r.count(i) for i, r in enumerate(rows)] == [15] * 4  # round(0.6 * 25)
    assert sorted(v for r in rows for v in r) == sorted(labels.tolist())


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pathological_has_at_most_k_classes(labels: np.ndarray, k: int) -> None:
    parts = partition(labels, 10, "pathological", seed=2, classes_per_partition=k)
    _assert_valid(parts, len(labels), 10)
    for i, part in enumerate(parts):
        present = np.unique(labels[part])
        assert len(present) <= k
        assert i % 10 in present  # the first class is partition_id mod C


def _mean_tv_from_global(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance of each partition's class mix from the global mix."""
    hist = class_histogram(labels, parts, 10).astype(float)
    local = hist / hist.sum(axis=1, keepdims=True)
    overall = np.bincount(labels, minlength=10) / len(labels)
    return float(np.mean(0.5 * np.abs(local - overall).sum(axis=1)))


def test_dirichlet_small_alpha_is_more_skewed(labels: np.ndarray) -> None:
    skewed = [
        _mean_tv_from_global(labels, partition(labels, 8, "dirichlet", seed=s, alpha=0.1))
        for s in range(3)
    ]
    mild = [
        _mean_tv_from_global(labels, partition(labels, 8, "dirichlet", seed=s, alpha=100.0))
        for s in range(3)
    ]
    assert min(skewed) > 0.4
    assert max(mild) < 0.1


def test_histogram_and_table(labels: np.ndarray) -> None:
    parts = partition(labels, 3, "iid", seed=0)
    hist = class_histogram(labels, parts, 10)
    assert hist.shape == (3, 10) and hist.dtype == np.int64
    assert hist.sum(axis=1).tolist() == [len(p) for p in parts]
    np.testing.assert_array_equal(hist.sum(axis=0), np.bincount(labels, minlength=10))
    lines = format_histogram(hist).splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["partition", *map(str, range(10)), "total"]
    assert lines[1].split() == ["0", *map(str, hist[0]), str(len(parts[0]))]
    assert len({len(line) for line in lines}) == 1  # aligned columns
    with pytest.raises(ConfigError, match="num_classes"):
        class_histogram(labels, parts, 5)


def test_unknown_scheme_is_refused(labels: np.ndarray) -> None:
    valid = "iid, dirichlet, pathological, skewed, shards, natural"
    with pytest.raises(ConfigError, match=valid) as info:
        partition(labels, 4, "shard", seed=0)
    assert info.value.parameter == "scheme"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_too_many_partitions_is_refused(scheme: str) -> None:
    with pytest.raises(ConfigError) as info:
        partition(np.arange(10) % 2, 11, scheme, seed=0)
    assert info.value.parameter == "num_partitions" and "1..10" in str(info.value)


def test_pathological_with_too_few_samples_per_class_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        partition(np.array([0, 0, 1, 1]), 4, "pathological", seed=0)
    assert info.value.parameter == "num_partitions"


def test_infeasible_major_fraction_reports_largest_feasible_value() -> None:
    labels = np.repeat(np.arange(10), 5000)
    labels = labels[(labels != 3) | (np.arange(50000) % 5000 < 1500)]  # class 3 keeps 1500
    size = len(labels) // 16  # class 3 is major for partitions 3 and 13: room for 750 each
    with pytest.raises(ConfigError, match=rf"largest feasible value is 750/{size}") as info:
        partition(labels, 16, "skewed", seed=0, major_fraction=0.64)
    assert info.value.parameter == "major_fraction"
    reported = float(re.search(r"about ([0-9.]+)", str(info.value)).group(1))
    parts = partition(labels, 16, "skewed", seed=0, major_fraction=reported)
    hist = class_histogram(labels, parts, 10)
    assert hist[3, 3] == hist[13, 3] == 750


def test_skewed_without_other_classes_is_refused() -> None:
    with pytest.raises(ConfigError, match="minor samples") as info:
        partition(np.zeros(100, dtype=np.int64), 2, "skewed", seed=0, major_fraction=0.5)
    assert info.value.parameter == "major_fraction"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_dirichlet_that_keeps_leaving_partitions_empty_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        partition(np.arange(60) % 3, 50, "dirichlet", seed=0, alpha=0.01)
    assert info.value.parameter == "alpha"


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"scheme": "dirichlet", "alpha": 0.0}, "alpha"),
        ({"scheme": "pathological", "classes_per_partition": 11}, "classes_per_partition"),
        ({"scheme": "pathological", "classes_per_partition": 0}, "classes_per_partition"),
        ({"scheme": "skewed", "major_fraction": 1.5}, "major_fraction"),
        ({"scheme": "iid", "seed": -1}, "seed"),
        ({"scheme": "shards", "shards_per_partition": 0}, "shards_per_partition"),
        ({"scheme": "shards", "shards_per_partition": 501}, "shards_per_partition"),
        ({"scheme": "shards", "shards_per_partition": 2.0}, "shards_per_partition"),
        ({"scheme": "natural"}, "groups"),
        ({"scheme": "natural", "groups": np.zeros(5, dtype=np.int64)}, "groups"),
        ({"scheme": "natural", "groups": np.zeros(2000)}, "groups"),
    ],
)
def test_bad_parameters_are_refused(
    labels: np.ndarray, kwargs: dict[str, object], parameter: str
) -> None:
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(ConfigError) as info:
        partition(labels, 4, **kwargs)
    assert info.value.parameter == parameter


def test_labels_must_be_integers() -> None:
    with pytest.raises(ConfigError, match="labels"):
        partition(np.array([0.5, 1.5]), 1, "iid", seed=0)


# -- shards (FedAvg) ------------------------------------------------------------------------------


@pytest.mark.parametrize("per_partition", [1, 2, 4])
def test_shards_give_each_client_whole_single_class_shards(per_partition: int) -> None:
    """FedAvg's split: with classes a multiple of the shard size every shard is one class."""
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 200))
    parts = partition(labels, 10, "shards", seed=0, shards_per_partition=per_partition)
    _assert_valid(parts, 2000, 10)
    shard = 2000 // (10 * per_partition)
    assert [len(p) for p in parts] == [per_partition * shard] * 10
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(2000))
    hist = class_histogram(labels, parts, 10)
    assert ((hist % shard) == 0).all()  # whole shards of one class each
    assert all(np.count_nonzero(row) <= per_partition for row in hist)


def test_shards_with_uneven_classes(labels: np.ndarray) -> None:
    parts = partition(labels, 7, "shards", seed=3, shards_per_partition=3)
    _assert_valid(parts, len(labels), 7)
    shard = 2000 // 21  # 95; 5 rows are left out
    assert [len(p) for p in parts] == [3 * shard] * 7
    counts = np.bincount(labels, minlength=10)
    assert counts.min() >= shard  # so a shard straddles at most one class boundary
    hist = class_histogram(labels, parts, 10)
    assert all(np.count_nonzero(row) <= 2 * 3 for row in hist)
    # Far from IID: a client holds few classes.
    assert np.mean([np.count_nonzero(row) for row in hist]) < 5


def test_shards_depend_on_the_seed_alone() -> None:
    labels = np.repeat(np.arange(5), 40)
    a = partition(labels, 5, "shards", seed=1)
    b = partition(labels, 5, "shards", seed=1)
    assert _same(a, b)
    assert not _same(a, partition(labels, 5, "shards", seed=2))


# -- natural (one device per client) --------------------------------------------------------------


def test_natural_gives_device_k_to_client_k_mod_m() -> None:
    devices = np.array([30, 10, 20, 10, 40, 30, 50, 20, 10])  # sorted ids: 10 20 30 40 50
    labels = np.zeros(len(devices), dtype=np.int64)
    parts = partition(labels, 5, "natural", seed=0, groups=devices)
    assert [p.tolist() for p in parts] == [[1, 3, 8], [2, 7], [0, 5], [4], [6]]
    parts = partition(labels, 2, "natural", seed=0, groups=devices)
    # devices 10, 30, 50 -> client 0; 20, 40 -> client 1
    assert [p.tolist() for p in parts] == [[0, 1, 3, 5, 6, 8], [2, 4, 7]]


def test_natural_takes_a_torch_group_column(labels: np.ndarray, groups: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    parts = partition(labels, 25, "natural", seed=0, groups=torch.from_numpy(groups))
    _assert_valid(parts, len(labels), 25)
    assert [len(np.unique(groups[p])) for p in parts] == [1] * 25  # one device per client
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))


def test_natural_with_more_clients_than_devices_is_refused(
    labels: np.ndarray, groups: np.ndarray
) -> None:
    with pytest.raises(ConfigError, match=r"1\.\.25 \(the number of devices\)") as info:
        partition(labels, 26, "natural", seed=0, groups=groups)
    assert info.value.parameter == "num_partitions"


# -- plot_histogram -------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".pdf"])
def test_plot_histogram_writes_a_file(labels: np.ndarray, tmp_path, suffix: str) -> None:
    hist = class_histogram(labels, partition(labels, 6, "dirichlet", seed=0, alpha=0.3), 10)
    path = plot_histogram(hist, tmp_path / "figures" / f"split{suffix}", title="Dirichlet 0.3")
    assert path == tmp_path / "figures" / f"split{suffix}"
    data = path.read_bytes()
    assert len(data) > 1000
    assert data.startswith(b"\x89PNG" if suffix == ".png" else b"%PDF")


def test_plot_histogram_with_many_classes(tmp_path) -> None:
    hist = np.random.default_rng(0).integers(0, 9, size=(40, 30))
    assert plot_histogram(hist, str(tmp_path / "h.png")).stat().st_size > 1000


@pytest.mark.parametrize(
    ("hist", "name", "parameter"),
    [
        (np.zeros(3), "h.png", "hist"),
        (np.zeros((0, 3)), "h.png", "hist"),
        (-np.ones((2, 3)), "h.png", "hist"),
        (np.ones((2, 3)), "h.svg", "path"),
        (np.ones((2, 3)), "h", "path"),
    ],
)
def test_plot_histogram_refuses_bad_input(
    tmp_path, hist: np.ndarray, name: str, parameter: str
) -> None:
    with pytest.raises(ConfigError) as info:
        plot_histogram(hist, tmp_path / name)
    assert info.value.parameter == parameter
    assert not (tmp_path / name).exists()
