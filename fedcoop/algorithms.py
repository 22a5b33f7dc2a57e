"""Every named algorithm of both papers as one declaration over A(tau, W, v).

A declaration says which matrix, how many auxiliary nodes, which update rule and which
client rule; nothing else differs between algorithms, so nothing else is implemented per
algorithm. `resolve` turns a run config into the `CooperativeSpec` that the server and the
clients execute, and `local_optimizer` declares the workers' local optimizer a config asks
for (fedcoop.optimizers), with the momentum an algorithm implies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from fedcoop import devices, gossip, matcha, mixing, optimizers, participation, topology
from fedcoop.adacomm import AdaComm
from fedcoop.config import AUTO, RunConfig
from fedcoop.coordinator import check_eager
from fedcoop.errors import ConfigError
from fedcoop.round_schedule import MatrixSchedule, parse_taus
from fedcoop.spec import ClientRule, CooperativeSpec, UpdateRule

#: The overlap paper's defaults (section 4): pullback alpha and anchor momentum beta.
OVERLAP_ALPHA = 0.6
OVERLAP_BETA = 0.7
#: EAMSGD's local Nesterov momentum when the config leaves momentum at 0.
EAMSGD_MOMENTUM = 0.9
#: FedProx's proximal mu when the config leaves prox-mu at 0: the middle of the paper's grid
#: {0.001, 0.01, 0.1, 1} (Li et al., MLSys 2020, section 5).
FEDPROX_MU = 0.01
#: An algorithm named "flower:<Strategy>" is a stock strategy of `flwr.serverapp.strategy`
#: run on fedcoop's clients (strategies.stock): FedAvg's exchange, the strategy's server step.
FLOWER_PREFIX = "flower:"
#: The keys a stock strategy cannot honour, with the value that leaves each off: the
#: Coordinator's features (its schedules, rules, deadlines, checkpoints), which a stock
#: strategy's own loop does not have.
FLOWER_OFF: dict[str, object] = {
    "tau-schedule": "fixed",
    "update-rule": AUTO,
    "anchor-momentum": AUTO,
    "eager-reply": False,
    "round-deadline": 0.0,
    "update-norm-bound": 0.0,
    "resume": "",
}

SpecBuilder = Callable[[RunConfig, int, Sequence[int]], CooperativeSpec]


@dataclass(frozen=True)
class Algorithm:
    """A named point of the design space: how to build its spec from a config."""

    name: str
    form: str
    summary: str
    build: SpecBuilder
    #: local momentum this algorithm uses when the config's momentum is 0 (EAMSGD)
    default_momentum: float = 0.0
    #: proximal mu this algorithm uses when the config's prox-mu is 0 (FedProx)
    default_prox_mu: float = 0.0
    #: its workers' local optimizer corrects each step with control variates (SCAFFOLD)
    control_variates: bool = False
    #: its rule takes each worker's own number of local steps (round-time budgets)
    heterogeneous_steps: bool = False
    #: its workers normalise their progress by their steps (FedNova)
    normalized: bool = False


def _alpha(config: RunConfig, default: float | None) -> float | None:
    """The config's alpha, or the algorithm's default where it says "auto"."""
    return default if config.alpha == AUTO else float(config.alpha)


def graph(config: RunConfig, m: int) -> np.ndarray:
    """The adjacency of the config's topology over m workers."""
    try:
        return topology.build(config.topology, m, seed=config.seed)
    except ConfigError as error:
        if error.parameter != "n":
            raise
        # The graph's size is the config's num-clients: say so, or the user looks for an "n".
        valid = f"{config.algorithm} on a {config.topology} graph: {error.valid}"
        raise ConfigError("num-clients", m, valid) from None


def graph_matrix(config: RunConfig, m: int) -> np.ndarray:
    """The weighted graph of the config's topology over m workers."""
    return topology.weigh(config.weighting, graph(config, m))


def _sync(config: RunConfig, m: int, _: Sequence[int]) -> CooperativeSpec:
    return CooperativeSpec(tau=1, w=mixing.averaging(m))


