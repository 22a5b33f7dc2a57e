"""Reproduce the papers' claims at small scale; write docs/reproductions.md and its pages.

    python -m simulations.reproduce [--out docs] [--runs DIR] [--archive] [--smoke]

Given the --runs folder of an earlier invocation it resumes or extends that one: finished
runs of the same configs are reused (simulations.reproduce.claim_runs says what "the same" is).
Prints a line per run (which claim folder, which run, "reused" or "ran in X s") and the
total wall time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from fedcoop.config import RunConfig
from simulations.reproduce import cooperative_sgd, follow_ups, front, overlap_sgd
from simulations.reproduce.claim_runs import ClaimRuns
from simulations.reproduce.report import report
from simulations.reproduce.scale import (
    FOLLOW_UPS_FULL,
    FOLLOW_UPS_SMOKE,
    FULL,
    SMOKE,
    FollowUpScale,
    Scale,
)
from simulations.reproduce.verdicts import Claim


def claim_folders(scale: Scale, later: FollowUpScale) -> dict[str, list[RunConfig]]:
    """Every compare directory's configs, all checked before the first run starts."""
    return {  # the image grid first: it is the longest, and seed-major
        overlap_sgd.IMAGE_RUNS: overlap_sgd.image_configs(scale),
        cooperative_sgd.CONVEX_RUNS: cooperative_sgd.convex_configs(scale),
        cooperative_sgd.EASGD_RUNS: cooperative_sgd.easgd_configs(scale),
        follow_ups.ADACOMM_RUNS: follow_ups.adacomm_configs(later),
        follow_ups.MATCHA_RUNS: follow_ups.matcha_configs(later),
    }


def reproduce(
    scale: Scale, later: FollowUpScale, out: Path, runs: ClaimRuns
) -> tuple[list[Claim], float]:
    """Run (or reuse) every claim's experiments under runs.root and draw its figures into
    out/figures (`later`: the sizes of the follow-up papers' claims); the claims, and the
    wall time the runs they use took when they ran (each run's last recorded wall-time,
    summed), which a reusing invocation does not repeat."""
    figures = out / "figures"
    recorded = runs.run_all(claim_folders(scale, later))
    compute = sum(r.rows[-1]["wall-time"] for folder in recorded.values() for r in folder)

    def of(name: str) -> tuple[list, Path]:
        return recorded[name], runs.root / name

    convex, image = of(cooperative_sgd.CONVEX_RUNS), of(overlap_sgd.IMAGE_RUNS)
    claims = [
        cooperative_sgd.claim_floor(scale, *convex, figures),
        cooperative_sgd.claim_easgd(scale, *of(cooperative_sgd.EASGD_RUNS), figures),
        cooperative_sgd.claim_zeta_tau(scale, *convex, figures),
        overlap_sgd.claim_overlap_accuracy(scale, *image, figures),
        overlap_sgd.claim_skewed_stability(scale, *image, figures),
        front.claim_front(scale, *image, figures),
        follow_ups.claim_adacomm(later, *of(follow_ups.ADACOMM_RUNS), figures),
        follow_ups.claim_matcha(later, *of(follow_ups.MATCHA_RUNS), figures),
    ]
    return claims, compute


def main(argv: Sequence[str] | None = None) -> Path:
    """Parse the options, run everything, write the report; returns its path."""
    parser = argparse.ArgumentParser(
        prog="python -m simulations.reproduce", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", help="folder of reproductions*.md and figures/ (default: docs)")
    parser.add_argument(
        "--runs",
        help="folder for the runs (default: a new one per invocation); its finished runs of "
        "the same configs are reused, not run again",
    )
    parser.add_argument(
        "--archive",
        action="store_true",
        help="shrink every run used to its config and gzipped metrics (no model files), as "
        "the repository keeps runs (runs/README.md)",
    )
    parser.add_argument("--smoke", action="store_true", help="toy scale into a temp folder")
    args = parser.parse_args(argv)
    # Tiny models on shared cores: one thread avoids oversubscribing them;
    # the caller's setting comes back afterwards (tests share the process).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    scratch = Path(tempfile.mkdtemp(prefix="fedcoop-reproduce-")) if args.smoke else None
    out = Path(args.out) if args.out else (scratch or Path("docs"))
    default_runs = scratch or Path("~/fedcoop-runs").expanduser()
    runs_root = Path(args.runs) if args.runs else default_runs / f"reproduce-{stamp}"
    command = "python -m simulations.reproduce" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    scale = SMOKE if args.smoke else FULL
    later = FOLLOW_UPS_SMOKE if args.smoke else FOLLOW_UPS_FULL
    runs = ClaimRuns(runs_root.resolve(), archive=args.archive)
    start = time.perf_counter()
    try:
        claims, compute = reproduce(scale, later, out, runs)
        wall = time.perf_counter() - start
        path = report(
            claims, out, command, wall, scale, reused=runs.reused, runs=runs.ran, compute=compute
        )
    finally:
        torch.set_num_threads(threads)
    print(
        f"wrote {path} (runs under {runs_root}: {runs.ran} ran, {runs.reused} reused) in "
        f"{wall / 60:.1f} min ({wall:.0f} s) of wall time"
    )
    return path


if __name__ == "__main__":
    main()
