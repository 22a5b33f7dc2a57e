"""Reproduce the two papers' claims at small scale and write docs/reproductions.md.

python -m simulations.reproduce [--out docs] [--runs DIR] [--smoke]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from simulations.reproduce import cooperative_sgd, overlap_sgd
from simulations.reproduce.report import report
from simulations.reproduce.runner import run_claim
from simulations.reproduce.scale import FULL, SMOKE, Scale
from simulations.reproduce.verdicts import Claim


def reproduce(scale: Scale, out: Path, runs_root: Path) -> list[Claim]:
    """Run every claim's experiments into runs_root and draw its figures into out/figures."""
    figures = out / "figures"
    convex_dir = runs_root / cooperative_sgd.CONVEX_RUNS
    convex = run_claim(cooperative_sgd.convex_configs(scale), convex_dir)
    image_dir = runs_root / overlap_sgd.IMAGE_RUNS
    image = run_claim(overlap_sgd.image_configs(scale), image_dir)
    easgd_dir = runs_root / cooperative_sgd.EASGD_RUNS
    return [
        cooperative_sgd.claim_floor(scale, convex, convex_dir, figures),
        cooperative_sgd.claim_easgd(
            scale, run_claim(cooperative_sgd.easgd_configs(scale), easgd_dir), easgd_dir, figures
        ),
        cooperative_sgd.claim_zeta_tau(scale, convex, convex_dir, figures),
        overlap_sgd.claim_overlap_accuracy(scale, image, image_dir, figures),
        overlap_sgd.claim_front(scale, image, image_dir, figures),
    ]


def main(argv: Sequence[str] | None = None) -> Path:
    """Parse the options, run everything, write the report; returns its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder of reproductions.md and figures/ (default: docs)")
    parser.add_argument("--runs", help="folder for the runs (default: a new one per invocation)")
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
    start = time.perf_counter()
    try:
        claims = reproduce(scale, out, runs_root.resolve())
        path = report(claims, out, command, time.perf_counter() - start, scale)
    finally:
        torch.set_num_threads(threads)
    print(f"wrote {path} (runs under {runs_root})")
    return path


if __name__ == "__main__":
    main()
