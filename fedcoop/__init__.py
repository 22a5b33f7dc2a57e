"""fedcoop: Cooperative SGD A(tau, W, v) on Flower."""

from fedcoop.errors import ConfigError

__all__ = ["ConfigError"]
