"""The run configuration: every hyperparameter, its default, and its check.

The keys are those of ``[tool.flwr.app.config]`` in pyproject.toml and of ``--run-config``
(dashes, as Flower writes them). Parsing refuses unknown keys, wrong types and values out of
range with a `ConfigError`, so a typo fails at start-up instead of after an hour of training.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from itertools import pairwise
from typing import Any

from fedcoop.errors import ConfigError
from fedcoop.links import parse_link
from fedcoop.round_schedule import parse_taus
from fedcoop.topology import TOPOLOGIES, WEIGHTINGS

#: Config values that mean "the algorithm's own default from the papers".
AUTO = "auto"
_NUMBER_OR_AUTO = frozenset({"alpha", "anchor_momentum"})
LR_SCHEDULES = ("constant", "paper")
#: tau-schedule values besides a list of taus
TAU_SCHEDULES = ("fixed", "adacomm")
STEP_TIME_DISTRIBUTIONS = ("constant", "exponential", "lognormal")
#: The dense (m+v) x (m+v) mixing matrix and its eigenvalues grow as m^2 and m^3: beyond this
#: many workers a run cannot even build W (num-clients = 10**9 would ask for 8 EB).
MAX_CLIENTS = 10_000
#: torch.manual_seed takes at most a signed 64-bit seed, numpy's SeedSequence no negative one.
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class RunConfig:
    """One run, fully specified. Field names are the config keys with '-' -> '_'."""

    #: the algorithm, by its name in the README's table (fedcoop.algorithms)
    algorithm: str = "local-sgd"
    #: m, the number of workers (= simulated SuperNodes)
    num_clients: int = 8
    #: communication rounds; one round is tau local steps on every worker and one sync
    num_rounds: int = 20
    #: local SGD steps per round (sync forces 1); adacomm's tau_0
    tau: int = 4
    #: tau per round: "fixed" (tau every round), "adacomm" (AdaComm: tau recomputed from the
    #: training loss every adacomm-interval virtual seconds), or comma-separated taus
    #: ("8,4,2": round r takes the r-th, the last one repeating)
    tau_schedule: str = "fixed"
    #: adacomm: virtual seconds between updates of tau (T_0 of the paper)
    adacomm_interval: float = 10.0
    #: the local SGD learning rate (eta)
    lr: float = 0.05
    #: local SGD momentum (eamsgd: 0.9 if left at 0)
    momentum: float = 0.0
    #: Nesterov momentum for the local steps (needs momentum > 0)
    nesterov: bool = False
    #: local SGD weight decay
    weight_decay: float = 0.0
    #: samples per local step, per worker; 0 = full batch
    batch_size: int = 32
    #: pullback / elasticity; "auto": EASGD 2/(m+2) (Lemma 1), generalized elastic Lemma 2,
    #: overlap 0.6, hierarchical 1/(largest group + 1); EASGD needs 0 < alpha < 2/(m+1)
    alpha: float | str = AUTO
    #: the overlap paper's anchor momentum beta; "auto": 0.7 for overlap, 0 otherwise
    anchor_momentum: float | str = AUTO
    #: graph of dpsgd, matcha and generalized-elastic (fedcoop.topology)
    topology: str = "ring"
    #: dpsgd's W per round: "fixed", "random-matching" or "random-edge" (gossip over the
    #: topology's edges), or an .npz file or folder of W_r (docs/algorithms.md)
    topology_schedule: str = "fixed"
    #: matcha: the expected share of the graph's matchings activated per round, in (0, 1]
    comm_budget: float = 0.5
    #: how the graph's edges are weighted into W (fedcoop.topology)
    weighting: str = "metropolis-hastings"
    #: hierarchical: the number of groups of workers, one anchor each
    groups: int = 2
    #: "auto": the algorithm's rule; or "mix-after-step" (eq. 10) / "mix-before-step" (Remark 1)
    update_rule: str = AUTO
    #: cooperative: W as .npy or .csv, an absolute path
    matrix_file: str = ""
    #: cooperative: v, the number of auxiliary nodes in matrix-file
    num_aux: int = 0
    #: the data set (docs/data.md)
    dataset: str = "mnist-embedded"
    #: where image data sets live ("" = FEDCOOP_DATA, then the known offline locations)
    data_root: str = ""
    #: held-out share, for the data sets without an official split
    test_fraction: float = 0.2
    #: alpha of FedProx Synthetic(alpha, beta): how much the devices' models differ
    synthetic_alpha: float = 1.0
    #: beta of FedProx Synthetic(alpha, beta): how much the devices' inputs differ
    synthetic_beta: float = 1.0
    #: the model every worker trains (resnet18 and vgg16 in their CIFAR forms, vgg16 with
    #: BatchNorm)
    model: str = "cnn"
    #: how the training data is split over the workers (natural: one Synthetic device each)
    partition: str = "iid"
    #: dirichlet partition: concentration of each worker's class shares
    dirichlet_alpha: float = 0.5
    #: pathological partition: classes per worker
    classes_per_partition: int = 2
    #: skewed partition (the overlap paper's non-IID split): share of each worker's samples from its
    #: one major class
    major_fraction: float = 0.64
    #: shards partition: label-sorted shards per worker
    shards_per_partition: int = 2
    #: "constant", or "paper": linear warm-up then step decay (Goyal et al.; overlap paper)
    lr_schedule: str = "constant"
    #: the "paper" schedule's linear warm-up from lr, in epochs (one epoch is one pass over an
    #: average worker's shard)
    warmup_epochs: float = 5.0
    #: epochs (comma separated) at which the "paper" schedule multiplies lr by decay-factor
    decay_epochs: str = "150,250"
    #: the "paper" schedule's factor at each of decay-epochs
    decay_factor: float = 0.1
    #: multiply lr by num-clients (the linear scaling rule the papers' schedule uses)
    scale_lr_by_workers: bool = False
    #: seeds the data split, partitions, initial model, batches and augmentation
    seed: int = 0
    #: where each run writes its directory ("" = none)
    results_dir: str = "~/fedcoop-runs"
    #: seconds without any reply before the run stops with an error
    round_timeout: float = 600.0
    #: virtual clock: mean seconds of one local step on one worker
    step_time: float = 0.05
    #: virtual clock: distribution of a step's duration, same mean (docs/virtual-clock.md)
    step_time_distribution: str = "constant"
    #: virtual clock: sigma of the log-normal step time (stragglers)
    step_time_sigma: float = 0.5
    #: virtual clock: a link preset (fedcoop.links.LINK_PRESETS) or "<ms>ms/<mbit>mbit"
    #: (docs/virtual-clock.md)
    link: str = "datacenter-10g"
    #: share of the workers sampled (seeded by seed and the round) to train in each round
    participation: float = 1.0
    #: seconds a worker may take to answer a round before it is left out of it (0 = no limit)
    round_deadline: float = 0.0
    #: a worker answers each message with its previous round's model and runs the new
    #: round's local steps after answering, so its link works while it computes (rules
    #: whose workers read only auxiliary nodes: overlap, easgd, eamsgd, hierarchical, cocod;
    #: with participation 1 and no update-norm-bound; docs/deployment.md)
    eager_reply: bool = False
    #: share of a round's sampled workers that must answer, else the run stops naming every
    #: reason
    quorum: float = 0.5
    #: reject a model farther than this many times the round's median distance from the
    #: round's median model (0 = off)
    update_norm_bound: float = 0.0
    #: write the run directory's checkpoint after every this many rounds (0 = never; needs a
    #: results-dir)
    checkpoint_every: int = 1
    #: workers whose own final model is evaluated on the test set after the run, a seeded
    #: sample (0 = every worker): evaluating all m would cost m passes over the test set
    eval_workers: int = 100
    #: a run directory whose checkpoint this run continues, under the config it started with
    #: ("" = start afresh)
    resume: str = ""

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Parse Flower's run config (or any mapping with dashed or underscored keys)."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                valid = ", ".join(sorted(n.replace("_", "-") for n in known))
                raise ConfigError(key, value, f"unknown config key; valid keys: {valid}")
            kwargs[name] = _coerce(key, value, known[name])
        return cls(**kwargs).checked()

    def decay_epoch_list(self) -> tuple[float, ...]:
        """decay-epochs as numbers, strictly rising (as fedcoop.schedules needs them)."""
        try:
            epochs = tuple(float(e) for e in self.decay_epochs.split(",") if e.strip())
        except ValueError:
            epochs = (-1.0,)
        if not all(0 < e < math.inf for e in epochs) or any(b <= a for a, b in pairwise(epochs)):
            raise ConfigError(
                "decay-epochs", self.decay_epochs, 'strictly rising positive epochs, e.g. "150,250"'
            )
        return epochs

    def to_mapping(self) -> dict[str, Any]:
        """The config with Flower's dashed keys, for messages and results on disk."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed, checked again."""
        return dataclasses.replace(self, **changes).checked()

    def checked(self) -> RunConfig:
        """Range checks that do not depend on the algorithm (those live in algorithms.py)."""
        if not 1 <= self.num_clients <= MAX_CLIENTS:
            raise ConfigError("num-clients", self.num_clients, f"must be in 1..{MAX_CLIENTS}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError("seed", self.seed, f"must be in 0..2**63-1 = {MAX_SEED}")
        _at_least("num-rounds", self.num_rounds, 1)
        _at_least("tau", self.tau, 1)
        if self.tau_schedule not in TAU_SCHEDULES:
            parse_taus(self.tau_schedule)  # refuses anything but integers >= 1
        if not 0 < self.adacomm_interval < math.inf:
            raise ConfigError(
                "adacomm-interval", self.adacomm_interval, "must be virtual seconds > 0"
            )
        if not 0 < self.comm_budget <= 1:
            raise ConfigError("comm-budget", self.comm_budget, "must be in (0, 1]")
        _at_least("batch-size", self.batch_size, 0)
        _at_least("groups", self.groups, 1)
        _at_least("num-aux", self.num_aux, 0)
        _at_least("classes-per-partition", self.classes_per_partition, 1)
        _at_least("shards-per-partition", self.shards_per_partition, 1)
        for key, names in (
            ("lr-schedule", LR_SCHEDULES),
            ("step-time-distribution", STEP_TIME_DISTRIBUTIONS),
            # Checked even where the algorithm has no graph, so that a typo never passes.
            ("topology", TOPOLOGIES),
            ("weighting", WEIGHTINGS),
        ):
            value = getattr(self, key.replace("-", "_"))
            if value not in names:
                raise ConfigError(key, value, f"one of {', '.join(names)}")
        if not 0 <= self.warmup_epochs < math.inf:
            raise ConfigError("warmup-epochs", self.warmup_epochs, "must be a finite number >= 0")
        if not 0 < self.decay_factor <= 1:
            raise ConfigError("decay-factor", self.decay_factor, "must be in (0, 1]")
        epochs = self.decay_epoch_list()
        # The clients build the schedule only once training runs; refuse its clash here.
        if self.lr_schedule == "paper" and epochs and epochs[0] < self.warmup_epochs:
            raise ConfigError(
                "decay-epochs",
                self.decay_epochs,
                f"must not fall inside the warm-up: each epoch >= warmup-epochs = "
                f"{self.warmup_epochs:g}",
            )
        for key in ("synthetic_alpha", "synthetic_beta"):
            if not getattr(self, key) >= 0:
                raise ConfigError(key.replace("_", "-"), getattr(self, key), "must be >= 0")
        if not 0 < self.lr < math.inf:
            raise ConfigError("lr", self.lr, "must be a finite number > 0")
        if not 0 <= self.momentum < 1:
            raise ConfigError("momentum", self.momentum, "must be in [0, 1)")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov", True, "needs momentum > 0")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError("weight-decay", self.weight_decay, "must be a finite number >= 0")
        if not 0 < self.test_fraction < 1:
            raise ConfigError("test-fraction", self.test_fraction, "must be in (0, 1)")
        if not self.dirichlet_alpha > 0:
            raise ConfigError("dirichlet-alpha", self.dirichlet_alpha, "must be > 0")
        if not 0 < self.major_fraction <= 1:
            raise ConfigError("major-fraction", self.major_fraction, "must be in (0, 1]")
        if not self.round_timeout > 0:
            raise ConfigError("round-timeout", self.round_timeout, "must be > 0 seconds")
        if not 0 <= self.step_time < math.inf:
            raise ConfigError("step-time", self.step_time, "must be a finite number >= 0 seconds")
        if not 0 <= self.step_time_sigma < math.inf:
            raise ConfigError(
                "step-time-sigma", self.step_time_sigma, "must be a finite number >= 0"
            )
        parse_link(self.link)  # refuses an unknown preset or a malformed "<ms>ms/<mbit>mbit"
        if not 0 < self.participation <= 1:
            raise ConfigError("participation", self.participation, "must be in (0, 1]")
        if not self.round_deadline >= 0:
            raise ConfigError("round-deadline", self.round_deadline, "seconds >= 0 (0 = none)")
        if not 0 < self.quorum <= 1:
            raise ConfigError("quorum", self.quorum, "must be in (0, 1]")
        if not self.update_norm_bound >= 0:
            raise ConfigError("update-norm-bound", self.update_norm_bound, "must be >= 0 (0 = off)")
        _at_least("checkpoint-every", self.checkpoint_every, 0)
        _at_least("eval-workers", self.eval_workers, 0)
        for key in _NUMBER_OR_AUTO:
            value = getattr(self, key)
            if isinstance(value, str) and value != AUTO:
                raise ConfigError(key.replace("_", "-"), value, f'must be a number or "{AUTO}"')
        return self


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(name, value, f"must be an integer >= {low}")


def _coerce(key: str, value: Any, spec: dataclasses.Field[Any]) -> Any:
    """Accept what TOML and --run-config produce (ints for floats, 'auto' for numbers)."""
    default = spec.default
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(key, value, "must be true or false")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(key, value, "must be an integer")
    numeric_or_auto = spec.name in _NUMBER_OR_AUTO
    if isinstance(default, float) or numeric_or_auto:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if numeric_or_auto and value == AUTO:
            return value
        valid = f'a number or "{AUTO}"' if numeric_or_auto else "a number"
        raise ConfigError(key, value, f"must be {valid}")
    if isinstance(value, str):
        return value
    raise ConfigError(key, value, "must be a string")
