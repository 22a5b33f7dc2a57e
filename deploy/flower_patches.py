"""Flower 1.41 and 1.42 waits, app hand-over and one message leak changed at run time, for
those releases only.

Flower 1.41 and 1.42 have no option for any of them: `flower-supernode` has flags for its connection
retries but none for its idle waits or heartbeat, `flwr-serverapp` only takes addresses,
the SuperNode loop (flwr.supernode.start_client_internal) sleeps a literal 3 s and 0.5 s,
the heartbeat interval is the constant flwr.common.constant.HEARTBEAT_DEFAULT_INTERVAL, the
retry waits for an object still arriving are the defaults of `pull_objects` and
`pull_and_inflate_object_from_tree` (PULL_INITIAL_BACKOFF and friends in
flwr.supercore.constant, read from no environment variable), the ServerApp's Grid pulls as
often as its strategy asks, the SuperNode's Runtime API sends the whole app with every
task, a SuperNode that pulls a message while its run stops keeps the message's task
pending with no content (`drop_messages_of_stopped_runs`), and every request to the
SuperLink passes nine middleware layers, most of which act on one API's paths only
(`skip_middleware_off_its_paths`). So each patch replaces the
attribute a Flower module looks these up by, in the one process that calls it, and refuses
on a Flower other than 1.41.x or 1.42.x, whose internals it was not written for. The two
releases differ here only in their middleware (1.42 dropped the runtime tracing layer:
`path_scoped_middleware`); tests/test_flower_patches.py holds a digest of each patched Flower
module per release and fails when the installed one differs, so a new release is read before
it is added to `SUPPORTED_FLOWER`."""

from __future__ import annotations

import contextlib
import functools
import socket
import time
from collections.abc import Callable
from typing import Any

#: the Flower releases (major.minor) whose internals these patches were written against
SUPPORTED_FLOWER = ("1.41", "1.42")


class UnsupportedFlowerError(RuntimeError):
    """The installed Flower is not the one the patches were written for."""


def flower_release() -> str:
    """The installed Flower's major.minor ("1.42")."""
    import flwr

    return ".".join(flwr.__version__.split(".")[:2])


def check_flower_version() -> str:
    """The installed Flower's release; UnsupportedFlowerError unless it is one of
    `SUPPORTED_FLOWER`."""
    import flwr

    release = flower_release()
    if release not in SUPPORTED_FLOWER:
        supported = " or ".join(f"{r}.x" for r in SUPPORTED_FLOWER)
        raise UnsupportedFlowerError(
            f"deploy.flower_patches shortens Flower internals as Flower {supported} has them, "
            f"but flwr {flwr.__version__} is installed: install "
            f"'flwr>={SUPPORTED_FLOWER[0]},<{_next_minor(SUPPORTED_FLOWER[-1])}', "
            "or check each patch against the installed Flower's source first"
        )
    return release


def _next_minor(release: str) -> str:
    major, minor = release.split(".")
    return f"{major}.{int(minor) + 1}"


def _backoff(poll_interval: float) -> dict[str, float]:
    """Retry waits for a message's content that is still arriving (Flower's: 1 s, doubling)."""
    return {"initial_backoff": poll_interval, "backoff_cap": 1.0}


class Backoff:
    """Poll waits that start at `fast` and grow by `factor` after every empty poll up to
    `cap`; reset() when a poll brought something, as the next one is then due soon.

    A process waiting for a message that is late (a round's barrier, a run not yet
    submitted) thus polls about log(wait / fast) / log(factor) times rather than wait / fast
    times, and a message is picked up at most (factor - 1) x the time already waited (at
    most `cap`) after it arrived.

    With `start_share`, the waits after a reset start at that share of the time the last
    message took to come (between `fast` and `cap`): a device whose messages come a round
    apart skips the fast polls early in each wait, and a message that comes sooner than
    that share of the last wait is picked up at most that much later.
    """

    def __init__(
        self, fast: float, cap: float, factor: float = 1.5, start_share: float = 0.0
    ) -> None:
        self.fast, self.cap, self.factor = fast, max(cap, fast), factor
        self.start_share = start_share
        self._wait, self._waited = fast, 0.0

    def next(self) -> float:
        """The wait before the next poll (this one came back empty)."""
        wait, self._wait = self._wait, min(self.cap, self._wait * self.factor)
        self._waited += wait
        return wait

    def reset(self) -> None:
        start = self.start_share * self._waited
        self._wait, self._waited = min(self.cap, max(self.fast, start)), 0.0


