"""The README stays a newcomer's page whose commands, example and map still work (its links and
size: tests/test_docs.py)."""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
#: [text](target) links and ![alt](target) images of a markdown page
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def blocks(page: Path, language: str) -> list[str]:
    """The fenced code blocks of `page` in `language`."""
    return re.findall(rf"^```{language}\n(.*?)^```$", page.read_text(), re.S | re.M)


def run_block(code: str) -> tuple[dict[str, object], str]:
    """Execute a page's Python example as a script would; its namespace and its output."""
    namespace: dict[str, object] = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<example>", "exec"), namespace)
    return namespace, out.getvalue()


def test_the_readme_is_under_ten_thousand_characters() -> None:
    assert len(README.read_text()) < 10_000


def test_the_readme_has_the_two_set_up_commands_and_ci_runs_the_second() -> None:
    install_and_run, install_and_test = blocks(README, "bash")
    assert "pip install -e . " in install_and_run and "flwr run . --stream" in install_and_run
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert install_and_test.strip() == ci_command
    assert "python -m pytest -m slow" in README.read_text()


def test_the_readme_python_example_runs() -> None:
    (code,) = blocks(README, "python")
    assert len(code.strip().splitlines()) <= 10
    namespace, output = run_block(code)
    config, result = namespace["config"], namespace["result"]
    assert len(result.rounds) == config.num_rounds
    accuracy = result.rounds[-1]["test-accuracy"]
    assert 0 <= accuracy <= 1 and f"{accuracy:.4f}" in output
    assert result.workers.shape[0] == config.num_clients and math.isfinite(result.workers.sum())


def test_the_python_api_page_example_runs() -> None:
    (code,) = blocks(DOCS / "python-api.md", "python")
    namespace, _ = run_block(code)
    assert namespace["spec"].num_aux == 1 and Path(namespace["path"]).is_file()


def test_every_docs_page_is_in_the_readme_map() -> None:
    linked = set(_LINK.findall(README.read_text()))
    missing = {f"docs/{page.name}" for page in DOCS.glob("*.md")} - linked
    assert not missing, f"README's documentation map lacks {sorted(missing)}"
