"""deploy.flower_patches: the Flower waits it shortens, and its refusal on another Flower."""

from __future__ import annotations

import time
from collections.abc import Callable

import flwr
import flwr.supercore.heartbeat as heartbeat
import flwr.superlink.grid.http_grid as grid
import flwr.supernode.fleet_http_connection as connection
import flwr.supernode.runtime.run_clientapp as runtime
import flwr.supernode.start_client_internal as loop
import pytest

from deploy import flower_patches
from deploy.flower_patches import UnsupportedFlowerError

#: every Flower attribute a patch replaces, as (module, name)
PATCHED = [
    (connection, "HEARTBEAT_DEFAULT_INTERVAL"),
    (heartbeat, "HEARTBEAT_DEFAULT_INTERVAL"),
    (loop, "time"),
    (loop, "pull_objects"),
    (grid, "pull_objects"),
    (runtime, "pull_and_inflate_object_from_tree"),
]

PATCHES = [
    lambda: flower_patches.shorten_supernode_waits(0.01, 10.0),
    lambda: flower_patches.shorten_serverapp_retries(0.01, 5.0),
    lambda: flower_patches.shorten_task_input_retries(0.01),
]


@pytest.fixture
def restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a patch replaces in Flower's modules is put back after the test."""
    for module, name in PATCHED:
        monkeypatch.setattr(module, name, getattr(module, name))


@pytest.mark.parametrize("version", ["1.42.0", "2.0.0", "1.4.1"])
@pytest.mark.parametrize("patch", PATCHES, ids=["supernode", "serverapp", "task-input"])
def test_every_patch_refuses_another_flower_and_changes_nothing(
    version: str, patch: Callable[[], None], restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {(module.__name__, name): getattr(module, name) for module, name in PATCHED}
    monkeypatch.setattr(flwr, "__version__", version)
    with pytest.raises(UnsupportedFlowerError) as refused:
        patch()
    assert f"flwr {version} is installed" in str(refused.value)
    assert "Flower 1.41.x" in str(refused.value)
    after = {(module.__name__, name): getattr(module, name) for module, name in PATCHED}
    assert after == before


def test_a_patch_release_of_1_41_is_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flwr, "__version__", "1.41.3")
    flower_patches.check_flower_version()


def test_supernode_waits_are_capped_and_its_heartbeat_set(restored: None) -> None:
    flower_patches.shorten_supernode_waits(0.01, 12.0)
    assert connection.HEARTBEAT_DEFAULT_INTERVAL == heartbeat.HEARTBEAT_DEFAULT_INTERVAL == 12.0
    began = time.monotonic()
    loop.time.sleep(3)  # the SuperNode's wait after an empty pull
    assert time.monotonic() - began < 1
    assert loop.time.monotonic() >= began  # the rest of the time module is the real one
    assert loop.pull_objects.keywords == {"initial_backoff": 0.01, "backoff_cap": 1.0}


def test_serverapp_and_task_input_retries_are_shortened(restored: None) -> None:
    flower_patches.shorten_serverapp_retries(0.02, 7.0)
    flower_patches.shorten_task_input_retries(0.03)
    assert grid.pull_objects.keywords == {
        "initial_backoff": 0.02,
        "backoff_cap": 1.0,
        "max_time": 7.0,
    }
    assert runtime.pull_and_inflate_object_from_tree.keywords == {
        "initial_backoff": 0.03,
        "backoff_cap": 1.0,
    }
