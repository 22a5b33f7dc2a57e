"""Deploy fedcoop on real devices: one SuperLink, one SuperNode per worker, TLS and node auth.

``python -m deploy <command>`` (``fedcoop deploy <command>``) scripts the steps of Flower's
deployment runtime (1.41 and 1.42) so that a run moves from ``flwr run .`` in simulation to devices
with the same app and run config: ``certs`` (a CA and a SuperLink certificate), ``keys``
(SuperNode auth key pairs), ``superlink``, ``register`` (node public keys), ``supernode``,
``submit`` (``flwr run`` against the SuperLink), ``logs`` and ``stop``.

Started processes run in the background, each in its own session, with a pid file and a log
in the state directory, so ``stop`` can end exactly them and their children.

Why a SuperNode here is two processes: with Flower's default ``--isolation subprocess`` each
message starts a fresh ``flwr-clientapp`` that imports torch and rebuilds the worker (seconds
per message), and Flower's ``flwr-clientapp`` serves one task and exits, so it cannot be
kept alive. ``supernode`` therefore starts the SuperNode with ``--isolation process`` plus
``clientapp``, a long-lived process that takes the SuperNode's tasks off its Runtime API and
runs the ClientApp in-process, as ``flwr-clientapp`` does, but for every message. The
SuperNode itself runs with its hard-coded idle waits (3 s between empty pulls, 0.5 s while
waiting for a reply) replaced: it polls every ``--poll-interval`` while a message is due and
backs off to ``--idle-poll`` while none comes, wakes its ClientApp with a local datagram when
a task waits (an idle ClientApp does not poll), and hands it installed apps without their
content. docs/deployment-performance.md has the measurements.

Why a top-level package: this is tooling above the strategies layer, not part of the
framework. It starts the Flower processes that load ``clients`` and ``strategies`` from the
app, so it sits next to ``simulations`` (experiments), and nothing in ``fedcoop``, ``clients``
or ``strategies`` imports it.

Modules: ``credentials`` (CA, SuperLink certificate, node keys, SuperExec secrets),
``processes`` (start, find and stop background processes), ``commands`` (the command lines
of the SuperLink, SuperNodes and ServerApp), ``flower_patches`` (the Flower waits and app
hand-over changed at run time, for Flower 1.41 and 1.42 only), ``clientapp_server`` (the long-lived
ClientApp), ``flwr_cli`` (the flwr CLI's connection to the SuperLink) and ``cli`` (the
commands).
"""
