"""One place for checking method options (the fields of each method's ``Options`` dataclass).

    check_fields("ewc", self, lam="a number >= 0", fisher_samples="an integer >= 1", gamma="a number in [0, 1]")

Each rule names what is expected, in the words the error shows: ``--ewc-gamma: expected a number in [0, 1], got 2``.
Rules: "an integer >= N", "a number >= X", "a number > X", "a number in [A, B]" (brackets: closed, parentheses:
open ends). A rule may end with " or None" (the field is optional) or start with "per task: " (one value, or a
non-empty list of values, one per task). Numbers are finite ints/floats (not bools); integers are ints.

An option whose default None stands for a computed value says which, for --help and the docs:

    query_lr: float | None = none_means("the run's lr")
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

from ..errors import ContinualLMError


def none_means(text: str) -> Any:
    """A dataclass field with default None that stands for ``text`` (shown by `continual-lm run --help`)."""
    return dataclasses.field(default=None, metadata={"none_means": text})


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _rule_predicate(rule: str) -> Callable[[Any], bool]:
    if m := re.fullmatch(r"an integer >= (-?\d+)", rule):
        return lambda v: _integer(v) and v >= int(m[1])
    if m := re.fullmatch(r"a number (>=|>) (-?[\d.]+)", rule):
        low, strict = float(m[2]), m[1] == ">"
        return lambda v: _number(v) and (v > low if strict else v >= low)
    if m := re.fullmatch(r"a number in ([\[(])(-?[\d.]+), (-?[\d.]+)([\])])", rule):
        low, high, open_low, open_high = float(m[2]), float(m[3]), m[1] == "(", m[4] == ")"
        return lambda v: (_number(v) and (v > low if open_low else v >= low) and (v < high if open_high else v <= high))
    raise ValueError(f"unknown option rule {rule!r} (see continual_lm/methods/option_checks.py)")


OPTIONAL = " or None"
PER_TASK = "per task: "


def _satisfies(value: Any, rule: str) -> bool:
    if rule.endswith(OPTIONAL):
        return value is None or _satisfies(value, rule[: -len(OPTIONAL)])
    if rule.startswith(PER_TASK):
        values = value if isinstance(value, list) else [value]
        return bool(values) and all(_satisfies(v, rule[len(PER_TASK):]) for v in values)
    return _rule_predicate(rule)(value)


def flag(method: str, field: str) -> str:
    """The command-line flag of a method option: ("sapt-lora", "pseudo_count") -> "--sapt-lora-pseudo-count"."""
    return f"--{method}-{field.replace('_', '-')}"


def check_fields(method: str, options: Any, **rules: str) -> None:
    """Raise ContinualLMError naming the flag, the expectation and the value of the first field breaking its rule."""
    for field, rule in rules.items():
        value = getattr(options, field)
        if not _satisfies(value, rule):
            expected = rule.replace(PER_TASK, "") + (" (or one per task)" if rule.startswith(PER_TASK) else "")
            raise ContinualLMError(f"{flag(method, field)}: expected {expected}, got {value!r}")


def check_choice(method: str, options: Any, field: str, choices) -> None:
    value = getattr(options, field)
    if value not in choices:
        raise ContinualLMError(f"{flag(method, field)}: expected one of {', '.join(map(str, choices))}, got {value!r}")
