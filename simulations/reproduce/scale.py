"""The sizes of every reproduction experiment: the full scale of docs/reproductions.md and the
toy scale of `--smoke` (seconds, for the tests)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Scale:
    """The sizes of every experiment; --smoke shrinks them all at once."""

    #: the convex problem of claims 1-3 and its local steps per worker (same for every tau)
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


FULL = Scale(
    convex={
        "dataset": "synthetic",
        "model": "logreg",
        "partition": "natural",
        "num-clients": 8,
        "batch-size": 10,
        "lr": 0.1,
    },
    convex_steps=1536,
    convex_taus=(1, 4, 16, 64),
    graphs=("complete", "hypercube", "ring", "star"),
    pasgd_tau=4,
    easgd_steps=1024,
    reference_steps=600,
    reference_batch=4,
    image={
        "dataset": "fashion-mnist",
        "model": "mlp",
        "num-clients": 8,
        "batch-size": 32,
        "lr": 0.05,
        "momentum": 0.9,
        "nesterov": True,
        "link": "wifi",
    },
    image_steps=192,
    image_taus=(1, 2, 8, 24),
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
        "batch-size": 8,
    },
    image_steps=4,
    image_taus=(1, 2),
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