def _local_sgd(config: RunConfig, m: int, _: Sequence[int]) -> CooperativeSpec:
    return CooperativeSpec(tau=config.tau, w=mixing.averaging(m))


def _fedavg(config: RunConfig, m: int, counts: Sequence[int]) -> CooperativeSpec:
    """W = p 1^T with p_j = n_j / n: every worker takes the sample-weighted average."""
    p = np.asarray(counts, dtype=np.float64)
    if p.shape != (m,) or np.any(p <= 0):
        raise ConfigError("sample counts", list(counts), f"fedavg needs {m} positive counts")
    w = np.outer(p / p.sum(), np.ones(m))
    return CooperativeSpec(tau=config.tau, w=w, symmetric=False)


def _easgd(config: RunConfig, m: int, _: Sequence[int]) -> CooperativeSpec:
    alpha = _alpha(config, 2.0 / (m + 2))
    return CooperativeSpec(
        tau=config.tau,
        w=mixing.easgd(m, alpha),
        num_aux=1,
        rule=UpdateRule.MIX_BEFORE_STEP,
        nonnegative=False,
        reweight=participation.keep_self,
    )


def _dpsgd(config: RunConfig, m: int, _: Sequence[int]) -> CooperativeSpec:
    spec = CooperativeSpec(
        tau=config.tau,
        w=graph_matrix(config, m),
        rule=UpdateRule.MIX_BEFORE_STEP,
        nonnegative=config.weighting != "laplacian",
        reweight=participation.graph_reweight(config.weighting),
    )
    if config.topology_schedule == "fixed":
        return spec
    schedule = _topology_schedule(config, m)
    # A missing worker's weight stays home, so every W_r stays symmetric doubly stochastic.
    return replace(
        spec,
        w=schedule.expected(),
        w_schedule=schedule,
        nonnegative=False,
        reweight=participation.keep_self,
    )


def _topology_schedule(config: RunConfig, m: int) -> MatrixSchedule:
    """The W_r of topology-schedule: gossip over the topology's edges, or a user's files."""
    if config.topology_schedule == "random-matching":
        return gossip.RandomMatching(graph(config, m), config.seed)
    if config.topology_schedule == "random-edge":
        return gossip.RandomEdge(graph(config, m), config.seed)
    return gossip.MatrixSequence.load(config.topology_schedule, m)


def _matcha(config: RunConfig, m: int, _: Sequence[int]) -> CooperativeSpec:
    """MATCHA: the topology's matchings, each activated with its probability per round."""
    schedule = matcha.Matcha.build(graph(config, m), config.comm_budget, config.seed)
    return CooperativeSpec(
        tau=config.tau,
        w=schedule.expected(),
        w_schedule=schedule,
        nonnegative=False,
        reweight=participation.keep_self,
    )


def _generalized_elastic(config: RunConfig, m: int, _: Sequence[int]) -> CooperativeSpec:
    w = mixing.generalized_elastic(graph_matrix(config, m), _alpha(config, None))
    return CooperativeSpec(
        tau=config.tau, w=w, num_aux=1, nonnegative=False, reweight=participation.keep_self
    )


def _hierarchical(config: RunConfig, m: int, _: Sequence[int]) -> CooperativeSpec:
    if not 1 <= config.groups <= m:
        raise ConfigError("groups", config.groups, f"must be between 1 and num-clients={m}")
    w = mixing.hierarchical(mixing.even_groups(m, config.groups), _alpha(config, None))
    return CooperativeSpec(
        tau=config.tau, w=w, num_aux=config.groups, reweight=participation.keep_self
    )


def _overlap(config: RunConfig, m: int, _: Sequence[int]) -> CooperativeSpec:
    return CooperativeSpec(
        tau=config.tau,
        w=mixing.overlap(m, _alpha(config, OVERLAP_ALPHA)),
        num_aux=1,
        anchor_momentum=OVERLAP_BETA,
        symmetric=False,
    )


def _scaffold(config: RunConfig, m: int, _: Sequence[int]) -> CooperativeSpec:
    """Local SGD's uniform average of the reports, plus the server's control variate."""
    return CooperativeSpec(tau=config.tau, w=mixing.averaging(m), control_variates=True)


