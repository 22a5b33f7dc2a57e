"""The sizes of every reproduction experiment: the full scale of docs/reproductions.md and the
toy scale of `--smoke` (seconds, for the tests)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Scale:
    """The sizes of every experiment; --smoke shrinks them all at once."""

    #: the convex problem of claims 1-3 (one that reaches its floor) and the local steps per
    #: worker of claims 1 and 3 (the same for every tau)
    convex: Mapping[str, Any]
    convex_steps: int
    convex_taus: tuple[int, ...]
    graphs: tuple[str, ...]
    #: claim 3: PASGD's tau, compared with D-PSGD (tau = 1) on `graphs`
    pasgd_tau: int
    easgd_steps: int
    #: claim 2: the dense rule's steps and its least-squares minibatch
    reference_steps: int
    reference_batch: int
    #: claims 4-5: the image setup, its local steps per worker and its taus
    image: Mapping[str, Any]
    image_steps: int
    image_taus: tuple[int, ...]
    #: seeds per grid point (0, 1, ...): of the convex claims 1 and 3, of claim 2's framework
    #: runs, and of the image claims 4-6
    convex_seeds: int
    easgd_seeds: int
    image_seeds: int
    #: claim 5: communication of one Local SGD round at tau = 2 as a share of its compute
    #: (the overlap paper's 34.6%), the link's one-way latency, and the slower second link's
    #: bandwidth as a fraction of the first's
    comm_share: float
    latency_ms: float
    slow_link: float


FULL = Scale(
    # least squares with minibatch noise: SGD at this fixed rate settles on its floor within
    # the first eighth of the steps (FedProx's synthetic logistic regression, tried first, was
    # still 8% above its floor after 1024 steps, and 16,384 did not reach it either)
    convex={
        "dataset": "least-squares",
        "model": "linear",
        "partition": "iid",
        "num-clients": 8,
        "batch-size": 4,
        "lr": 0.2,
    },
    convex_steps=2048,
    convex_taus=(1, 4, 16, 64),
    graphs=("complete", "hypercube", "ring", "star"),
    pasgd_tau=4,
    easgd_steps=2048,
    reference_steps=600,
    reference_batch=4,
    image={
        "dataset": "fashion-mnist",
        "model": "mlp",
        "num-clients": 16,
        "batch-size": 256,
        # the paper's rule: 0.1 / 16 per worker, scaled by the 16 workers to a peak of 0.1
        "lr": 0.00625,
        "scale-lr-by-workers": True,
        "momentum": 0.9,
        "nesterov": True,
        # the paper's 5-epoch warm-up and decays after epochs 150 and 250 of 300, scaled to
        # the 300 steps = 20 epochs here (15 steps per epoch: ceil(60000 / 16 / 256)): a
        # warm-up of 5 steps and decays after epochs 10 and 16.67
        "lr-schedule": "paper",
        "warmup-epochs": 0.34,
        "decay-epochs": "10,16.67",
        "step-time": 0.05,
    },
    image_steps=300,
    image_taus=(1, 2, 8, 24),
    convex_seeds=5,
    easgd_seeds=3,
    image_seeds=3,
    comm_share=0.346,
    latency_ms=1.0,
    slow_link=0.1,
)

SMOKE = Scale(
    convex={**FULL.convex, "num-clients": 4},
    convex_steps=8,
    convex_taus=(1, 4),
    graphs=("complete", "ring"),
    pasgd_tau=4,
    easgd_steps=4,
    reference_steps=40,
    reference_batch=4,
    image={
        **FULL.image,
        "dataset": "mnist-embedded",
        "model": "logreg",
        "num-clients": 8,
        "batch-size": 8,
        "decay-epochs": "1,2",
    },
    image_steps=4,
    image_taus=(1, 2),
    convex_seeds=2,
    easgd_seeds=2,
    image_seeds=2,
    comm_share=FULL.comm_share,
    latency_ms=FULL.latency_ms,
    slow_link=FULL.slow_link,
)


@dataclass(frozen=True)
class FollowUpScale:
    """The sizes of the follow-up papers' claims (AdaComm, MATCHA: follow_ups.py)."""

    seeds: int
    #: claim 6: the setup, its virtual-time budget, the fixed taus and AdaComm's tau_0s
    adacomm: Mapping[str, Any]
    adacomm_budget: float
    adacomm_taus: tuple[int, ...]
    adacomm_tau0s: tuple[int, ...]
    #: claim 7: the setup (with its rounds) and MATCHA's communication budgets
    matcha: Mapping[str, Any]
    matcha_budgets: tuple[float, ...]


#: AdaComm on FedProx's Synthetic(1, 1) logistic regression over a link whose round trip
#: (0.4 s of latency and more) costs about 14 local steps, so that tau matters; MATCHA with
#: the MLP, whose 0.8 MB model makes a round's cost grow with the number of neighbours a
#: worker sends to.
FOLLOW_UPS_FULL = FollowUpScale(
    seeds=3,
    adacomm={
        "dataset": "synthetic",
        "model": "logreg",
        "partition": "natural",
        "num-clients": 8,
        "batch-size": 10,
        "lr": 0.1,
        "link": "congested-wireless",
        "step-time": 0.05,
        "adacomm-interval": 60.0,
        "results-dir": "",
    },
    adacomm_budget=1200.0,
    adacomm_taus=(4, 16, 64),
    adacomm_tau0s=(16, 64),
    matcha={
        "dataset": "mnist-embedded",
        "model": "mlp",
        "num-clients": 16,
        "batch-size": 32,
        "lr": 0.05,
        "tau": 1,
        "num-rounds": 300,
        "topology": "erdos-renyi",
        "link": "lte",
        "step-time": 0.05,
        "results-dir": "",
    },
    matcha_budgets=(1.0, 0.5, 0.25),
)

FOLLOW_UPS_SMOKE = FollowUpScale(
    seeds=2,
    adacomm={**FOLLOW_UPS_FULL.adacomm, "num-clients": 4, "adacomm-interval": 2.0},
    adacomm_budget=8.0,
    adacomm_taus=(4,),
    adacomm_tau0s=(8,),
    matcha={
        **FOLLOW_UPS_FULL.matcha,
        "model": "logreg",
        "num-clients": 4,
        "num-rounds": 6,
        "topology": "ring",
    },
    matcha_budgets=(1.0, 0.5),
)
