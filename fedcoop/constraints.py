"""Declared constraints on config values: one table that the checks, the docs and the tests read.

Each field of a config dataclass is declared with `setting(default, constraint, doc=...)`;
the constraint both checks a value and says in words what it accepts, so the error a user
reads, the row of docs/configuration.md and the values the property tests draw cannot
disagree (as scikit-learn's ``_parameter_constraints`` do for its estimators). Rules that
span fields are `Rule`s, declared next to the dataclass as data rather than as code in its
checks.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from fedcoop.errors import ConfigError

#: The metadata key under which `setting` stores a field's `Setting`.
SETTING = "setting"


def key_of(name: str) -> str:
    """The config key (dashes, as Flower writes them) of a field name."""
    return name.replace("_", "-")


class Constraint(ABC):
    """The values one key accepts: a test, and the words its docs and errors share."""

    @abstractmethod
    def describe(self) -> str:
        """What is valid, completing "must be ..." (the docs' cell and the error's reason)."""

    @abstractmethod
    def accepts(self, value: Any) -> bool:
        """Whether `value` is valid."""

    def check(self, key: str, value: Any) -> None:
        """Raise the user's ConfigError for a value `key` does not accept."""
        if not self.accepts(value):
            raise ConfigError(key, value, f"must be {self.describe()}")


@dataclass(frozen=True)
class IntRange(Constraint):
    """low <= value (<= high): the integers a count or a seed may take."""

    low: int
    high: int | None = None

    def describe(self) -> str:
        if self.high is None:
            return f"an integer >= {self.low}"
        return f"in {self.low}..{self.high}"

    def accepts(self, value: Any) -> bool:
        return self.low <= value and (self.high is None or value <= self.high)


@dataclass(frozen=True)
class Interval(Constraint):
    """A real interval; `high` = inf with `closed` "left" or "neither" means finite numbers.

    NaN lies in no interval. `unit` and `note` only add words to the description.
    """

    low: float
    high: float = math.inf
    closed: Literal["both", "left", "right", "neither"] = "both"
    unit: str = ""
    note: str = ""

    @property
    def closed_low(self) -> bool:
        """Whether `low` itself is valid."""
        return self.closed in ("both", "left")

    @property
    def closed_high(self) -> bool:
        """Whether `high` itself is valid (with high = inf: whether infinity is)."""
        return self.closed in ("both", "right")

    def describe(self) -> str:
        if math.isinf(self.high):
            finite = "" if self.closed_high else "a finite number "
            text = f"{finite}{'>=' if self.closed_low else '>'} {self.low:g}"
        else:
            left, right = "[("[not self.closed_low], "])"[not self.closed_high]
            text = f"in {left}{self.low:g}, {self.high:g}{right}"
        unit = f" {self.unit}" if self.unit else ""
        note = f" ({self.note})" if self.note else ""
        return text + unit + note

    def accepts(self, value: Any) -> bool:
        above = self.low <= value if self.closed_low else self.low < value
        below = value <= self.high if self.closed_high else value < self.high
        return above and below


class Names(Constraint):
    """One of a list of names."""

    @abstractmethod
    def names(self) -> tuple[str, ...]:
        """The valid names."""

    def describe(self) -> str:
        return f"one of {', '.join(self.names())}"

    def accepts(self, value: Any) -> bool:
        return value in self.names()


@dataclass(frozen=True)
class OneOf(Names):
    """One of a fixed list of names."""

    choices: tuple[str, ...]

    def names(self) -> tuple[str, ...]:
        return self.choices


@dataclass(frozen=True)
class NumberOr(Constraint):
    """Any number, or one of a few words (alpha's "auto": the algorithm's own default)."""

    words: tuple[str, ...]

    def describe(self) -> str:
        return "a number or " + " or ".join(f'"{word}"' for word in self.words)

    def accepts(self, value: Any) -> bool:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number or value in self.words


@dataclass(frozen=True)
class Registry(Names):
    """The names of a registry that checks them itself when the run resolves them.

    The registry's module imports the config (fedcoop.algorithms) or torch (fedcoop.models),
    so it is read only when asked, and `check` leaves the value to it: a name is refused at
    start-up by the code that looks it up, with that code's message. `also`: names valid
    besides the registry's (update-rule's "auto").
    """

    module: str
    attribute: str
    also: tuple[str, ...] = ()

    def names(self) -> tuple[str, ...]:
        """`also`, then the registry's names (a dict's keys, an enum's values)."""
        registry = getattr(importlib.import_module(self.module), self.attribute)
        return (*self.also, *(str(name) for name in registry))

    def check(self, key: str, value: Any) -> None:
        """Nothing here: the registry refuses an unknown name when the run resolves it."""


@dataclass(frozen=True)
class Parsed(Constraint):
    """What a parser accepts (a link, a list of taus): the parser raises its own ConfigError,
    naming the key and what it read; `description` is its valid values in words."""

    parse: Callable[[Any], object]
    description: str

    def describe(self) -> str:
        return self.description

    def accepts(self, value: Any) -> bool:
        try:
            self.parse(value)
        except ConfigError:
            return False
        return True

    def check(self, key: str, value: Any) -> None:
        self.parse(value)


@dataclass(frozen=True)
class Setting:
    """One field as declared: what it means (the docs' column) and the values it takes
    (None: any value of its type)."""

    doc: str
    constraint: Constraint | None = None


def setting(default: Any, constraint: Constraint | None = None, *, doc: str) -> Any:
    """A dataclass field with its default, constraint and meaning (typed Any, as
    `dataclasses.field` is, so that the annotation says the field's type)."""
    return dataclasses.field(default=default, metadata={SETTING: Setting(doc, constraint)})


def setting_of(field: dataclasses.Field[Any]) -> Setting:
    """The `Setting` a field was declared with (a plain field is a mistake: its key would
    reach neither the checks nor the docs)."""
    if SETTING not in field.metadata:
        raise TypeError(f"{field.name} is declared without setting(default, constraint, doc=)")
    return field.metadata[SETTING]


@dataclass(frozen=True)
class Rule:
    """A constraint across fields: `fields[0]`'s value is refused unless `holds` of the
    fields' values (in that order) is true.

    `reason` is the error's text, formatted with the fields' values by name (e.g.
    "{warmup_epochs:g}"); `doc` says the rule in the docs (default: `reason`).
    """

    fields: tuple[str, ...]
    holds: Callable[..., bool]
    reason: str
    doc: str = ""

    @property
    def key(self) -> str:
        """The key the error names, the one to change."""
        return key_of(self.fields[0])

    def describe(self) -> str:
        """The rule in the docs."""
        return self.doc or self.reason

    def check(self, config: Any) -> None:
        """Raise the user's ConfigError when `config` breaks the rule."""
        values = {name: getattr(config, name) for name in self.fields}
        if not self.holds(*values.values()):
            raise ConfigError(self.key, values[self.fields[0]], self.reason.format(**values))


def validate(config: Any, rules: Iterable[Rule]) -> None:
    """Check every declared field of a dataclass instance, in field order, then `rules`."""
    for field in dataclasses.fields(config):
        constraint = setting_of(field).constraint
        if constraint is not None:
            constraint.check(key_of(field.name), getattr(config, field.name))
    for rule in rules:
        rule.check(config)