def cocod_routing(m: int) -> np.ndarray:
    """The matrix that routes CoCoD-SGD's one-round-stale average to every worker.

    Column m (the auxiliary node) is the workers' mean; worker column i reads only the
    auxiliary node. With the client's correction rule (x_i <- z + x_i - snapshot_i) this is
    CoCoD-SGD; it is not a Cooperative SGD point by itself, so only column sums are checked.
    """
    w = np.zeros((m + 1, m + 1))
    w[m, :m] = 1.0
    w[:m, m] = 1.0 / m
    return w


def _cocod(config: RunConfig, m: int, _: Sequence[int]) -> CooperativeSpec:
    return CooperativeSpec(
        tau=config.tau,
        w=cocod_routing(m),
        num_aux=1,
        client_rule=ClientRule.CORRECTION,
        symmetric=False,
        check_spectrum=False,
    )


def _cooperative(config: RunConfig, m: int, _: Sequence[int]) -> CooperativeSpec:
    """Any user matrix: symmetric ones are held to Assumption 5, others to column sums."""
    if not config.matrix_file:
        raise ConfigError("matrix-file", "", "the cooperative algorithm needs a matrix file")
    w = mixing.read_matrix(config.matrix_file, "matrix-file")
    # A non-square W cannot be compared with its transpose; validate() names its shape.
    square = w.ndim == 2 and w.shape[0] == w.shape[1]
    symmetric = square and mixing.is_symmetric(w)
    return CooperativeSpec(
        tau=config.tau,
        w=w,
        num_aux=config.num_aux,
        symmetric=symmetric,
        nonnegative=False,
        # A symmetric W stays symmetric and doubly stochastic when dropped weight stays home.
        reweight=participation.keep_self if symmetric else participation.renormalize,
    )


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in [
        Algorithm("sync", "A(1, J, 0)", "fully synchronous SGD", _sync),
        Algorithm(
            "local-sgd",
            "A(tau, J, 0)",
            "periodic averaging / Local SGD",
            _local_sgd,
            heterogeneous_steps=True,
        ),
        Algorithm(
            "fedavg",
            "A(tau, p1^T, 0)",
            "Local SGD, sample-weighted average",
            _fedavg,
            heterogeneous_steps=True,
        ),
        Algorithm(
            "fedprox",
            "A(tau, p1^T, 0) + mu",
            "FedAvg, local proximal term",
            _fedavg,
            default_prox_mu=FEDPROX_MU,
            heterogeneous_steps=True,
        ),
        Algorithm(
            "fednova",
            "A(tau_i, p1^T, 0) + a_i",
            "FedNova: progress normalised by each worker's steps",
            _fedavg,
            heterogeneous_steps=True,
            normalized=True,
        ),
        Algorithm(
            "scaffold",
            "A(tau, J, 0) + c",
            "SCAFFOLD: control variates (option II)",
            _scaffold,
            control_variates=True,
            heterogeneous_steps=True,
        ),
        Algorithm("easgd", "A(tau, W_alpha, 1)", "elastic averaging SGD", _easgd),
        Algorithm(
            "eamsgd", "A(tau, W_alpha, 1)", "EASGD, Nesterov momentum", _easgd, EAMSGD_MOMENTUM
        ),
        Algorithm("dpsgd", "A(tau, W, 0)", "D-PSGD / decentralized periodic averaging", _dpsgd),
        Algorithm(
            "matcha",
            "A(tau, I - alpha L_r, 0)",
            "MATCHA: sampled matchings of the graph",
            _matcha,
        ),
        Algorithm(
            "generalized-elastic",
            "A(tau, W', 1)",
            "D-PSGD plus an elastic anchor",
            _generalized_elastic,
        ),
        Algorithm("hierarchical", "A(tau, W_h, g)", "group anchors that mix", _hierarchical),
        Algorithm("overlap", "A(tau, P, 1) + beta", "Overlap-Local-SGD", _overlap),
        Algorithm("cocod", "(baseline)", "CoCoD-SGD", _cocod),
        Algorithm("cooperative", "A(tau, W, v)", "any matrix from matrix-file", _cooperative),
    ]
}


