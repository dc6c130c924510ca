"""latentgen.checks: the one argument check; True is not a number, NaN and infinity are not numbers."""

import math
from dataclasses import dataclass

import pytest

from latentgen import checks


@pytest.mark.parametrize("value", [True, False, 1.0, "3", None, 0, -2])
def test_whole_refuses_bools_floats_text_and_small_values(value):
    with pytest.raises(ValueError, match=r"^steps=.* is invalid: use a whole number >= 1\.$"):
        checks.whole("steps", value, 1)


def test_whole_accepts_numpy_integers_and_returns_int():
    np = pytest.importorskip("numpy")
    assert checks.whole("n", np.int64(3), 1) == 3 and type(checks.whole("n", np.int64(3), 1)) is int


@pytest.mark.parametrize("value", [True, math.nan, math.inf, -math.inf, "1.0", None])
def test_number_refuses_bools_and_non_finite(value):
    with pytest.raises(ValueError, match=r"^guidance=.* is invalid"):
        checks.number("guidance", value)


def test_number_bounds_name_the_range_and_the_fix():
    assert checks.number("strength", 1, minimum=0, maximum=1) == 1.0
    with pytest.raises(ValueError, match=r"strength=1\.5 is invalid: use a number in \[0, 1\]"):
        checks.number("strength", 1.5, minimum=0, maximum=1)
    with pytest.raises(ValueError, match="a positive number"):
        checks.number("lr", 0.0, positive=True)
    with pytest.raises(ValueError, match="such as lr=1e-4"):
        checks.number("lr", -1, positive=True, fix="use such as lr=1e-4")


def test_choice_lists_the_options():
    assert checks.choice("crop", "center", ("center", "resize")) == "center"
    with pytest.raises(ValueError, match=r"crop='middle' is invalid: use one of 'center', 'resize'"):
        checks.choice("crop", "middle", ("center", "resize"))


def test_options_carry_help_and_choices_and_fresh_lists():
    @dataclass
    class Config:
        mode: str = checks.option("a", "the mode", choices=("a", "b"))
        items: list[str] = checks.option([], "repeatable", flag="item")

    one, two = Config(), Config()
    one.items.append("x")
    assert two.items == []  # each instance gets its own list
    checks.check_choices(Config(mode="b"))
    with pytest.raises(ValueError, match="mode='c' is invalid"):
        checks.check_choices(Config(mode="c"))