#: the share of its last wait for a message at which a SuperNode's polls start after a
#: message: a quarter spares it about four of the seven polls a 1.3 s wait took from 0.05 s
#: (1.5x each), and delays a message that comes sooner by at most a quarter of that wait
IDLE_START_SHARE = 0.25

#: the SuperNode loop's literal wait after an empty pull (flwr.supernode.start_client_internal)
_SUPERNODE_IDLE_WAIT = 3


class _SuperNodeClock:
    """The time module for Flower's SuperNode loop: its wait after an empty pull follows
    `idle` (a Backoff), every other wait (for the ClientApp's reply) is capped at `fast`."""

    def __init__(self, fast: float, idle: Backoff) -> None:
        self.fast, self.idle = fast, idle

    def sleep(self, seconds: float) -> None:
        time.sleep(self.idle.next() if seconds == _SUPERNODE_IDLE_WAIT else min(seconds, self.fast))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def wake(port: int) -> Callable[[], None]:
    """A function that tells the ClientApp listening on UDP 127.0.0.1:`port` that a task is
    waiting (a lost datagram costs only the ClientApp's next idle poll)."""
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send() -> None:
        with contextlib.suppress(OSError):
            sender.sendto(b"task", ("127.0.0.1", port))

    return send


def shorten_supernode_waits(
    poll_interval: float,
    heartbeat_interval: float,
    idle_poll: float | None = None,
    wake_port: int | None = None,
) -> None:
    """The SuperNode polls the SuperLink every `poll_interval` after a message and backs off
    to `idle_poll` while none comes, its other waits are capped at `poll_interval`, its
    heartbeat interval is set, and each task it creates wakes the ClientApp on `wake_port`.

    Flower's SuperNode loop sleeps a literal 3 s after every empty pull, 0.5 s between
    checks for the ClientApp's reply, and backs off 1 s when it asks for a message's content
    before the server has finished pushing it (flwr.supernode.start_client_internal); each
    adds seconds to a round, while fixed fast polling by every SuperNode loads the SuperLink
    in proportion to the number of devices. The heartbeat interval, which Flower hard-codes
    to 30 s, is the one the SuperNode reports and the one its heartbeat thread sends at: the
    SuperLink reports the node unavailable 2 intervals after its last heartbeat, so a
    shorter one finds a dead device sooner. `idle_poll` None: never back off.
    """
    check_flower_version()
    import flwr.supercore.heartbeat as heartbeat
    import flwr.supernode.fleet_http_connection as connection
    import flwr.supernode.start_client_internal as loop

    idle = Backoff(
        poll_interval,
        poll_interval if idle_poll is None else idle_poll,
        start_share=IDLE_START_SHARE,
    )
    notify = None if wake_port is None else wake(wake_port)
    pull = loop._pull_and_store_message

    @functools.wraps(pull)
    def pull_and_wake(*args: Any, **kwargs: Any) -> int | None:
        run_id = pull(*args, **kwargs)
        if run_id is not None:  # a task for the ClientApp: the next message is due soon
            idle.reset()
            if notify is not None:
                notify()
        return run_id

    connection.HEARTBEAT_DEFAULT_INTERVAL = heartbeat_interval  # type: ignore[assignment]
    heartbeat.HEARTBEAT_DEFAULT_INTERVAL = heartbeat_interval  # type: ignore[assignment]
    loop.time = _SuperNodeClock(poll_interval, idle)  # type: ignore[assignment]
    loop.pull_objects = functools.partial(loop.pull_objects, **_backoff(poll_interval))
    loop._pull_and_store_message = pull_and_wake  # type: ignore[assignment]


class RunStoppedWhilePulling(Exception):
    """A message's run stopped while the SuperNode pulled its content: an ordinary error,
    which Flower's SuperNode loop answers by dropping the message and failing its task."""