def is_flower(name: str) -> bool:
    """Whether `name` asks for a Flower stock strategy ("flower:FedAdam")."""
    return name.startswith(FLOWER_PREFIX)


def get(name: str) -> Algorithm:
    """The declaration called `name`, or a ConfigError listing the valid names.

    "flower:<Strategy>" is FedAvg's point for the workers (tau local steps from the model
    the server sends, then the model back): the strategy's server step is Flower's, which
    strategies.stock looks up and checks, since this layer does not import Flower."""
    if is_flower(name) and name[len(FLOWER_PREFIX) :].isidentifier():
        return Algorithm(
            name,
            "A(tau, p1^T, 0), server step",
            "Flower stock strategy",
            _fedavg,
            heterogeneous_steps=True,
        )
    if name not in ALGORITHMS:
        valid = f"valid names: {', '.join(ALGORITHMS)}, or flower:<Strategy>"
        raise ConfigError("algorithm", name, valid)
    return ALGORITHMS[name]


def resolve(
    config: RunConfig,
    sample_counts: Sequence[int] | None = None,
    lr: Callable[[int], float] | None = None,
) -> CooperativeSpec:
    """The validated spec that `config` describes for its num-clients workers; `lr` (the
    learning rate per global step) is what AdaComm reads of a decaying schedule."""
    m = config.num_clients
    counts = list(sample_counts) if sample_counts is not None else [1] * m
    if config.topology_schedule != "fixed" and config.algorithm != "dpsgd":
        raise ConfigError(
            "topology-schedule",
            config.topology_schedule,
            f"applies to dpsgd (matcha draws its own W_r), not {config.algorithm}: fixed",
        )
    _check_flower_keys(config)
    spec = get(config.algorithm).build(config, m, counts)
    spec = _with_tau_schedule(config, spec, lr)
    spec = _with_worker_steps(config, spec)
    if config.update_rule != AUTO:
        if spec.client_rule is ClientRule.CORRECTION:
            raise ConfigError("update-rule", config.update_rule, "cocod has its own rule: auto")
        try:
            spec = replace(spec, rule=UpdateRule(config.update_rule))
        except ValueError:
            valid = ", ".join([AUTO, *(r.value for r in UpdateRule)])
            raise ConfigError("update-rule", config.update_rule, f"valid: {valid}") from None
    if config.anchor_momentum != AUTO:
        beta = float(config.anchor_momentum)
        if beta and (spec.num_aux == 0 or spec.client_rule is ClientRule.CORRECTION):
            raise ConfigError(
                "anchor-momentum", beta, f"{config.algorithm} has no anchor: leave it at auto or 0"
            )
        spec = replace(spec, anchor_momentum=beta)
    if config.global_lr != 1.0 and not spec.control_variates:
        raise ConfigError(
            "global-lr", config.global_lr, f"1 ({config.algorithm} has no global step)"
        )
    algorithm = get(config.algorithm)
    ends_rounds = algorithm.control_variates or algorithm.normalized
    if ends_rounds and spec.rule is not UpdateRule.MIX_AFTER_STEP:
        valid = f"auto: {config.algorithm} reports its model after its round's last step"
        raise ConfigError("update-rule", config.update_rule, valid)
    if algorithm.normalized and config.nesterov:
        raise ConfigError("nesterov", True, "false for fednova: its a_i is heavy-ball momentum's")
    spec = spec.validate(num_clients=m)
    if config.eager_reply:
        check_eager(spec, config.participation, config.update_norm_bound)
    return spec


def _check_flower_keys(config: RunConfig) -> None:
    """Refuse strategy-args without a stock strategy, and with one, the keys it ignores."""
    values = config.to_mapping()
    if not is_flower(config.algorithm):
        if config.strategy_args.strip() not in ("", "{}"):
            valid = f"{{}} ({config.algorithm} is no flower:<Strategy>)"
            raise ConfigError("strategy-args", config.strategy_args, valid)
        if config.client_mods:
            valid = f'"" (Flower mods read Flower\'s messages; {config.algorithm} sends its own)'
            raise ConfigError("client-mods", config.client_mods, valid)
        return
    for key, off in FLOWER_OFF.items():
        if values[key] != off:
            valid = f"{off!r}: a Flower stock strategy runs its own loop, without it"
            raise ConfigError(key, values[key], valid)
    if devices.availability(config.device_speeds, config.num_clients) is not None:
        valid = "a device table without an available column: Flower samples the nodes itself"
        raise ConfigError("device-speeds", config.device_speeds, valid)


