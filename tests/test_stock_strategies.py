"""Flower's stock strategies on fedcoop's clients (`algorithm = "flower:<Strategy>"`):
Flower's own FedAvg reaches fedcoop's fedavg, FedAdam and FedProx follow their rules, the DP
wrappers run, and bad names, arguments and messages are refused with errors that say so."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from clients import standard
from clients.client_app import app as client_app
from fedcoop import workload
from fedcoop.config import RunConfig
from fedcoop.errors import ConfigError, RunFailed
from fedcoop.model_vectors import layout, model_vector
from simulations.inprocess import InProcessGrid
from strategies.server_app import initial_model, run
from tests.conftest import (
    TIMINGS,
    assert_paths_agree,
    gradient_oracle,
    image_overlap_config,
    least_squares_config,
    run_in_process,
    run_on_simulation_engine,
    x0_of,
)

pytestmark = pytest.mark.flower


def _args(**kwargs: object) -> str:
    return json.dumps(kwargs)


def _fedavg_weights(config: RunConfig) -> np.ndarray:
    m = config.num_clients
    counts = np.array([len(workload.shard(config, i, m)) for i in range(m)], dtype=np.float64)
    return counts / counts.sum()


def _local_models(config: RunConfig, w: np.ndarray, mu: float = 0.0) -> list[np.ndarray]:
    """Each worker's model after a round's tau full-batch gradient steps from w (plus
    FedProx's proximal term), as the papers write local training."""
    grad = gradient_oracle(config)
    out = []
    for k in range(config.num_clients):
        x = w.copy()
        for _ in range(config.tau):
            x = x - config.lr * (grad(k, x, 0) + mu * (x - w))
        out.append(x)
    return out


BYTES = frozenset({"bytes-up", "bytes-down"})
#: fedavg on the two kinds of run: float64 least squares with momentum, and the MLP on
#: the embedded MNIST split by Dirichlet(0.5) (unequal shards, so p is not uniform), float32
FEDAVG_RUNS = {
    "least-squares": least_squares_config(algorithm="fedavg", momentum=0.5),
    "mnist-dirichlet": replace(
        image_overlap_config("mlp"), algorithm="fedavg", partition="dirichlet", batch_size=16
    ),
}


@pytest.mark.cross_path
@pytest.mark.parametrize("engine", ["inprocess", "vectorized"])
@pytest.mark.parametrize("run_name", list(FEDAVG_RUNS))
def test_flowers_fedavg_on_fedcoop_clients_reaches_fedcoops_fedavg(
    run_name: str, engine: str
) -> None:
    """Flower's FedAvg strategy on our ClientApp and fedcoop's fedavg (the Coordinator's
    W = p 1^T) are one algorithm: the same models, losses and virtual times every round, to
    float tolerance (the two sum the weighted models in another order). The bytes differ
    by the .npy header of each named array (Flower's ArrayRecord holds one per layer,
    fedcoop's record one vector): under 1% here."""
    config = FEDAVG_RUNS[run_name]
    ours, _ = run_in_process(config, engine=engine)
    theirs, _ = run_in_process(replace(config, algorithm="flower:FedAvg"), engine=engine)
    assert ours.workers is not None and theirs.server_model is not None
    assert_paths_agree(theirs.server_model, ours.workers[0])
    assert len(theirs.rounds) == len(ours.rounds) == config.num_rounds
    for a, b in zip(theirs.rounds, ours.rounds, strict=True):
        assert set(a) == set(b)
        for key in set(a) - TIMINGS - BYTES:
            assert_paths_agree(np.float64(a[key]), np.float64(b[key]), rtol=1e-5)
        for key in BYTES:
            assert b[key] <= a[key] < 1.01 * b[key]


@pytest.mark.cross_path
def test_flowers_fedadam_follows_its_server_rule() -> None:
    """FedAdam (Reddi et al., ICLR 2021, Algorithm 2, with the bias correction Flower's
    FedAdam applies): the server's pseudo-gradient is the weighted mean of the workers'
    models minus x_t, and x_{t+1} = x_t + eta_t m_t / (sqrt(v_t) + tau)."""
    eta, b1, b2, tau = 0.3, 0.9, 0.99, 1e-3
    config = least_squares_config(
        algorithm="flower:FedAdam",
        strategy_args=_args(eta=eta, beta_1=b1, beta_2=b2, tau=tau),
    )
    result, _ = run_in_process(config)
    p = _fedavg_weights(config)
    x = x0_of(config)
    m_t = v_t = np.zeros_like(x)
    for t in range(1, config.num_rounds + 1):
        delta = sum(pk * xk for pk, xk in zip(p, _local_models(config, x), strict=True)) - x
        m_t = b1 * m_t + (1 - b1) * delta
        v_t = b2 * v_t + (1 - b2) * delta**2
        eta_t = eta * np.sqrt(1 - b2 ** (t + 1.0)) / (1 - b1 ** (t + 1.0))
        x = x + eta_t * m_t / (np.sqrt(v_t) + tau)
    assert result.server_model is not None
    assert_paths_agree(result.server_model, x)
    fedavg, _ = run_in_process(replace(config, algorithm="fedavg", strategy_args="{}"))
    assert fedavg.workers is not None
    assert np.abs(fedavg.workers[0] - x).max() > 1e-3  # the server step moved it


@pytest.mark.cross_path
def test_flowers_fedprox_sends_its_mu_to_fedcoops_proximal_term() -> None:
    """Flower's FedProx sends proximal-mu; the workers add mu (x - x_t) to every local
    gradient (Li et al., MLSys 2020, Algorithm 2), as fedcoop's own fedprox does."""
    mu = 0.5
    config = least_squares_config(algorithm="flower:FedProx", strategy_args=_args(proximal_mu=mu))
    result, _ = run_in_process(config)
    p = _fedavg_weights(config)
    w = x0_of(config)
    for _ in range(config.num_rounds):
        w = sum(pk * xk for pk, xk in zip(p, _local_models(config, w, mu), strict=True))
    assert result.server_model is not None
    assert_paths_agree(result.server_model, w)
    ours, _ = run_in_process(replace(config, algorithm="fedprox", prox_mu=mu, strategy_args="{}"))
    assert ours.workers is not None
    assert_paths_agree(result.server_model, ours.workers[0])


def test_a_dp_wrapper_wraps_the_strategy_strategy_args_names() -> None:
    """Server-side DP with fixed clipping around FedAdam: each update is clipped to the
    norm and Gaussian noise is added, so the result differs from FedAdam alone but stays
    finite; the run keeps its rows and results."""
    inner = {"name": "FedAdam", "eta": 0.3}
    config = least_squares_config(
        algorithm="flower:DifferentialPrivacyServerSideFixedClipping",
        strategy_args=_args(strategy=inner, noise_multiplier=0.1, clipping_norm=0.5),
    )
    result, _ = run_in_process(config)
    assert len(result.rounds) == config.num_rounds
    assert result.server_model is not None and np.all(np.isfinite(result.server_model))
    plain, _ = run_in_process(
        replace(config, algorithm="flower:FedAdam", strategy_args=_args(eta=0.3))
    )
    assert plain.server_model is not None
    assert np.abs(plain.server_model - result.server_model).max() > 1e-6


@pytest.mark.cross_path
@pytest.mark.parametrize("engine", ["inprocess", "vectorized"])
def test_client_mods_clip_each_workers_update_for_the_client_side_dp_wrapper(
    engine: str,
) -> None:
    """client-mods = fixedclipping_mod under DifferentialPrivacyClientSideFixedClipping
    (noise 0, so the rule is exact): each worker's update y_i - x_t is clipped to norm c
    before the weighted average, x_{t+1} = x_t + sum_i p_i clip(y_i - x_t, c); the
    vectorized engine runs such messages one by one through their mods."""
    c = 0.05
    config = least_squares_config(
        algorithm="flower:DifferentialPrivacyClientSideFixedClipping",
        client_mods="fixedclipping_mod",
        strategy_args=_args(noise_multiplier=0.0, clipping_norm=c),
    )
    result, _ = run_in_process(config, engine=engine)
    p = _fedavg_weights(config)
    x = x0_of(config)
    for _ in range(config.num_rounds):
        updates = [y - x for y in _local_models(config, x)]
        clipped = [u * min(1.0, c / np.linalg.norm(u)) for u in updates]
        assert max(np.linalg.norm(u) for u in updates) > c  # the clipping bites
        x = x + sum(pk * u for pk, u in zip(p, clipped, strict=True))
    assert result.server_model is not None
    assert_paths_agree(result.server_model, x)


def test_a_stock_strategy_samples_the_configs_share_of_workers_seeded() -> None:
    """participation becomes the strategy's fraction-train: 2 of 5 workers a round, the
    draw fixed by the run's seed, and only workers that trained are evaluated at the end."""
    config = least_squares_config(algorithm="flower:FedAvg", participation=0.4, num_rounds=3)
    first, _ = run_in_process(config)
    again, _ = run_in_process(config, seed=1)
    assert [r["participants"] for r in first.rounds] == [2, 2, 2]
    assert first.server_model is not None and again.server_model is not None
    assert_paths_agree(first.server_model, again.server_model)


def test_a_stock_strategys_results_files_hold_its_rows_and_global_model(tmp_path) -> None:
    config = least_squares_config(
        algorithm="flower:FedAvgM",
        strategy_args=_args(server_momentum=0.5, fraction_evaluate=1.0),
        results_dir=str(tmp_path),
    )
    from simulations import results

    outcome = run(InProcessGrid(client_app, config.num_clients), config, results=results)
    assert outcome.directory is not None
    assert ":" not in outcome.directory.name  # some file systems refuse it
    with np.load(outcome.directory / "final-models.npz") as saved:
        np.testing.assert_array_equal(saved["server"], outcome.server_model)
    rows = [json.loads(line) for line in (outcome.directory / "metrics.jsonl").open()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert all("client-loss" in r and "test-loss" in r for r in rows)
    saved_config = json.loads((outcome.directory / "config.json").read_text())
    assert saved_config["config"]["algorithm"] == "flower:FedAvgM"


@pytest.mark.parametrize(
    ("changes", "key", "words"),
    [
        ({"algorithm": "flower:FedNope"}, "algorithm", "FedAdam"),
        ({"algorithm": "flower:FedXgbBagging"}, "algorithm", "FedAvg"),
        ({"algorithm": "flower:FedAdam", "strategy-args": '{"etta": 1}'}, "strategy-args", "eta"),
        (
            {
                "algorithm": "flower:DifferentialPrivacyServerSideFixedClipping",
                "strategy-args": '{"strategy": 3, "noise-multiplier": 1, "clipping-norm": 1}',
            },
            "strategy-args",
            "name",
        ),
        ({"algorithm": "fedavg", "strategy-args": '{"eta": 1}'}, "strategy-args", "flower:"),
        ({"algorithm": "flower:FedAvg", "eager-reply": True}, "eager-reply", "own loop"),
        ({"algorithm": "fedavg", "client-mods": "fixedclipping_mod"}, "client-mods", "own"),
        ({"algorithm": "flower:FedAvg", "client-mods": "clip_mod"}, "client-mods", "no mod"),
        ({"algorithm": "flower:FedAvg", "client-mods": "LocalDpMod"}, "client-mods", "no mod"),
        (
            {
                "algorithm": "flower:DifferentialPrivacyClientSideFixedClipping",
                "strategy-args": '{"noise-multiplier": 1, "clipping-norm": 1}',
            },
            "client-mods",
            "fixedclipping_mod",
        ),
        ({"algorithm": "flower:FedAvg", "tau-schedule": "4,2"}, "tau-schedule", "own loop"),
    ],
)
def test_bad_stock_strategy_configs_are_refused_before_any_round(
    changes: dict[str, object], key: str, words: str
) -> None:
    config = RunConfig.from_mapping({**least_squares_config().to_mapping(), **changes})
    with pytest.raises(ConfigError, match=words) as caught:
        run(InProcessGrid(client_app, config.num_clients), config)
    assert caught.value.parameter == key


def _standard_train(config: RunConfig, arrays: ArrayRecord, node: int, round_: object) -> Message:
    """A train message as Flower's stock strategies build it."""
    record = ConfigRecord({**config.to_mapping(), standard.SERVER_ROUND: round_})
    content = RecordDict({"arrays": arrays, "config": record})
    return Message(content, node, MessageType.TRAIN)


@pytest.mark.parametrize(
    ("forge", "round_", "words"),
    [
        ("reshape", 1, "shape"),
        ("extra", 1, "not entries"),
        ("drop", 1, "no array"),
        ("", 0, "server-round"),
        ("", True, "server-round"),
    ],
)
def test_a_forged_standard_message_is_refused_naming_what_is_wrong(
    forge: str, round_: object, words: str
) -> None:
    """A message whose arrays are not the model's entries, or whose round is not a whole
    number >= 1, is answered with an error reply (the strategy leaves the node out)."""
    config = least_squares_config(algorithm="flower:FedAvg", num_clients=1)
    model = initial_model(config)
    arrays = {
        k: a.numpy()
        for k, a in standard.model_record(model_vector(model).numpy(), layout(model)).items()
    }
    first = next(iter(arrays))
    if forge == "reshape":
        arrays[first] = arrays[first].reshape(-1)[:-1]
    elif forge == "extra":
        arrays["extra"] = np.zeros(3)
    elif forge == "drop":
        del arrays[first]
    grid = InProcessGrid(client_app, 1)
    node = next(iter(grid.get_node_ids()))
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    (reply,) = grid.send_and_receive([_standard_train(config, record, node, round_)])
    assert reply.has_error()
    assert words in reply.error.reason


def test_a_stock_run_that_loses_its_quorum_stops_with_its_reasons() -> None:
    """A round in which fewer than quorum of the sampled workers answer stops the run
    with what they said, keeping the rounds before it, as fedcoop's own rounds do."""
    config = least_squares_config(algorithm="flower:FedAvg", quorum=1.0, num_rounds=3)

    class FailingRound2(InProcessGrid):
        def _deliver(self, msg: Message) -> None:
            if (
                msg.metadata.message_type == MessageType.TRAIN
                and standard.is_standard(msg)
                and standard.read(msg).round == 2
            ):
                from simulations.inprocess import error_reply

                self._replies[msg.metadata.message_id] = error_reply(msg, OSError("link down"))
                return
            super()._deliver(msg)

    with pytest.raises(RunFailed, match="link down") as caught:
        run(FailingRound2(client_app, config.num_clients), config)
    assert [r["round"] for r in caught.value.partial.rounds] == [1]


def test_a_stock_strategy_on_flowers_simulation_engine_equals_the_in_process_run() -> None:
    """FedAdam through Ray's actors (each ClientApp's state in Flower's contexts) ends on
    the in-process engine's global model."""
    config = least_squares_config(
        algorithm="flower:FedAdam", num_clients=4, strategy_args=_args(eta=0.3)
    )
    on_ray = run_on_simulation_engine(config)
    in_process, _ = run_in_process(config)
    assert on_ray.server_model is not None and in_process.server_model is not None
    assert_paths_agree(on_ray.server_model, in_process.server_model)