def drop_messages_of_stopped_runs() -> None:
    """The SuperNode drops a message whose run stops while it pulls the message's content,
    and fails the task it created for it, as it does when such a pull fails otherwise.

    Flower's SuperNode loop (flwr.supernode.start_client_internal
    `_pull_and_store_message`) creates the message's task and stores the message before it
    pulls the content. A pull that fails (`except Exception`) deletes the message and fails
    the task, but one refused because the run is no longer running raises
    RunNotRunningException, a BaseException, which only the loop's outer handler catches:
    it logs "Ignoring message" and leaves the task pending, its message's content never to
    come. The ClientApp then takes that task and retries the content for minutes, and the
    long-lived ClientApp serves one task at a time: after a SuperLink restart (the killed
    run is then finished), every SuperNode that was pulling when it died missed the next
    run's messages that long. The same follows `flwr stop` during a pull.
    """
    check_flower_version()
    import flwr.supernode.start_client_internal as loop
    from flwr.supercore.run import RunNotRunningException

    pull = loop.pull_objects

    @functools.wraps(pull)
    def pull_objects(*args: Any, **kwargs: Any) -> Any:
        try:
            return pull(*args, **kwargs)
        except RunNotRunningException:
            raise RunStoppedWhilePulling("the message's run is no longer running") from None

    loop.pull_objects = pull_objects  # type: ignore[assignment]


def omit_installed_app_content() -> None:
    """The SuperNode hands a task's app (FAB) without its content once the app is installed
    in this FLWR_HOME, which its long-lived ClientApp (deploy.clientapp_server, started with
    the same FLWR_HOME) then loads from there.

    Flower's Runtime API sends the whole FAB with every task
    (flwr.supernode.servicer.runtime.runtime_handlers.pull_task_input): 2.6 MB here, with
    the embedded MNIST, serialised, sent and parsed for every message although the ClientApp
    installs it once. Flower's own install (flwr.cli.install.install_from_fab) also takes an
    installed directory as it is.
    """
    check_flower_version()
    import flwr.supernode.servicer.runtime.runtime_handlers as handlers
    from flwr.common.config import get_project_dir

    pull = handlers.pull_task_input

    @functools.wraps(pull)
    def pull_without_installed_app(request: Any, state: Any, task: Any) -> Any:
        response = pull(request, state, task)
        run, fab = response.run, response.fab
        if get_project_dir(run.fab_id, run.fab_version, fab.hash_str).is_dir():
            fab.content = b""
        return response

    handlers.pull_task_input = pull_without_installed_app  # type: ignore[assignment]


def shorten_serverapp_retries(
    poll_interval: float, pull_timeout: float, idle_poll: float | None = None
) -> None:
    """The ServerApp's Grid retries a reply whose content is still arriving every
    `poll_interval` rather than after 1 s (then 2 s, ...), and gives up after `pull_timeout`
    (Flower's limits: 500 tries, 7200 s); the reply then becomes an error reply.

    With `idle_poll`, a pull that brings no reply makes the next one wait, from
    `poll_interval` backing off to `idle_poll`, until a pull brings one or messages are
    pushed: a strategy that pulls every few milliseconds (strategies.loop) would
    otherwise send the SuperLink a hundred requests a second while the devices compute.
    """
    check_flower_version()
    import flwr.superlink.grid.http_grid as grid

    grid.pull_objects = functools.partial(
        grid.pull_objects, **_backoff(poll_interval), max_time=pull_timeout
    )
    if idle_poll is None:
        return
    pace = Backoff(poll_interval, idle_poll)
    due = [0.0]  # when the next pull may go out (time.monotonic)
    push, pull = grid.HttpGrid.push_messages, grid.HttpGrid.pull_messages

    @functools.wraps(push)
    def push_and_expect(self: Any, messages: Any) -> Any:
        pace.reset()
        due[0] = 0.0
        return push(self, messages)

    @functools.wraps(pull)
    def paced_pull(self: Any, message_ids: Any) -> Any:
        time.sleep(max(0.0, due[0] - time.monotonic()))
        replies = list(pull(self, message_ids))
        if replies:
            pace.reset()
            due[0] = 0.0
        else:
            due[0] = time.monotonic() + pace.next()
        return replies

    grid.HttpGrid.push_messages = push_and_expect  # type: ignore[method-assign]
    grid.HttpGrid.pull_messages = paced_pull  # type: ignore[method-assign]