@lru_cache(maxsize=8)
def worker_steps(config: RunConfig) -> tuple[int, ...] | None:
    """Each worker's local steps under the config's round-time budget (None: tau for all);
    device-speeds is read (and refused, if bad) either way."""
    speeds = devices.speeds(config.device_speeds, config.num_clients, config.seed)
    if not config.round_time:
        return None
    return devices.local_steps(speeds, config.round_time, config.step_time)


def _with_worker_steps(config: RunConfig, spec: CooperativeSpec) -> CooperativeSpec:
    """The round-time budget's tau_i on the spec, for the rules that take them."""
    taus = worker_steps(config)
    if taus is None:
        return spec
    takers = ", ".join(a.name for a in ALGORITHMS.values() if a.heterogeneous_steps)
    if not get(config.algorithm).heterogeneous_steps:
        valid = f"0 for {config.algorithm}; per-worker steps are taken by {takers}"
        raise ConfigError("round-time", config.round_time, valid)
    if config.tau_schedule != "fixed":
        raise ConfigError("tau-schedule", config.tau_schedule, "fixed: round-time sets the steps")
    return replace(spec, worker_taus=taus)


def _with_tau_schedule(
    config: RunConfig, spec: CooperativeSpec, lr: Callable[[int], float] | None
) -> CooperativeSpec:
    """The config's tau-schedule on the algorithm's spec."""
    if config.tau_schedule == "fixed":
        return spec
    if config.algorithm == "sync":
        raise ConfigError("tau-schedule", config.tau_schedule, "sync takes one step a round: fixed")
    if config.tau_schedule == "adacomm":
        return replace(spec, tau_schedule=AdaComm(config.tau, config.adacomm_interval, lr))
    return replace(spec, tau_schedule=parse_taus(config.tau_schedule))


def local_optimizer(config: RunConfig) -> optimizers.LocalOptimizer:
    """The workers' local optimizer: the config's SGD settings, with the algorithm's own
    Nesterov momentum (EAMSGD's) where the config leaves momentum at 0, its own proximal
    mu (FedProx's) where it leaves prox-mu at 0, and SCAFFOLD's control variates. The one
    place a config's optimizer fields become pieces: the batched rule and the reference
    run them."""
    algorithm = get(config.algorithm)
    momentum, nesterov = config.momentum, config.nesterov
    if momentum == 0 and algorithm.default_momentum:
        momentum, nesterov = algorithm.default_momentum, True
    local = optimizers.sgd(
        momentum,
        nesterov=nesterov,
        weight_decay=config.weight_decay,
        prox_mu=config.prox_mu or algorithm.default_prox_mu,
    )
    if algorithm.normalized:
        return replace(local, transforms=(*local.transforms, _normalized(config, momentum)))
    if not algorithm.control_variates:
        return local
    # the correction joins the gradient before any momentum folds it in
    control = optimizers.ControlVariates(config.global_lr)
    return replace(local, transforms=(control, *local.transforms))


def _normalized(config: RunConfig, rho: float) -> optimizers.NormalizedAveraging:
    """FedNova's piece: tau_eff = sum_j p_j a_j over every worker (p_j its share of the
    samples), which any worker computes from the config alone."""
    from fedcoop import workload  # the shards' sizes; workload does not import this module

    m = config.num_clients
    counts = np.array([len(workload.shard(config, i, m)) for i in range(m)], dtype=np.float64)
    taus = worker_steps(config) or (config.tau,) * m
    norms = np.array([optimizers.momentum_norm(t, rho) for t in taus])
    return optimizers.NormalizedAveraging(float(counts @ norms / counts.sum()), rho)
