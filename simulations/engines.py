"""The engines a config runs on, by name: importable without torch or Flower, so that the
command line lists them (and starts) at once. `simulations.runner` runs them."""

#: Flower's simulation engine (Ray), the in-process grid, the vectorized in-process grid
ENGINES = ("simulation", "inprocess", "vectorized")
#: the faster of the two in-process engines for the config on this machine
#: (`simulations.runner.fastest_engine`): both give the Flower path's models
AUTO = "auto"
#: what --engine takes
ENGINE_CHOICES = (*ENGINES, AUTO)
