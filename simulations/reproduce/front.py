"""The Overlap-Local-SGD paper's error-runtime front (claim 6; Fig. 1, 4a, 5a) on the virtual
clock, on the link of the paper's communication-to-compute ratio and on a slower one.

The virtual clock is a pure function of the config (spec, step time, link, seed) and of the
rounds' participants (all of them here), so the slower link's times are replayed from the
same runs instead of training again; the replay on the runs' own link reproduces the times
they recorded, which the claim checks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedcoop import algorithms
from fedcoop.clock import VirtualClock
from fedcoop.config import RunConfig
from fedcoop.links import parse_link
from simulations import compare, plots, stats
from simulations.reproduce.claim_runs import find_all
from simulations.reproduce.overlap_sgd import (
    IMAGE_ALGORITHMS,
    SPLITS,
    SYNC,
    accuracy,
    model_bytes,
    paper_link,
)
from simulations.reproduce.scale import Scale
from simulations.reproduce.verdicts import (
    CONTRADICTED,
    HOLDS,
    NOISE,
    RULE,
    Claim,
    above,
    fmt,
    judge,
    mean_std,
    save_png,
    table,
    tally,
)


def replay(run: compare.RecordedRun, link: str) -> float:
    """The virtual time at the end of the run's last round had it run on `link` (all its
    configured rounds: a run that diverged is charged the schedule it did not finish)."""
    config = RunConfig.from_mapping(run.config).replace(link=link)
    clock = VirtualClock.from_config(config, algorithms.resolve(config), model_bytes(run.config))
    return max(clock.round(r) for r in range(1, config.num_rounds + 1))


def comm_per_round(scale: Scale, link: str) -> float:
    """Seconds one Local SGD round at tau = 2 spends communicating on `link` (star pattern:
    an upload and a download, each latency + m * bytes / bandwidth)."""
    parsed, m = parse_link(link), int(scale.image["num-clients"])
    return 2 * parsed.transfer(m * model_bytes(scale.image))


def dominated(
    point: tuple[float, list[float]], overlap: Sequence[tuple[int, float, list[float]]]
) -> tuple[str, str]:
    """Whether an overlap point (tau, time, errors) no slower than `point` (time, errors) has
    a lower error beyond the noise (HOLDS), one only inside it (NOISE), or none (CONTRADICTED:
    every one as fast has a higher error beyond the noise, or none is as fast); and which
    overlap tau decided it."""
    time, errors = point
    faster = [(tau, above(errors, e)) for tau, t, e in overlap if t <= time * (1 + 1e-12)]
    for wanted in (HOLDS, NOISE, CONTRADICTED):
        hit = [tau for tau, outcome in faster if outcome == wanted]
        if hit:
            return wanted, f"tau {hit[0]}"
    return CONTRADICTED, "none as fast"


def claim_front(
    scale: Scale, runs: list[compare.RecordedRun], runs_dir: Path, figures: Path
) -> Claim:
    """Claim 6: overlap's error-runtime front over tau dominates Local SGD's and sync's."""
    fast, slow = paper_link(scale), paper_link(scale, scale.slow_link)
    links = {"paper ratio": fast, "slower link": slow}
    exact = all(
        math.isclose(replay(r, r.config["link"]), r.rows[-1]["virtual-time"], rel_tol=1e-9)
        for r in runs
        if not r.failed
    )
    rows, outcomes, paths = [], [], []
    for name, link in links.items():
        figure, axes = plots.new_figure(len(SPLITS))
        for ax, split in zip(axes, SPLITS, strict=True):
            points = {
                (a, t): (
                    float(
                        np.mean(
                            [
                                replay(r, link)
                                for r in find_all(runs, algorithm=a, partition=split, tau=t)
                            ]
                        )
                    ),
                    [1 - v for v in accuracy(runs, algorithm=a, partition=split, tau=t)],
                )
                for a in IMAGE_ALGORITHMS
                for t in scale.image_taus
            }
            overlap = [(t, *points["overlap", t]) for t in scale.image_taus]
            judged = [(f"local-sgd tau {t}", points["local-sgd", t]) for t in scale.image_taus]
            judged.append((f"{SYNC} (tau 1)", points["local-sgd", 1]))
            for what, point in judged:
                outcome, by = dominated(point, overlap)
                outcomes.append(outcome)
                rows.append([name, split, what, fmt(point[0], 2), mean_std(point[1]), by, outcome])
            for algorithm in IMAGE_ALGORITHMS:
                xs = [points[algorithm, t][0] for t in scale.image_taus]
                ys = [stats.spread(points[algorithm, t][1]) for t in scale.image_taus]
                ax.errorbar(
                    xs,
                    [y.mean for y in ys],
                    yerr=[0 if math.isnan(y.std) else y.std for y in ys],
                    marker="o",
                    capsize=3,
                    label=algorithm,
                )
                for x, y, t in zip(xs, ys, scale.image_taus, strict=True):
                    ax.annotate(
                        f"{t}",
                        (x, y.mean),
                        xytext=(3, 3),
                        textcoords="offset points",
                        fontsize="x-small",
                    )
            ax.set_title(f"{split} split, link {link}", fontsize="medium")
            plots.style_axes(ax, "virtual time at the end (s)", "final test error")
        axes[-1].legend(fontsize="small", title="labels: tau; bars: ± 1 sd")
        slug = name.replace(" ", "-")
        paths.append(save_png(figure, figures / f"repro-front-{slug}.png"))
    step = float(scale.image["step-time"])
    arithmetic = (
        f"A Local SGD round at tau = 2 computes 2 x {step:g} s = {2 * step:g} s; on the star "
        "pattern it then uploads and downloads, each latency + m x bytes / bandwidth (the "
        f"server's link shared by the m = {scale.image['num-clients']} workers), with "
        f"{model_bytes(scale.image)} bytes of model. The link {fast} makes that "
        f"{comm_per_round(scale, fast):.4f} s = {comm_per_round(scale, fast) / (2 * step):.1%} "
        f"of the compute (the paper's 34.6%); the slower link {slow} ({scale.slow_link:g} x "
        f"the bandwidth) makes it {comm_per_round(scale, slow):.4f} s = "
        f"{comm_per_round(scale, slow) / (2 * step):.0%}."
    )
    return Claim(
        title="6. The error-runtime front over tau (overlap paper, Fig. 1, 4a, 5a)",
        paper="Over tau, Overlap-Local-SGD's (runtime, error) points lie on a better front "
        "than Local SGD's and fully synchronous SGD's: communication hides behind the next "
        "tau local steps.",
        setup=f"The runs of claim 4 on the virtual clock (constant step time {step:g} s). "
        + arithmetic
        + " The slower link's times are replayed from the recorded runs (fedcoop.clock is a "
        "function of the config and the rounds' participants); replaying each run on its own "
        f"link gives back its recorded virtual time exactly: {'yes' if exact else 'NO'}. "
        "Runtime: the virtual time at the end of the last round; error: 1 - final test "
        "accuracy.",
        criterion="Every Local SGD point (one per tau) and the sync point, per split and link, "
        "is dominated by an overlap point of the same split: no slower and with a lower mean "
        f"error, where {RULE}; only inside the noise: inside the noise; no overlap point as "
        f"fast or all worse beyond the noise: contradicted. Here {tally(outcomes)} of "
        f"{len(outcomes)}. All hold: reproduced; all inside the noise: inside the noise; else "
        "partly when at least half hold or none is contradicted, not reproduced otherwise.",
        verdict=judge(outcomes),
        tables=[
            table(
                ["link", "split", "point", "time (s)", "error", "dominating overlap", "outcome"],
                rows,
            )
        ],
        figures=paths,
        runs=runs_dir,
    )
