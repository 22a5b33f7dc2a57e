"""deploy.flower_patches: the Flower waits it shortens, the stale messages it drops, its refusal
on another Flower, and the refused task token the long-lived ClientApp rides out."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import flwr
import flwr.supercore.heartbeat as heartbeat
import flwr.superlink.grid.http_grid as grid
import flwr.superlink.main as superlink_app
import flwr.supernode.fleet_http_connection as connection
import flwr.supernode.main as supernode_app
import flwr.supernode.runtime.run_clientapp as runtime
import flwr.supernode.servicer.runtime.runtime_handlers as runtime_handlers
import flwr.supernode.start_client_internal as loop
import httpx
import pytest
from flwr.common.config import get_project_dir
from flwr.common.constant import SubStatus
from flwr.proto.fab_pb2 import Fab
from flwr.proto.run_pb2 import Run
from flwr.proto.runtime_pb2 import PullTaskInputResponse
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.run import RunNotRunningException

from deploy import flower_patches
from deploy.clientapp_server import _wait, _wake_socket, task_retry_invoker
from deploy.flower_patches import UnsupportedFlowerError

pytestmark = pytest.mark.flower

#: every Flower attribute a patch replaces, as (module, name)
PATCHED = [
    (connection, "HEARTBEAT_DEFAULT_INTERVAL"),
    (heartbeat, "HEARTBEAT_DEFAULT_INTERVAL"),
    (loop, "time"),
    (loop, "pull_objects"),
    (loop, "_pull_and_store_message"),
    (grid, "pull_objects"),
    (grid.HttpGrid, "push_messages"),
    (grid.HttpGrid, "pull_messages"),
    (runtime, "pull_and_inflate_object_from_tree"),
    (runtime_handlers, "pull_task_input"),
    *(
        (app, name)
        for app in (superlink_app, supernode_app)
        for name in flower_patches.path_scoped_middleware(app.__name__)
    ),
]

PATCHES = [
    lambda: flower_patches.shorten_supernode_waits(0.01, 10.0, 1.0, 9),
    lambda: flower_patches.shorten_serverapp_retries(0.01, 5.0, 1.0),
    lambda: flower_patches.shorten_task_input_retries(0.01),
    flower_patches.omit_installed_app_content,
    flower_patches.drop_messages_of_stopped_runs,
    lambda: flower_patches.skip_middleware_off_its_paths(superlink_app.__name__),
    lambda: flower_patches.skip_middleware_off_its_paths(supernode_app.__name__),
]


@pytest.fixture
def restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a patch replaces in Flower's modules is put back after the test."""
    for module, name in PATCHED:
        monkeypatch.setattr(module, name, getattr(module, name))


