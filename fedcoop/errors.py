"""The one error type that bad user input raises, so callers can catch it and users can read it."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A configuration value or matrix that fedcoop refuses before any training starts.

    The message always names the parameter, the bad value and the valid range, because a
    user who mistyped a run config should not have to read a traceback to find out what to
    change.
    """

    def __init__(self, parameter: str, value: Any, valid: str) -> None:
        self.parameter = parameter
        self.value = value
        self.valid = valid
        super().__init__(f"{parameter}={value!r} is invalid: {valid}")
