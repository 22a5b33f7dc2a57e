"""The errors a user reads: bad input (ConfigError) and a run that could not go on (RunFailed),
so callers can catch them and print the message instead of a traceback."""

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


class RunFailed(RuntimeError):
    """A worker failed or stopped answering; the message says which and why. `partial`:
    what the run produced up to the failure (a `RunResult`, when there is one), so that its
    settled rounds are written rather than lost."""

    def __init__(self, message: str, partial: Any = None) -> None:
        super().__init__(message)
        self.partial = partial
