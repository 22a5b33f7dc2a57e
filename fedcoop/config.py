"""The run configuration: every hyperparameter, its default, its meaning and its valid values.

The keys are those of ``[tool.flwr.app.config]`` in pyproject.toml and of ``--run-config``
(dashes, as Flower writes them). Parsing refuses unknown keys, wrong types and values out of
range with a `ConfigError`, so a typo fails at start-up instead of after an hour of training.
Each field declares its constraint (fedcoop.constraints) and the cross-key ones are `RULES`:
`RunConfig.checked`, docs/configuration.md (simulations.configdoc) and the property tests
all read that one table. That table, one declaration per key (61 keys), is why the
module runs past 500 lines: split by topic, the checks and docs would read several tables.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from itertools import pairwise
from typing import Any

from fedcoop import devices
from fedcoop.constraints import (
    Interval,
    IntRange,
    NumberOr,
    OneOf,
    Parsed,
    Registry,
    Rule,
    Setting,
    key_of,
    setting,
    setting_of,
    validate,
)
from fedcoop.errors import ConfigError
from fedcoop.links import LINK_PRESETS, parse_link
from fedcoop.round_schedule import parse_taus
from fedcoop.topology import TOPOLOGIES, WEIGHTINGS

#: Config values that mean "the algorithm's own default from the papers".
AUTO = "auto"
LR_SCHEDULES = ("constant", "paper")
#: tau-schedule values besides a list of taus
TAU_SCHEDULES = ("fixed", "adacomm")
#: bn-stats: BatchNorm buffers mixed with the parameters, or kept on each worker
BN_STATS = ("mixed", "local")
STEP_TIME_DISTRIBUTIONS = ("constant", "exponential", "lognormal")
#: The dense (m+v) x (m+v) mixing matrix and its eigenvalues grow as m^2 and m^3: beyond this
#: many workers a run cannot even build W (num-clients = 10**9 would ask for 8 EB).
MAX_CLIENTS = 10_000
#: torch.manual_seed takes at most a signed 64-bit seed, numpy's SeedSequence no negative one.
MAX_SEED = 2**63 - 1
#: What the parsed keys accept, in words (their parsers' errors say it their own way).
TAU_SCHEDULE_TEXT = f'{", ".join(TAU_SCHEDULES)} or comma-separated integers >= 1, e.g. "8,4,2"'
DECAY_EPOCHS_TEXT = 'strictly rising positive epochs, e.g. "150,250"'
STRATEGY_ARGS_TEXT = 'a JSON object of keyword arguments, e.g. {"eta": 0.01}'
CLIENT_MODS_TEXT = 'comma-separated names of flwr.clientapp.mod, e.g. "fixedclipping_mod"'
LINK_TEXT = f"{', '.join(LINK_PRESETS)} or '<ms>ms/<mbit>mbit'"


def _tau_schedule(text: str) -> object:
    """A tau-schedule's name, else its list of taus (parse_taus refuses anything else)."""
    return text if text in TAU_SCHEDULES else parse_taus(text)


def parse_strategy_args(text: str) -> dict[str, Any]:
    """strategy-args as keyword arguments: a JSON object (TOML and --run-config values are
    flat, and a stock strategy's arguments are a table), its keys with dashes or
    underscores."""
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise ConfigError("strategy-args", text, STRATEGY_ARGS_TEXT)
    return {k.replace("-", "_"): v for k, v in value.items()}