def shorten_task_input_retries(poll_interval: float) -> None:
    """Flower's ClientApp task input pull (flwr.supernode.runtime.run_clientapp) retries
    content the SuperNode is still fetching every `poll_interval` rather than after 1 s,
    doubling. Call it once per process: each call wraps the previous one."""
    check_flower_version()
    import flwr.supernode.runtime.run_clientapp as runtime

    runtime.pull_and_inflate_object_from_tree = functools.partial(  # type: ignore[assignment]
        runtime.pull_and_inflate_object_from_tree, **_backoff(poll_interval)
    )


#: Flower's HTTP middleware that acts on one API's paths only, by module and class name, with
#: those paths' prefix: each tests the path first and otherwise only calls on
#: (flwr.superlink.routers.control.middlewares, flwr.superlink.routers.fleet). The event log
#: middleware acts only with an event log plugin, which only the SuperLink's
#: `--enable-event-log` loads (flwr.superlink.cli.flower_superlink; a flag of Flower's
#: enterprise extensions, not of the open-source SuperLink).
_PATH_SCOPED_MIDDLEWARE = {
    "flwr.superlink.main": {
        "ControlSensitiveResponseMiddleware": "/v1/control/",
        "ControlAuthenticationMiddleware": "/v1/control/",
        "ControlLicenseMiddleware": "/v1/control/",
        "ControlEventLogMiddleware": "/v1/control/",
        "NodeAuthMiddleware": "/v1/fleet/",
        "FleetEventLogMiddleware": "/v1/fleet/",
    },
    "flwr.supernode.main": {},
}
#: Flower 1.41 also has the runtime tracing middleware on both apps, which acts only with
#: FLWR_TRACING_ENABLED=1 (flwr.supercore.routers.runtime); 1.42 dropped it
_TRACING_MIDDLEWARE = {"RuntimeTracingMiddleware": "/v1/runtime/"}
_MIDDLEWARE_BY_RELEASE = {
    "1.41": {
        name: {**table, **_TRACING_MIDDLEWARE} for name, table in _PATH_SCOPED_MIDDLEWARE.items()
    },
    "1.42": _PATH_SCOPED_MIDDLEWARE,
}


def path_scoped_middleware(module_name: str, release: str | None = None) -> dict[str, str]:
    """The path-scoped middleware classes of `module_name`'s app in Flower `release` (the
    installed one by default), by class name, with the path prefix each acts on."""
    return _MIDDLEWARE_BY_RELEASE[release or check_flower_version()][module_name]


def only_under(prefix: str | None, middleware: type) -> type:
    """`middleware`, called only for HTTP requests whose path starts with `prefix` (never
    for None); every other request goes straight to the app the middleware wraps.

    Each layer of Starlette's BaseHTTPMiddleware costs a request a task group and a pair of
    memory streams, even one whose dispatch only calls on: with one core per several
    devices, that was most of the SuperLink's CPU per message. The path tested is the
    scope's, the one Starlette's `request.url.path` is built from."""

    class OnlyUnder:
        #: the paths the middleware acts on
        paths = prefix

        def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
            self.app, self.inner = app, middleware(app, *args, **kwargs)

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            applies = scope["type"] != "http" or (
                prefix is not None and scope["path"].startswith(prefix)
            )
            await (self.inner if applies else self.app)(scope, receive, send)

    OnlyUnder.__name__ = OnlyUnder.__qualname__ = f"OnlyUnder{middleware.__name__}"
    return OnlyUnder


_EVENT_LOG_MIDDLEWARE = ("ControlEventLogMiddleware", "FleetEventLogMiddleware")


def skip_middleware_off_its_paths(module_name: str, *, event_log: bool = False) -> None:
    """The app `module_name` builds (flwr.superlink.main: the SuperLink's; flwr.supernode.main:
    the SuperNode's Runtime API) runs each of its path-scoped middleware only for the paths
    it acts on, the runtime tracing middleware only when tracing is enabled, and the event
    log middleware only with `event_log` (the SuperLink was given --enable-event-log). Call
    it before the app is built: the module looks the classes up by name when it builds it."""
    import importlib
    import os

    release = check_flower_version()
    module = importlib.import_module(module_name)
    tracing = os.getenv("FLWR_TRACING_ENABLED") == "1"
    for name, prefix in path_scoped_middleware(module_name, release).items():
        if (name == "RuntimeTracingMiddleware" and not tracing) or (
            name in _EVENT_LOG_MIDDLEWARE and not event_log
        ):
            prefix = None
        setattr(module, name, only_under(prefix, getattr(module, name)))
