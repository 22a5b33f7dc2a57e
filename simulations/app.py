"""The ServerApp that ``flwr run .`` loads (pyproject.toml, ``[tool.flwr.app.components]``
serverapp), in simulation and on a deployment's SuperLink alike.

It is `strategies.server_app`'s app with this layer's results files bound in: the Flower
layer may not import `simulations.results` (imports run one way: fedcoop <- clients <-
strategies <- simulations), so the object Flower loads lives here, one layer up, and every
``flwr run`` writes into its run config's results-dir what ``fedcoop run`` writes.
"""

from __future__ import annotations

from simulations import results
from strategies.server_app import make_server_app

app = make_server_app(results=results)
