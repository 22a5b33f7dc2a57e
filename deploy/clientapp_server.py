"""The long-lived ClientApp of a SuperNode: it takes the SuperNode's tasks off its Runtime
API and runs each in this process, as Flower's one-task `flwr-clientapp` does, but for every
message, so torch is imported and the worker built once per device, not once per message."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import time
from typing import Any

from deploy.flower_patches import Backoff, shorten_task_input_retries


def serve_clientapp(
    address: str,
    poll_interval: float,
    secret: bytes | None,
    first_token: str | None = None,
    *,
    idle_poll: float | None = None,
    wake_port: int | None = None,
) -> None:
    """Take the SuperNode's ClientApp tasks off its Runtime API and run each in this process.

    Flower's SuperExec would start one `flwr-clientapp` per task; this loop does what that
    process does (pull the task's message and context, run the ClientApp, push the reply and
    the new context) for every task, so torch is imported once and the app's own in-process
    cache (clients.client_app keeps workers alive between rounds) stays warm. Apps are
    imported from the FAB as Flower installs it; a task of a different FAB re-executes this
    process, because Python cannot unload the first app's modules. Flower's own task input
    pull is used, its retries for content the SuperNode is still fetching shortened to
    poll-interval (rather than 1 s, doubling): a long-lived ClientApp asks for it at once.

    Waiting for a task costs next to nothing: the SuperNode wakes this process with a
    datagram on UDP 127.0.0.1:`wake_port` when it creates one, so between tasks this waits
    for a wake-up (one that came during a task waits on the socket), asking again after
    `idle_poll` without one (a lost datagram costs that much). Without the wake-up socket
    it polls, backing off from poll-interval to `idle_poll`.
    """
    shorten_task_input_retries(poll_interval)
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import (
        RuntimeVersionHttpInterceptor,
        SuperExecAuthHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if secret is not None:
        interceptors.append(
            SuperExecAuthHttpInterceptor(
                master_secret=secret, protected_methods={"/flwr.proto.Runtime/AcquireTask"}
            )
        )
    tasks = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )
    apps: dict[str, Any] = {}
    woken = _wake_socket(wake_port)
    idle_poll = poll_interval if idle_poll is None else idle_poll
    # woken: every task is announced, so wait for the announcement rather than poll for it
    idle = Backoff(idle_poll if woken is not None else poll_interval, idle_poll)
    if first_token is not None:
        _run_task(address, first_token, apps)
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
    while True:
        reply = tasks.AcquireTask(request)
        if reply.HasField("task") and reply.token:
            if apps and reply.task.fab_hash not in apps:
                tasks.close()
                os.execv(sys.executable, restart_argv(sys.orig_argv, first_token, reply.token))
            try:
                _run_task(address, reply.token, apps)
            except Exception as ex:  # the task failed; the SuperNode expires it, this serves on
                print(f"task failed: {ex!r}", file=sys.stderr, flush=True)
            idle.reset()
            if woken is None:
                continue  # polling: the next task may be waiting already
            # woken: a task created meanwhile has left its datagram waiting on the socket
        if _wait(woken, idle.next()):
            idle.reset()


def _wake_socket(port: int | None) -> socket.socket | None:
    """The UDP socket the SuperNode's wake-ups arrive on, or None (then this only polls)."""
    if port is None:
        return None
    woken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        woken.bind(("127.0.0.1", port))
    except OSError as ex:
        woken.close()
        print(f"no wake-ups on UDP port {port} ({ex}): polling", file=sys.stderr, flush=True)
        return None
    woken.setblocking(False)
    return woken


def _wait(woken: socket.socket | None, seconds: float) -> bool:
    """Wait up to `seconds`, less if a wake-up comes; whether one came."""
    if woken is None:
        time.sleep(seconds)
        return False
    if not select.select([woken], [], [], seconds)[0]:
        return False
    with contextlib.suppress(BlockingIOError):
        while woken.recv(64):  # every wake-up that came is answered by one AcquireTask
            pass
    return True


def restart_argv(argv: list[str], first_token: str | None, token: str) -> list[str]:
    """The command line that starts this process again (`argv`: Python's own, interpreter
    flags and `-m deploy` included) to serve the task `token` first."""
    kept = [a for a in argv[1:] if a != "--token" and a != first_token]
    return [sys.executable, *kept, "--token", token]


def task_retry_invoker() -> Any:
    """Flower's HTTP retries for one task's requests, except that a refused task token
    (401: the SuperNode has failed or expired the task, e.g. its message's run stopped
    while the content was pulled) ends the request at once, as an error of this task.

    Flower's invoker is written for `flwr-clientapp`, which serves one task: on a 401 it
    sends its own process SIGINT, which would end this long-lived one and leave the
    SuperNode without a ClientApp for every later message."""
    import httpx
    from flwr.supercore.retry import make_simple_http_retry_invoker

    invoker = make_simple_http_retry_invoker()
    flower_giveup = invoker.should_giveup

    def should_giveup(exc: Exception) -> bool:
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 401:
            return True
        return bool(flower_giveup(exc))

    invoker.should_giveup = should_giveup
    return invoker


def _run_task(address: str, token: str, apps: dict[str, Any]) -> None:
    """One task, as flwr.supernode.runtime.run_clientapp runs it, minus the process exit."""
    from flwr.app import Error, Message
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest
    from flwr.supercore.heartbeat import HeartbeatSender
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime.run_clientapp import (
        pull_task_input,
        push_message,
        push_task_output,
    )

    client = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=task_retry_invoker(),
    )

    just_claimed = True

    def heartbeat() -> bool:
        nonlocal just_claimed
        # Flower's HeartbeatSender beats at once, but the claim just made keeps the task
        # alive for a heartbeat interval, its start for longer (flwr.supercore.corestate:
        # active_until), and the next beat comes within the interval: one request per task
        # saved. Flower's task heartbeat raises SIGINT when the task is gone, which would
        # end this long-lived process; here the task just stops being served.
        if just_claimed:
            just_claimed = False
            return True
        try:
            return bool(client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success)
        except Exception:
            return False

    beats = HeartbeatSender(heartbeat)
    beats.start()
    message = context = reply = None
    status, details = SubStatus.FAILED, "ClientApp task failed"
    try:
        message, context, run, fab = pull_task_input(client)
        if fab.hash_str not in apps:
            if fab.content:  # none: the SuperNode saw the app installed here already
                install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            apps[fab.hash_str] = load(run.fab_id, run.fab_version, fab.hash_str)
        reply = apps[fab.hash_str](message=message, context=context)
        status, details = SubStatus.COMPLETED, ""
    except Exception as ex:
        details = f"{type(ex)}:<'{ex}'>"
        print(f"ClientApp raised: {details}", file=sys.stderr, flush=True)
        if message is not None:
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details),
                            reply_to=message)  # fmt: skip
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
            push_task_output(client, context, status, details)
        finally:
            beats.stop()
            client.close()
