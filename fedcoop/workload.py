"""What a run config asks each worker to train on: the data split, its shard, the schedule.

Everything here is a function of the config alone (and the partition id), so the server, every
client process and the benchmarks derive the same data and learning rates without exchanging
them; results are cached per process because clients ask on every message.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from fedcoop import augment, data, lr, models, participation, partitions
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError

#: The config key of each argument of partitions.partition whose name differs from it.
_PARTITION_KEYS = {
    "scheme": "partition",
    "num_partitions": "num-clients",
    "alpha": "dirichlet-alpha",
}


def load_split(config: RunConfig) -> tuple[data.ArrayDataset, data.ArrayDataset]:
    """(train, test) of the config's data set."""
    return _load_split(
        config.dataset,
        config.seed,
        config.test_fraction,
        config.data_root,
        config.synthetic_alpha,
        config.synthetic_beta,
    )


@lru_cache(maxsize=8)
def _load_split(
    name: str, seed: int, test_fraction: float, root: str, alpha: float, beta: float
) -> tuple[data.ArrayDataset, data.ArrayDataset]:
    return data.load_dataset(
        name,
        seed=seed,
        test_fraction=test_fraction,
        root=root or None,
        synthetic_alpha=alpha,
        synthetic_beta=beta,
    )


#: The config keys a worker's data depends on: the caches below are keyed on these alone,
#: so a sweep over algorithms, tau or lr shares one copy of each shard.
_DATA_KEYS = (
    "dataset",
    "seed",
    "test_fraction",
    "data_root",
    "synthetic_alpha",
    "synthetic_beta",
    "partition",
    "dirichlet_alpha",
    "classes_per_partition",
    "major_fraction",
    "shards_per_partition",
)


def _data_part(config: RunConfig) -> RunConfig:
    return RunConfig(**{key: getattr(config, key) for key in _DATA_KEYS})


def partition_indices(config: RunConfig, num_partitions: int) -> tuple[np.ndarray, ...]:
    """Every worker's sample indices into the training set."""
    return _partition_indices(_data_part(config), num_partitions)


@lru_cache(maxsize=8)
def _partition_indices(config: RunConfig, num_partitions: int) -> tuple[np.ndarray, ...]:
    train, _ = load_split(config)
    labels = train.y.numpy()
    if train.y.is_floating_point():
        if config.partition != "iid":
            raise ConfigError("partition", config.partition, "regression data needs iid")
        labels = np.zeros(len(labels), dtype=np.int64)
    try:
        parts = partitions.partition(
            labels,
            num_partitions,
            config.partition,
            seed=config.seed,
            alpha=config.dirichlet_alpha,
            classes_per_partition=config.classes_per_partition,
            major_fraction=config.major_fraction,
            shards_per_partition=config.shards_per_partition,
            groups=None if train.group is None else train.group.numpy(),
        )
    except ConfigError as error:
        # partitions names its own arguments; the user wrote config keys.
        key = _PARTITION_KEYS.get(error.parameter, error.parameter.replace("_", "-"))
        raise ConfigError(key, error.value, error.valid) from None
    return tuple(parts)


def shard(config: RunConfig, partition_id: int, num_partitions: int) -> data.ArrayDataset:
    """Worker `partition_id`'s share of the training set."""
    return _shard(_data_part(config), partition_id, num_partitions)


# Bounded: all m shards would be a second copy of the training set (164 MB of Fashion-MNIST
# at m = 1,000), while a round needs only its cohort's, the workers a process keeps alive hold
# theirs, and a shard evicted is rebuilt by one gather of its rows (microseconds for the small
# shards of many clients; the few large shards of a small m all stay).
@lru_cache(maxsize=256)
def _shard(config: RunConfig, partition_id: int, num_partitions: int) -> data.ArrayDataset:
    train, _ = load_split(config)
    return train.subset(partition_indices(config, num_partitions)[partition_id])


#: the stream of `eval_sample`'s seed (apart from the partitions' and the batches')
_EVAL_STREAM = 0x6576616C


def eval_sample(config: RunConfig) -> data.ArrayDataset:
    """The test examples each worker's own final model is evaluated on (`eval-samples`): one
    seeded sample, the same for every worker so that their results pair up; the whole test
    set when eval-samples is 0 or not below its size."""
    return _eval_sample(_data_part(config), config.eval_samples)


@lru_cache(maxsize=8)
def _eval_sample(config: RunConfig, size: int) -> data.ArrayDataset:
    _, test = load_split(config)
    if size == 0 or size >= len(test):
        return test
    rng = np.random.default_rng([config.seed, _EVAL_STREAM])
    return test.subset(np.sort(rng.choice(len(test), size=size, replace=False)))


def evaluated_locally(config: RunConfig, worker: int) -> bool:
    """Whether `worker` is one of the eval-local-workers whose own model is evaluated after
    each round it trains: a seeded draw, the same on the server and on every worker."""
    return worker in _locally_evaluated(config.seed, config.num_clients, config.eval_local_workers)


@lru_cache(maxsize=8)
def _locally_evaluated(seed: int, m: int, size: int) -> frozenset[int]:
    return frozenset(participation.subset(seed, range(m), size)) if size else frozenset()


def clear_caches() -> None:
    """Forget cached splits, partitions, shards and samples (a fresh process's view)."""
    for cached in (_load_split, _partition_indices, _shard, _eval_sample):
        cached.cache_clear()


def build_model(config: RunConfig) -> torch.nn.Module:
    """The config's model, sized by the whole training set (a worker's shard may lack classes,
    and every worker and the server must hold vectors of one layout)."""
    train, _ = load_split(config)
    return models.build_for(config.model, train, num_classes=train.num_classes)


def schedule(config: RunConfig) -> lr.LRSchedule:
    """The learning rate per global local step (counted from 1) for every worker.

    An epoch is one pass over an average worker's shard, the same for all workers, so that
    workers holding different amounts of data still share one schedule.
    """
    m = config.num_clients
    if config.lr_schedule == "constant":
        return lr.constant(config.lr * (m if config.scale_lr_by_workers else 1))
    train, _ = load_split(config)
    batch = config.batch_size or math.ceil(len(train) / m)
    return lr.paper_schedule(
        m,
        max(1, math.ceil(len(train) / m / batch)),
        base_lr=config.lr,
        warmup_epochs=config.warmup_epochs,
        decay_epochs=config.decay_epoch_list(),
        decay_factor=config.decay_factor,
        scale_by_workers=config.scale_lr_by_workers,
    )


def augmentation(config: RunConfig) -> augment.Augmentation | None:
    """The training-time augmentation of the config's data set, if it has one."""
    return augment.augmentation_for(config.dataset)


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded from several integers (seed, worker, round)."""
    state = np.random.SeedSequence(list(keys)).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))
