"""Imports run one way, fedcoop <- clients <- strategies <- the rest (simulations, deploy,
benchmarks), with no circle among the project's modules; and the ServerApp that `flwr run`
loads from the top layer still writes the run's files.

The checker reads the sources with `ast`, imports inside functions included (a circle hidden
in a function is still a circle), so nothing is imported to check it.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from flwr.common.config import get_fused_config_from_dir, get_project_config
from flwr.supercore.object_ref import load_app

from clients.client_app import app as client_app
from simulations.inprocess import InProcessGrid
from strategies.server_app import run
from tests.conftest import least_squares_config

REPO = Path(__file__).resolve().parents[1]
#: the project's top-level packages, lowest layer first; a missing one (deploy/) is skipped
PACKAGES = ("fedcoop", "clients", "strategies", "simulations", "deploy", "benchmarks")
#: a package may import only its own layer or lower ones; the unnamed ones are all the top one
LAYER = {"fedcoop": 0, "clients": 1, "strategies": 2}


def imported(root: Path) -> dict[str, dict[str, set[str]]]:
    """Every module of the project under `root`: each module or package it imports from
    (absolute), with the names it takes from it (none for a plain ``import``)."""
    files = {
        ".".join(f.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): f
        for package in PACKAGES
        if (root / package).is_dir()
        for f in (root / package).rglob("*.py")
    }
    sources: dict[str, dict[str, set[str]]] = {}
    for module, path in files.items():
        here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        sources[module] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    sources[module].setdefault(alias.name, set())
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                source = ".".join([*base, *([node.module] if node.module else [])])
                sources[module].setdefault(source, set()).update(a.name for a in node.names)
    return sources


def layer_problems(root: Path) -> list[str]:
    """Each import against the layer order, and an import circle if there is one."""
    sources = imported(root)

    def layer(module: str) -> int:
        return LAYER.get(module.split(".")[0], len(LAYER))

    problems = sorted(
        f"{module} imports {source}"
        for module, imports in sources.items()
        for source in imports
        if source.split(".")[0] in PACKAGES and layer(source) > layer(module)
    )
    edges = {
        module: {
            name
            for source, names in imports.items()
            for name in (source, *(f"{source}.{n}" for n in names))
            if name in sources and name != module
        }
        for module, imports in sources.items()
    }
    try:
        graphlib.TopologicalSorter(edges).prepare()
    except graphlib.CycleError as error:
        # graphlib lists each module before the one that imports it: reversed, each module
        # imports the next; started at its first module in sorted order, to read the same
        circle = error.args[1][:0:-1]
        first = circle.index(min(circle))
        circle = circle[first:] + circle[:first]
        problems.append("circle: " + " -> ".join([*circle, circle[0]]))
    return problems


def test_the_project_imports_run_one_way_without_circles() -> None:
    assert layer_problems(REPO) == []


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"fedcoop/a.py": "import strategies.s\n", "strategies/s.py": ""},
            ["fedcoop.a imports strategies.s"],
        ),
        (
            {"strategies/server_app.py": "from simulations.results import write\n"},
            ["strategies.server_app imports simulations.results"],
        ),
        ({"clients/c.py": "def f():\n    from deploy import d\n"}, ["clients.c imports deploy"]),
        (
            {
                "fedcoop/a.py": "def f():\n    from fedcoop.b import g\n",
                "fedcoop/b.py": "from fedcoop import a\n",
            },
            ["circle: fedcoop.a -> fedcoop.b -> fedcoop.a"],
        ),
        (
            {
                "simulations/__init__.py": "",
                "simulations/x.py": "from . import y\n",
                "simulations/y.py": "from .z import f\n",
                "simulations/z.py": "import simulations.x\n",
            },
            ["circle: simulations.x -> simulations.y -> simulations.z -> simulations.x"],
        ),
        (  # every arrow the right way, deploy/ present or not
            {
                "fedcoop/core.py": "import numpy\n",
                "clients/c.py": "from fedcoop import core\n",
                "strategies/s.py": "import clients.c\nfrom fedcoop.core import f\n",
                "simulations/r.py": "from strategies import s\nimport deploy.d\n",
                "benchmarks/b.py": "import simulations.r\n",
            },
            [],
        ),
        (
            {
                "deploy/d.py": "from strategies import s\n",
                "benchmarks/b.py": "from deploy import d\n",
            },
            [],
        ),
    ],
    ids=[
        "core-imports-strategy",
        "flower-imports-experiment",
        "in-a-function",
        "circle",
        "relative-circle",
        "clean",
        "clean-deploy",
    ],
)
def test_the_checker_reports_a_wrong_arrow_or_a_circle(
    tmp_path: Path, files: dict[str, str], expected: list[str]
) -> None:
    assert layer_problems(_tree(tmp_path, files)) == expected


# --- the results writer across the layers -------------------------------------------------


def test_the_serverapp_flwr_run_loads_writes_the_run_directory(tmp_path: Path) -> None:
    """pyproject's serverapp, loaded and called as Flower's runtimes do, with a run config
    as `flwr run --run-config` fuses it, writes the files `fedcoop run` writes."""
    components = get_project_config(REPO)["tool"]["flwr"]["app"]["components"]
    server_app = load_app(components["serverapp"], ImportError, REPO)
    config = least_squares_config(num_clients=3, num_rounds=2, results_dir=str(tmp_path))
    run_config = get_fused_config_from_dir(REPO, config.to_mapping())
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    server_app(InProcessGrid(client_app, config.num_clients), context)
    (directory,) = tmp_path.iterdir()
    written = {p.name for p in directory.iterdir()}
    assert {
        "config.json",
        "metrics.jsonl",
        "metrics.csv",
        "final.json",
        "final-models.npz",
    } <= written
    assert len((directory / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("changes", [{"results_dir": "runs"}, {"resume": "runs/a-run"}])
def test_the_server_refuses_files_it_has_no_writer_for(changes: dict[str, str]) -> None:
    config = least_squares_config(**changes)
    with pytest.raises(ValueError, match="no results writer"):
        run(InProcessGrid(client_app, config.num_clients), config)