def parse_client_mods(text: str) -> tuple[str, ...]:
    """client-mods as names, in order (the client layer looks them up in Flower)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not all(name.isidentifier() for name in names):
        raise ConfigError("client-mods", text, CLIENT_MODS_TEXT)
    return names


def _device_speeds(text: str) -> str:
    """device-speeds' form (a CSV's rows are read when the run resolves them, for its m)."""
    name, _, rest = text.partition(":")
    known = text == "equal" or text.endswith(".csv") or (name in ("lognormal", "uniform") and rest)
    if not known:
        raise ConfigError("device-speeds", text, devices.TEXT)
    return text


def parse_decay_epochs(text: str) -> tuple[float, ...]:
    """decay-epochs as numbers, strictly rising (as fedcoop.lr needs them)."""
    try:
        epochs = tuple(float(e) for e in text.split(",") if e.strip())
    except ValueError:
        epochs = (-1.0,)
    if not all(0 < e < math.inf for e in epochs) or any(b <= a for a, b in pairwise(epochs)):
        raise ConfigError("decay-epochs", text, DECAY_EPOCHS_TEXT)
    return epochs


@dataclass(frozen=True)
class RunConfig:
    """One run, fully specified. Field names are the config keys with '-' -> '_'.

    Its 400-odd lines are the declared table itself, one `setting` (default, constraint, doc)
    per key, which the checks, docs/configuration.md and the property tests all read.
    """

    algorithm: str = setting(
        "local-sgd",
        Registry("fedcoop.algorithms", "ALGORITHMS"),
        doc=(
            "the algorithm, by its name in the README's table (fedcoop.algorithms), or "
            '"flower:<Strategy>", a stock strategy of flwr.serverapp.strategy (FedAdam, ...) '
            "on fedcoop's clients (docs/algorithms.md)"
        ),
    )
    strategy_args: str = setting(
        "{}",
        Parsed(parse_strategy_args, STRATEGY_ARGS_TEXT),
        doc=(
            "flower:<Strategy>: its keyword arguments as a JSON object, e.g. "
            '{"eta": 0.01, "fraction-evaluate": 0.1}; a DP wrapper\'s inner strategy is '
            '"strategy": "FedAvg" or {"name": "FedAdam", ...} (docs/algorithms.md)'
        ),
    )
    client_mods: str = setting(
        "",
        Parsed(parse_client_mods, CLIENT_MODS_TEXT),
        doc=(
            "flower:<Strategy>: Flower mods (flwr.clientapp.mod) wrapped, in order, around "
            'each worker\'s train handler, e.g. "fixedclipping_mod" for '
            "DifferentialPrivacyClientSideFixedClipping"
        ),
    )
    num_clients: int = setting(
        8, IntRange(1, MAX_CLIENTS), doc="m, the number of workers (= simulated SuperNodes)"
    )
    num_rounds: int = setting(
        20,
        IntRange(1),
        doc="communication rounds; one round is tau local steps on every worker and one sync",
    )
    tau: int = setting(
        4, IntRange(1), doc="local SGD steps per round (sync forces 1); adacomm's tau_0"
    )
    tau_schedule: str = setting(
        "fixed",
        Parsed(_tau_schedule, TAU_SCHEDULE_TEXT),
        doc=(
            'tau per round: "fixed" (tau every round), "adacomm" (AdaComm: tau recomputed from '
            "the training loss every adacomm-interval virtual seconds), or comma-separated taus "
            '("8,4,2": round r takes the r-th, the last one repeating)'
        ),
    )
    adacomm_interval: float = setting(
        10.0,
        Interval(0, closed="neither", unit="virtual seconds"),
        doc="adacomm: virtual seconds between updates of tau (T_0 of the paper)",
    )
    lr: float = setting(
        0.05, Interval(0, closed="neither"), doc="the local SGD learning rate (eta)"
    )
    momentum: float = setting(
        0.0, Interval(0, 1, closed="left"), doc="local SGD momentum (eamsgd: 0.9 if left at 0)"
    )
    nesterov: bool = setting(
        False, doc="Nesterov momentum for the local steps (needs momentum > 0)"
    )
    weight_decay: float = setting(0.0, Interval(0, closed="left"), doc="local SGD weight decay")
    global_lr: float = setting(
        1.0,
        Interval(0, closed="neither"),
        doc=(
            "scaffold: the server's global step size eta_g, x <- x + eta_g mean(y_i - x) "
            "(1 = the plain average)"
        ),
    )
    prox_mu: float = setting(
        0.0,
        Interval(0, closed="left"),
        doc="FedProx's proximal term: each local step adds prox-mu (x - x_t), x_t the "
        "worker's model at the round's start; 0 = off (fedprox: 0.01)",
    )
    batch_size: int = setting(
        32, IntRange(0), doc="samples per local step, per worker; 0 = full batch"
    )
    alpha: float | str = setting(
        AUTO,
        NumberOr((AUTO,)),
        doc=(
            'pullback / elasticity; "auto": EASGD 2/(m+2) (Lemma 1), generalized elastic Lemma '
            "2, overlap 0.6, hierarchical 1/(largest group + 1); EASGD needs 0 < alpha < 2/(m+1)"
        ),
    )
    anchor_momentum: float | str = setting(
        AUTO,
        NumberOr((AUTO,)),
        doc='the overlap paper\'s anchor momentum beta; "auto": 0.7 for overlap, 0 otherwise',
    )
    topology: str = setting(
        "ring",
        OneOf(TOPOLOGIES),
        doc="graph of dpsgd, matcha and generalized-elastic (fedcoop.topology)",
    )
    topology_schedule: str = setting(
        "fixed",
        doc=(
            'dpsgd\'s W per round: "fixed", "random-matching" or "random-edge" (gossip over the '
            "topology's edges), or an .npz file or folder of W_r (docs/algorithms.md)"
        ),
    )
    comm_budget: float = setting(
        0.5,
        Interval(0, 1, closed="right"),
        doc="matcha: the expected share of the graph's matchings activated per round, in (0, 1]",
    )
    weighting: str = setting(
        "metropolis-hastings",
        OneOf(WEIGHTINGS),
        doc="how the graph's edges are weighted into W (fedcoop.topology)",
    )
    groups: int = setting(
        2, IntRange(1), doc="hierarchical: the number of groups of workers, one anchor each"
    )
    update_rule: str = setting(
        AUTO,
        Registry("fedcoop.spec", "UpdateRule", also=(AUTO,)),
        doc=(
            '"auto": the algorithm\'s rule; or "mix-after-step" (eq. 10) / "mix-before-step" '
            "(Remark 1)"
        ),
    )
    matrix_file: str = setting("", doc="cooperative: W as .npy or .csv, an absolute path")
    num_aux: int = setting(
        0, IntRange(0), doc="cooperative: v, the number of auxiliary nodes in matrix-file"
    )
    dataset: str = setting(
        "mnist-embedded", Registry("fedcoop.data", "DATASETS"), doc="the data set (docs/data.md)"
    )
    data_root: str = setting(
        "",
        doc='where image data sets live ("" = FEDCOOP_DATA, then the known offline locations)',
    )
    test_fraction: float = setting(
        0.2,
        Interval(0, 1, closed="neither"),
        doc="held-out share, for the data sets without an official split",
    )
    synthetic_alpha: float = setting(
        1.0,
        Interval(0),
        doc="alpha of FedProx Synthetic(alpha, beta): how much the devices' models differ",
    )
    synthetic_beta: float = setting(
        1.0,
        Interval(0),
        doc="beta of FedProx Synthetic(alpha, beta): how much the devices' inputs differ",
    )
    model: str = setting(
        "cnn",
        Registry("fedcoop.models", "MODELS"),
        doc=(
            "the model every worker trains (resnet18 and vgg16 in their CIFAR forms, vgg16 with "
            "BatchNorm; resnet8, resnet20 and bn-mlp: BatchNorm models small enough for a CPU)"
        ),
    )
    bn_stats: str = setting(
        "mixed",
        OneOf(BN_STATS),
        doc=(
            'BatchNorm running statistics (a model\'s buffers): "mixed" with the parameters '
            '(the matrix rule on the whole state), or "local": each worker keeps its own, as '
            "the overlap paper's code does (docs/algorithms.md#batchnorm-statistics)"
        ),
    )
    partition: str = setting(
        "iid",
        Registry("fedcoop.partitions", "SCHEMES"),
        doc="how the training data is split over the workers (natural: one Synthetic device each)",
    )
    dirichlet_alpha: float = setting(
        0.5,
        Interval(0, closed="right"),
        doc="dirichlet partition: concentration of each worker's class shares",
    )
    classes_per_partition: int = setting(
        2, IntRange(1), doc="pathological partition: classes per worker"
    )
    major_fraction: float = setting(
        0.64,
        Interval(0, 1, closed="right"),
        doc=(
            "skewed partition (the overlap paper's non-IID split): share of each worker's "
            "samples from its one major class"
        ),
    )
    shards_per_partition: int = setting(
        2, IntRange(1), doc="shards partition: label-sorted shards per worker"
    )
    lr_schedule: str = setting(
        "constant",
        OneOf(LR_SCHEDULES),
        doc='"constant", or "paper": linear warm-up then step decay (Goyal et al.; overlap paper)',
    )
    warmup_epochs: float = setting(
        5.0,
        Interval(0, closed="left"),
        doc=(
            'the "paper" schedule\'s linear warm-up from lr, in epochs (one epoch is one pass '
            "over an average worker's shard)"
        ),
    )
    decay_epochs: str = setting(
        "150,250",
        Parsed(parse_decay_epochs, DECAY_EPOCHS_TEXT),
        doc='epochs (comma separated) at which the "paper" schedule multiplies lr by decay-factor',
    )
    decay_factor: float = setting(
        0.1,
        Interval(0, 1, closed="right"),
        doc='the "paper" schedule\'s factor at each of decay-epochs',
    )
    scale_lr_by_workers: bool = setting(
        False, doc="multiply lr by num-clients (the linear scaling rule the papers' schedule uses)"
    )
    seed: int = setting(
        0,
        IntRange(0, MAX_SEED),
        doc="seeds the data split, partitions, initial model, batches and augmentation",
    )
    results_dir: str = setting(
        "~/fedcoop-runs",
        doc='where each run writes its directory ("" = none)',
    )
    round_timeout: float = setting(
        600.0,
        Interval(0, closed="right", unit="seconds"),
        doc="seconds without any reply before the run stops with an error",
    )
    step_time: float = setting(
        0.05,
        Interval(0, closed="left", unit="seconds"),
        doc="virtual clock: mean seconds of one local step on one worker",
    )
    step_time_distribution: str = setting(
        "constant",
        OneOf(STEP_TIME_DISTRIBUTIONS),
        doc="virtual clock: distribution of a step's duration, same mean (docs/virtual-clock.md)",
    )
    step_time_sigma: float = setting(
        0.5,
        Interval(0, closed="left"),
        doc="virtual clock: sigma of the log-normal step time (stragglers)",
    )
    device_speeds: str = setting(
        "equal",
        Parsed(_device_speeds, devices.TEXT),
        doc=(
            "each worker's compute speed relative to step-time: equal, lognormal:<sigma> "
            "(mean 1), uniform:<low>:<high> (seeded by seed), or a CSV of worker,speed rows "
            "(docs/non-iid-baselines.md#devices-that-differ)"
        ),
    )
    round_time: float = setting(
        0.0,
        Interval(0, unit="virtual seconds", note="0 = off"),
        doc=(
            "a round's compute budget: worker i runs max(1, floor(round-time x speed_i / "
            "step-time)) local steps instead of tau (fedavg, local-sgd, fedprox, scaffold, "
            "fednova; 0 = every worker runs tau)"
        ),
    )
    link: str = setting(
        "datacenter-10g",
        Parsed(parse_link, LINK_TEXT),
        doc=(
            'virtual clock: a link preset (fedcoop.links.LINK_PRESETS) or "<ms>ms/<mbit>mbit" '
            "(docs/virtual-clock.md)"
        ),
    )
    participation: float = setting(
        1.0,
        Interval(0, 1, closed="right"),
        doc="share of the workers sampled (seeded by seed and the round) to train in each round",
    )
    round_deadline: float = setting(
        0.0,
        Interval(0, unit="seconds", note="0 = none"),
        doc=(
            "seconds a worker may take to answer a round before it is left out of it (0 = no limit)"
        ),
    )
    eager_reply: bool = setting(
        False,
        doc=(
            "a worker answers each message with its previous round's model and runs the new "
            "round's local steps after answering, so its link works while it computes (rules "
            "whose workers read only auxiliary nodes: overlap, easgd, eamsgd, hierarchical, "
            "cocod; with participation 1 and no update-norm-bound; docs/deployment.md)"
        ),
    )
    quorum: float = setting(
        0.5,
        Interval(0, 1, closed="right"),
        doc=(
            "share of a round's sampled workers that must answer, else the run stops naming "
            "every reason"
        ),
    )
    update_norm_bound: float = setting(
        0.0,
        Interval(0, note="0 = off"),
        doc=(
            "reject a model farther than this many times the round's median distance from the "
            "round's median model (0 = off)"
        ),
    )
    checkpoint_every: int = setting(
        1,
        IntRange(0),
        doc=(
            "write the run directory's checkpoint after every this many rounds (0 = never; needs "
            "a results-dir)"
        ),
    )
    eval_workers: int = setting(
        100,
        IntRange(0),
        doc=(
            "workers whose own final model is evaluated after the run, a seeded sample (0 = "
            "every worker): evaluating all m would cost m passes over the evaluation sample"
        ),
    )
    eval_local_workers: int = setting(
        0,
        IntRange(0),
        doc=(
            "workers, drawn once per run (seeded), whose own model is evaluated on the "
            "eval-samples sample after every round they train, with its own BatchNorm "
            "statistics: the round's local-test-loss and local-test-accuracy are their mean "
            "(0 = off; the overlap paper's authors evaluate every node's model)"
        ),
    )
    eval_samples: int = setting(
        1000,
        IntRange(0),
        doc=(
            "test examples those final models are evaluated on, one seeded sample shared by "
            "every worker (0 = the whole test set); 1,000 puts an accuracy's standard error "
            "under 1.6 points at a tenth of the cost of MNIST's 10,000"
        ),
    )
    resume: str = setting(
        "",
        doc=(
            "a run directory whose checkpoint this run continues, under the config it started "
            'with ("" = start afresh)'
        ),
    )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Parse Flower's run config (or any mapping with dashed or underscored keys)."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                valid = ", ".join(sorted(key_of(n) for n in known))
                raise ConfigError(key, value, f"unknown config key; valid keys: {valid}")
            kwargs[name] = _coerce(key, value, known[name])
        return cls(**kwargs).checked()

    def decay_epoch_list(self) -> tuple[float, ...]:
        """This config's decay-epochs, parsed (`parse_decay_epochs`)."""
        return parse_decay_epochs(self.decay_epochs)

    def to_mapping(self) -> dict[str, Any]:
        """The config with Flower's dashed keys, for messages and results on disk."""
        return {key_of(k): v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed, checked again."""
        return dataclasses.replace(self, **changes).checked()

    def checked(self) -> RunConfig:
        """Every field against its declared constraint, then `RULES` (the checks that depend
        on the algorithm live in algorithms.py)."""
        validate(self, RULES)
        return self


#: Constraints across keys; each error names the first field, the one to change. Checked
#: here although the clients build the lr schedule only once training runs, so that the
#: clash is refused at start-up.
RULES: tuple[Rule, ...] = (
    Rule(
        ("nesterov", "momentum"),
        lambda nesterov, momentum: not nesterov or momentum != 0,
        "needs momentum > 0",
    ),
    Rule(
        ("decay_epochs", "lr_schedule", "warmup_epochs"),
        lambda epochs, schedule, warmup: (
            schedule != "paper" or all(e >= warmup for e in parse_decay_epochs(epochs))
        ),
        "must not fall inside the warm-up: each epoch >= warmup-epochs = {warmup_epochs:g}",
        doc='with lr-schedule "paper": each epoch >= warmup-epochs',
    ),
    Rule(
        ("round_time", "step_time"),
        lambda round_time, step_time: not round_time or step_time > 0,
        "needs step-time > 0: a worker's steps are the budget over its step time",
    ),
    Rule(
        ("batch_size", "model"),
        lambda batch_size, model: batch_size != 1 or model != "bn-mlp",
        "must be 0 or at least 2 for model = bn-mlp: BatchNorm1d normalises each feature over "
        "the batch, which takes two samples",
        doc="with model = bn-mlp: not 1",
    ),
)
#: Each field's type, resolved from its annotation: what from_mapping coerces a value to.
TYPES: dict[str, Any] = typing.get_type_hints(RunConfig)
#: Each key's declared `Setting`, in field order.
SETTINGS: dict[str, Setting] = {key_of(f.name): setting_of(f) for f in fields(RunConfig)}


def check_value(key: str, value: Any) -> None:
    """Refuse `value` for `key` as RunConfig.checked does, for code that takes a key's value
    on its own (fedcoop.clock.StepTime)."""
    constraint = SETTINGS[key].constraint
    if constraint is not None:
        constraint.check(key, value)


def _coerce(key: str, value: Any, spec: dataclasses.Field[Any]) -> Any:
    """Accept what TOML and --run-config produce (ints for floats, 'auto' for numbers)."""
    kind = TYPES[spec.name]
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, value, "must be true or false")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(key, value, "must be an integer")
    if kind is float:
        if number:
            return float(value)
        raise ConfigError(key, value, "must be a number")
    if kind == float | str:  # a number or a word, which checked() then holds to the constraint
        if number:
            return float(value)
        if isinstance(value, str):
            return value
        constraint = SETTINGS[key_of(spec.name)].constraint
        raise ConfigError(key, value, f"must be {constraint.describe() if constraint else kind}")
    if isinstance(value, str):
        return value
    raise ConfigError(key, value, "must be a string")
