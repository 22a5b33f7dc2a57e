"""The benchmark scripts run and print the lines they promise, at a tiny size in a
subprocess (the way they are run); their figures are never asserted, only parsed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENGINES = ["inprocess", "vectorized"]
TINY = ["--rounds", "1", "--model", "logreg", "--engines", ",".join(ENGINES), "--threads", "1"]


def figures(script: str, *args: str) -> dict[tuple[str, ...], float]:
    """The script's `<what> <engine> [m=<m>] <number>` lines, keyed by all but the number."""
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = {}
    for line in done.stdout.splitlines()[1:]:  # the first line describes the run
        *key, value = line.split()
        out[tuple(key)] = float(value)
    return out


def test_overhead_times_the_bare_loop_and_each_chosen_engine() -> None:
    out = figures("overhead.py", "--clients", "2", "--tau", "2", *TINY)
    assert list(out) == [
        ("seconds-per-round", "bare"),
        *[(what, e) for e in ENGINES for what in ("seconds-per-round", "start-up")],
        *[("overhead-ratio", e) for e in ENGINES],
    ]
    assert all(out["seconds-per-round", e] > 0 for e in ["bare", *ENGINES])
    assert all(out["overhead-ratio", e] > 0 for e in ENGINES)


def test_final_eval_times_the_tail_per_evaluation_sample() -> None:
    out = figures(
        "final_eval.py",
        *("--clients", "4", "--cohort", "2", "--workers", "0", "--samples", "0,50"),
        *("--model", "logreg", "--engine", "inprocess", "--threads", "1"),
    )
    assert list(out) == [
        ("worker-eval-seconds", "eval-samples=0"),
        ("worker-eval-seconds", "eval-samples=50"),
        ("eval-ratio", "eval-samples=0"),
        ("eval-ratio", "eval-samples=50"),
    ]
    assert out["eval-ratio", "eval-samples=0"] == 1
    assert out["worker-eval-seconds", "eval-samples=50"] > 0


#: each engine runs in a process of its own there: few, to keep the test short
SCALE = ["--cohort", "2", "--tau", "2", "--dataset", "mnist-embedded", "--rounds", "1"]
SCALE += ["--model", "logreg", "--threads", "1"]


@pytest.mark.slow  # a process per engine: a minute or more
def test_scale_reports_time_and_memory_per_engine() -> None:
    out = figures("scale.py", "--clients", "4", *SCALE, "--engines", ",".join(ENGINES))
    for engine in ["bare", *ENGINES]:
        assert out["seconds-per-round", engine] > 0
        assert out["peak-rss-mib", engine] >= out["import-rss-mib", engine] > 0
    assert [k for k in out if k[0] == "overhead-ratio"] == [("overhead-ratio", e) for e in ENGINES]


@pytest.mark.slow  # a process per engine: a minute or more
def test_the_m_sweep_reports_each_m_against_the_first() -> None:
    out = figures("scale.py", "--m-sweep", "--m-values", "2,4", *SCALE, "--engines", "vectorized")
    ratios = {k[1:]: v for k, v in out.items() if k[0] == "m-ratio"}
    assert list(ratios) == [(e, f"m={m}") for e in ("bare", "vectorized") for m in (2, 4)]
    assert ratios["bare", "m=2"] == ratios["vectorized", "m=2"] == 1.0
    assert all(out["seconds-per-round", e, "m=4"] > 0 for e in ("bare", "vectorized"))


def _bench_processes() -> list[str]:
    """Command lines of live processes of a benchmark deployment (its temporary directory)."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes() if entry.name.isdigit() else b""
        except OSError:
            continue
        if b"fedcoop-deploy-bench-" in cmdline:
            out.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return out


@pytest.mark.slow  # two loopback deployments with TLS and node auth: a few minutes
def test_the_deployment_sweep_reports_overhead_idle_cpu_and_rss_and_stops_its_processes(
    tmp_path: Path,
) -> None:
    out = tmp_path / "sweep.json"
    args = ["overhead", "--nodes", "2", "3", "--rounds", "3", "--skip-default"]
    args += ["--idle-seconds", "4", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "deployment.py"), *args],
        capture_output=True, text=True, check=False, cwd=REPO, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    assert list(results) == ["2", "3"]
    for figures in results.values():
        assert figures["s-per-round"] > figures["simulated-s-per-round"] > 0
        assert set(figures["peak-rss-mb"]) == {"superlink", "serverapp", "supernode", "clientapp"}
        assert set(figures["run-cpu-s-per-round"]) == set(figures["peak-rss-mb"])
        # an idle device process waits for a wake-up or backs off: it does not spin (the
        # target is 2 % of a core; 10 leaves room for a loaded machine)
        assert figures["idle-cpu"]["supernode"][1] < 10
        assert figures["idle-cpu"]["clientapp"][1] < 10
    assert "| 3 |" in done.stdout  # the table's row
    assert _bench_processes() == []  # every process it started is stopped


def _gpu_check(*args: str, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )


def test_the_gpu_check_refuses_an_unknown_option(tmp_path: Path) -> None:
    done = _gpu_check("--fast", out=tmp_path)
    assert done.returncode == 2 and "usage:" in done.stderr


@pytest.mark.slow  # every stage at smoke size: about a minute
def test_the_gpu_checks_dry_run_passes_every_stage_and_writes_one_report(tmp_path: Path) -> None:
    done = _gpu_check("--dry-run", out=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    report = (tmp_path / "gpu-check.txt").read_text()
    stages = ["install", "environment", "gpu-tests", "overhead", "scale-50", "scale-1000"]
    assert [s for s in stages if f"## {s}: rc 0 in" in report] == stages
    assert "overhead-ratio vectorized" in report and "peak-rss-mib inprocess" in report
    assert report.rstrip().splitlines()[-1].startswith("## failed stages: 0")
