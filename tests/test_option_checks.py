"""The one checker of method options: rules, optional and per-task values, and the error text users see."""
from dataclasses import dataclass

import pytest

from continual_lm.errors import ContinualLMError
from continual_lm.methods.option_checks import check_choice, check_fields


@dataclass
class Opts:
    count: object = 1
    weight: object = 0.5
    per_task: object = 1.0
    mode: str = "a"


@pytest.mark.parametrize("field, value, rule, message", [
    ("count", 0, "an integer >= 1", "--m-count: expected an integer >= 1, got 0"),
    ("count", 2.0, "an integer >= 1", "got 2.0"),  # a float is not an integer
    ("count", True, "an integer >= 0", "got True"),  # nor is a bool
    ("weight", float("nan"), "a number >= 0", "expected a number >= 0, got nan"),
    ("weight", 0, "a number in (0, 1]", r"expected a number in \(0, 1\], got 0"),
    ("weight", 1, "a number in [0, 1)", r"expected a number in \[0, 1\), got 1"),
    ("weight", "x", "a number > 0 or None", "expected a number > 0 or None, got 'x'"),
    ("per_task", [1.0, -2.0], "per task: a number >= 0", r"--m-per-task: expected a number >= 0 \(or one per task\)"),
    ("per_task", [], "per task: a number >= 0", "got \\[\\]"),
])
def test_a_value_breaking_its_rule_is_named_with_the_flag(field, value, rule, message):
    with pytest.raises(ContinualLMError, match=message):
        check_fields("m", Opts(**{field: value}), **{field: rule})


def test_values_keeping_their_rules_pass():
    check_fields("m", Opts(count=None, weight=1, per_task=[0, 2.5]), count="an integer >= 1 or None",
                 weight="a number in (0, 1]", per_task="per task: a number >= 0")
    check_fields("m", Opts(per_task=3), per_task="per task: a number >= 0")  # one value for every task


def test_choices_and_unknown_rules():
    with pytest.raises(ContinualLMError, match="--m-mode: expected one of a, b, got 'c'"):
        check_choice("m", Opts(mode="c"), "mode", ("a", "b"))
    with pytest.raises(ValueError, match="unknown option rule"):
        check_fields("m", Opts(), count="a positive thing")