@pytest.mark.parametrize("version", ["1.43.0", "1.40.2", "2.0.0", "1.4.1"])
@pytest.mark.parametrize(
    "patch",
    PATCHES,
    ids=["supernode", "serverapp", "task-input", "fab", "stopped-run", "link-http", "node-http"],
)
def test_every_patch_refuses_another_flower_and_changes_nothing(
    version: str, patch: Callable[[], None], restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {(module, name): getattr(module, name) for module, name in PATCHED}
    monkeypatch.setattr(flwr, "__version__", version)
    with pytest.raises(UnsupportedFlowerError) as refused:
        patch()
    assert f"flwr {version} is installed" in str(refused.value)
    assert "Flower 1.41.x or 1.42.x" in str(refused.value)
    assert "'flwr>=1.41,<1.43'" in str(refused.value)
    after = {(module, name): getattr(module, name) for module, name in PATCHED}
    assert after == before


@pytest.mark.parametrize(("version", "release"), [("1.41.3", "1.41"), ("1.42.1", "1.42")])
def test_a_patch_release_of_a_supported_flower_is_supported(
    monkeypatch: pytest.MonkeyPatch, version: str, release: str
) -> None:
    monkeypatch.setattr(flwr, "__version__", version)
    assert flower_patches.check_flower_version() == release


def test_supernode_waits_are_capped_and_its_heartbeat_set(restored: None) -> None:
    flower_patches.shorten_supernode_waits(0.01, 12.0, idle_poll=None)
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


def test_backoff_grows_to_its_cap_and_resets() -> None:
    pace = flower_patches.Backoff(0.1, 0.5, factor=2.0)
    assert [pace.next() for _ in range(5)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    pace.reset()
    assert pace.next() == pytest.approx(0.1)


def test_backoff_starts_at_its_share_of_the_last_wait() -> None:
    """After a message that took 1.5 s to come, the polls start at a quarter of that; a
    message that comes at once (the next reset) brings the start back to `fast`, and the
    start never passes the cap."""
    pace = flower_patches.Backoff(0.1, 1.0, factor=2.0, start_share=0.25)
    assert [pace.next() for _ in range(4)] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    pace.reset()  # the message came after 1.5 s of waits
    assert [pace.next() for _ in range(2)] == pytest.approx([0.375, 0.75])
    pace.reset()  # after 1.125 s
    assert pace.next() == pytest.approx(0.28125)
    pace.reset()  # at the first poll: 0.28 s
    assert pace.next() == pytest.approx(0.1)  # a quarter of 0.28 s is under `fast`
    for _ in range(20):
        pace.next()
    pace.reset()  # after a long idle wait
    assert pace.next() == pytest.approx(1.0)


def test_supernode_backs_off_while_idle_and_wakes_its_clientapp_on_a_task(
    restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    got: list[int | None] = [None, None, None, 7, None]
    monkeypatch.setattr(loop, "_pull_and_store_message", lambda **_: got.pop(0))
    woken = _wake_socket(0)  # a free port
    assert woken is not None
    port = woken.getsockname()[1]
    flower_patches.shorten_supernode_waits(0.01, 10.0, idle_poll=0.02, wake_port=port)
    for _ in range(5):
        if loop._pull_and_store_message() is None:
            loop.time.sleep(3)  # Flower's wait after an empty pull
    loop.time.sleep(0.5)  # Flower's wait for the ClientApp's reply: capped at poll-interval
    # 1.5x per empty pull up to idle-poll; after the message (run 7), which took 0.045 s
    # of waits to come, from a quarter of that
    assert waits == pytest.approx([0.01, 0.015, 0.02, 0.01125, 0.01])
    monkeypatch.undo()  # the real time.sleep for select
    assert _wait(woken, 5.0) is True  # the wake-up of run 7's task had come
    assert _wait(woken, 0.01) is False  # drained: one wake-up per task
    woken.close()


class _NodeStore:
    """The SuperNode's NodeState and ObjectStore as Flower's loop uses them while it takes a
    message of run 7, recording what happens to the message and its task."""

    def __init__(self) -> None:
        self.stored: list[str] = []
        self.finished: dict[int, str] = {}

    def get_run(self, run_id: int) -> Any:
        return SimpleNamespace(primary_task_type="clientapp", fab_hash="f")

    def create_task(self, **_: Any) -> int:
        return 11

    def preregister(self, run_id: int, tree: Any) -> list[str]:
        return ["content"]

    def store_message(self, message: Any) -> None:
        self.stored.append(message.metadata.message_id)

    def delete_messages(self, message_ids: list[str]) -> None:
        self.stored = [m for m in self.stored if m not in message_ids]

    def delete(self, message_id: str) -> None:
        pass

    def finish_task(self, task_id: int, sub_status: str, details: str) -> None:
        self.finished[task_id] = sub_status


def _take_message_of_a_run_that_stops() -> _NodeStore:
    """Flower's SuperNode loop takes a message whose run is finished before its content is
    pulled (the SuperLink answers the pull with "Run is finished")."""
    store = _NodeStore()
    metadata = SimpleNamespace(run_id=7, group_id="12", message_type="train", message_id="m")

    def pull_object(run_id: int, object_id: str) -> bytes:
        raise RunNotRunningException

    got = loop._pull_and_store_message(
        state=store, object_store=store, node_config={},
        receive=lambda: (SimpleNamespace(metadata=metadata), None),
        get_run=None, get_fab=None, pull_object=pull_object,
        confirm_message_received=None, trusted_entities=None,
    )  # fmt: skip
    assert got is None  # no task for the ClientApp
    return store


def test_a_message_whose_run_stops_while_it_is_pulled_is_dropped_with_its_task(
    restored: None,
) -> None:
    """Flower 1.41 leaves the task pending with a message whose content never comes (the
    ClientApp takes it and retries for minutes); patched, the loop drops the message and
    fails the task, as after any failed pull."""
    leaked = _take_message_of_a_run_that_stops()
    assert leaked.stored == ["m"] and leaked.finished == {}
    flower_patches.drop_messages_of_stopped_runs()
    dropped = _take_message_of_a_run_that_stops()
    assert dropped.stored == [] and dropped.finished == {11: SubStatus.FAILED}


def _refused_token() -> None:
    request = httpx.Request("POST", "http://127.0.0.1:9094/v1/runtime/pull-object")
    response = httpx.Response(401, request=request)
    raise httpx.HTTPStatusError("401 Unauthorized", request=request, response=response)


def test_a_refused_task_token_fails_the_task_without_ending_the_long_lived_clientapp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Flower's retries answer a 401 (the SuperNode failed the task) with SIGINT to their own
    process, the end of a one-task flwr-clientapp; the long-lived ClientApp's give up on it
    and raise, so that it fails the task and serves the next one."""
    signals: list[int] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: signals.append(sig))
    monkeypatch.setattr(time, "sleep", lambda _: None)
    with pytest.raises(httpx.HTTPStatusError):
        make_simple_http_retry_invoker().invoke(_refused_token)
    assert signals == [signal.SIGINT]
    with pytest.raises(httpx.HTTPStatusError):
        task_retry_invoker().invoke(_refused_token)
    assert signals == [signal.SIGINT]  # no second one


def test_a_clientapp_without_its_wake_port_polls(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        assert _wake_socket(taken.getsockname()[1]) is None
    assert "polling" in capsys.readouterr().err
    assert _wake_socket(None) is None
    began = time.monotonic()
    assert _wait(None, 0.05) is False
    assert time.monotonic() - began >= 0.05


def test_serverapp_pulls_that_bring_nothing_back_off_until_a_push(
    restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    replies: list[list[str]] = [[], [], [], ["reply"], []]
    pulled: list[float] = []

    def pull(self: Any, ids: Any) -> list[str]:
        pulled.append(time.monotonic())
        return replies.pop(0)

    monkeypatch.setattr(grid.HttpGrid, "pull_messages", pull)
    monkeypatch.setattr(grid.HttpGrid, "push_messages", lambda self, messages: ["id"])
    flower_patches.shorten_serverapp_retries(0.04, 5.0, idle_poll=0.06)
    assert list(grid.HttpGrid.pull_messages(None, ["id"])) == []  # at once
    assert list(grid.HttpGrid.pull_messages(None, ["id"])) == []  # 0.04 s later
    assert list(grid.HttpGrid.pull_messages(None, ["id"])) == []  # 0.06 s later (the cap)
    assert grid.HttpGrid.push_messages(None, []) == ["id"]  # replies are due: no wait
    assert list(grid.HttpGrid.pull_messages(None, ["id"])) == ["reply"]
    assert list(grid.HttpGrid.pull_messages(None, ["id"])) == []  # at once after a reply
    gaps = [b - a for a, b in itertools.pairwise(pulled)]
    assert gaps[0] >= 0.04 and gaps[1] >= 0.06
    assert gaps[2] < 0.04 and gaps[3] < 0.04


@pytest.mark.parametrize("installed", [True, False])
def test_a_task_s_app_comes_without_content_once_installed(
    installed: bool, restored: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    run = Run(run_id=1, fab_id="fedcoop/fedcoop", fab_version="0.1.0", fab_hash="ab" * 32)
    response = PullTaskInputResponse(run=run, fab=Fab(hash_str="ab" * 32, content=b"zip"))
    monkeypatch.setattr(runtime_handlers, "pull_task_input", lambda *_: response)
    if installed:
        get_project_dir(run.fab_id, run.fab_version, run.fab_hash).mkdir(parents=True)
    flower_patches.omit_installed_app_content()
    served = runtime_handlers.pull_task_input(None, None, SimpleNamespace())
    assert served.fab.hash_str == "ab" * 32
    assert served.fab.content == (b"" if installed else b"zip")


def _recording_app(prefix: str | None) -> tuple[Any, list[str]]:
    """A Starlette app behind one BaseHTTPMiddleware that records the paths it saw and
    stamps its responses, scoped to `prefix` by only_under."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    seen: list[str] = []

    class Recording(BaseHTTPMiddleware):
        async def dispatch(self, request: Any, call_next: Any) -> Any:
            seen.append(request.url.path)
            response = await call_next(request)
            response.headers["x-seen"] = "1"
            return response

    async def echo(request: Any) -> PlainTextResponse:
        return PlainTextResponse(request.url.path)

    routes = [Route(f"/v1/{api}/call", echo, methods=["POST"]) for api in ("fleet", "runtime")]
    scoped = flower_patches.only_under(prefix, Recording)
    return Starlette(routes=routes, middleware=[Middleware(scoped)]), seen


def test_path_scoped_middleware_runs_on_its_paths_and_no_other() -> None:
    from starlette.testclient import TestClient

    app, seen = _recording_app("/v1/fleet/")
    with TestClient(app) as client:
        fleet, runtime = client.post("/v1/fleet/call"), client.post("/v1/runtime/call")
    assert (fleet.text, fleet.headers.get("x-seen")) == ("/v1/fleet/call", "1")
    assert (runtime.text, runtime.headers.get("x-seen")) == ("/v1/runtime/call", None)
    assert seen == ["/v1/fleet/call"]
    app, seen = _recording_app(None)  # never: the tracing middleware with tracing off
    with TestClient(app) as client:
        assert client.post("/v1/fleet/call").text == "/v1/fleet/call"
    assert seen == []


@pytest.mark.parametrize("tracing", [False, True])
@pytest.mark.parametrize("event_log", [False, True])
def test_the_superlink_keeps_every_middleware_in_order_scoped_to_its_paths(
    tracing: bool, event_log: bool, restored: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The patched SuperLink app has Flower's middleware stack, layer for layer, with the
    control, fleet and tracing layers wrapped (tracing: only while enabled; event log: only
    with --enable-event-log) and the error and protobuf translation layers, which act on
    every request, as they were."""
    if tracing:
        monkeypatch.setenv("FLWR_TRACING_ENABLED", "1")
    else:
        monkeypatch.delenv("FLWR_TRACING_ENABLED", raising=False)
    before = [m.cls for m in superlink_app._get_middleware()]
    flower_patches.skip_middleware_off_its_paths(superlink_app.__name__, event_log=event_log)
    after = superlink_app._get_middleware()
    scoped = flower_patches.path_scoped_middleware(superlink_app.__name__)
    assert len(after) == len(before)
    for original, layer in zip(before, after, strict=True):
        if original.__name__ in scoped:
            assert layer.cls.__name__ == f"OnlyUnder{original.__name__}"
            paths = scoped[original.__name__]
            if original.__name__ == "RuntimeTracingMiddleware" and not tracing:
                paths = None
            if original.__name__.endswith("EventLogMiddleware") and not event_log:
                paths = None
            assert layer.cls.paths == paths
        else:
            assert layer.cls is original
    # every scoped name is a layer of Flower's stack (none is a stale name)
    assert sum(layer.cls.__name__.startswith("OnlyUnder") for layer in after) == len(scoped)


# --- canaries: the Flower source each patch was written against ---------------------------

#: sha256 (first 16 hex digits) of every Flower module a patch replaces an attribute of or
#: reads, per supported release: a patch release that changes one fails here, so that the
#: patch is read against the new source before the digest is updated
_SAME_IN_BOTH = {
    "flwr.supernode.start_client_internal": "d6342f743fdf768f",
    "flwr.supercore.heartbeat": "5eee250956e13a9b",
    "flwr.supernode.fleet_http_connection": "8b90826f407ab5d3",
    "flwr.supernode.servicer.runtime.runtime_handlers": "841b531c097871ea",
    "flwr.superlink.grid.http_grid": "0c33918af5016310",
    "flwr.supernode.runtime.run_clientapp": "fa6612aaeda9cd39",
    "flwr.supercore.run": "9d03b51229f1f386",
}
PATCHED_SOURCES = {
    "1.41": {
        **_SAME_IN_BOTH,
        "flwr.superlink.main": "3e94714b6f1433fd",
        "flwr.supernode.main": "cad7e371678f766c",
    },
    "1.42": {  # the runtime tracing middleware dropped from both apps
        **_SAME_IN_BOTH,
        "flwr.superlink.main": "500f01979e167243",
        "flwr.supernode.main": "cc2513314fc8a300",
    },
}


def test_every_supported_release_has_its_digests() -> None:
    assert set(PATCHED_SOURCES) == set(flower_patches.SUPPORTED_FLOWER)


@pytest.mark.parametrize("module_name", list(PATCHED_SOURCES["1.41"]))
def test_the_patched_flower_source_is_the_one_the_patches_were_written_against(
    module_name: str,
) -> None:
    import hashlib
    import importlib

    release = flower_patches.check_flower_version()
    path = importlib.import_module(module_name).__file__
    with open(path, "rb") as source:
        digest = hashlib.sha256(source.read()).hexdigest()[:16]
    assert digest == PATCHED_SOURCES[release][module_name], (
        f"{path} of flwr {flwr.__version__} differs from the {release} source that "
        "deploy.flower_patches was written against: read the patches against it"
    )


def test_the_supernode_loop_still_waits_the_literal_the_patch_recognises() -> None:
    """_SuperNodeClock tells the idle wait from the others by its literal 3 s."""
    import inspect

    source = inspect.getsource(loop)
    wait = flower_patches._SUPERNODE_IDLE_WAIT
    assert source.count(f"time.sleep({wait})") == 1
    assert all(f"time.sleep({s})" not in source for s in range(1, 10) if s != wait)
