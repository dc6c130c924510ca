"""latentgen.plot.values: A1111's X/Y/Z axis values: number ranges, samplers and schedule types by name, sizes,
a prompt's words in another order."""

import pytest

from latentgen.plot import values


def test_number_ranges_as_a1111_writes_them():
    assert values.numbers("Steps", ["1-3", "10-30 (+10)", "7"], int) == [1, 2, 3, 10, 20, 30, 7]
    assert values.numbers("CFG Scale", ["2-3 [3]"], float) == [2.0, 2.5, 3.0]
    with pytest.raises(ValueError, match="axis 'Steps' value 'ten' is not a whole number"):
        values.numbers("Steps", ["ten"], int)


def test_prompt_order_puts_the_words_in_each_others_places():
    assert values.ordered("a red cat, dark", ("dark", "red")) == "a dark cat, red"
    assert values.ordered("red, big, cat", ("cat", "big", "red")) == "cat, big, red"
    assert values.ordered("a red cat", ("red", "cat")) == "a red cat"


def test_samplers_and_schedule_types_by_a1111_names():
    assert values.sampler("DPM++ 2M") == "dpm++2m" and values.sampler("euler_a") == "euler_a"
    assert values.schedule("karras") == "Karras" and values.schedule("AUTOMATIC") == "Automatic"
    assert values.scheduled("dpm++2m", "Karras") == "dpm++2m_karras"
    assert values.scheduled("dpm++2m_karras", "Automatic") == "dpm++2m_karras"  # as the server reads the two names
    assert values.scheduled("euler", "Automatic") == "euler"
    with pytest.raises(ValueError, match="sampler 'Euler a' has no Karras schedule here; use one of .*DPM\\+\\+ 2M"):
        values.scheduled("euler_a", "Karras")
    with pytest.raises(ValueError, match="give it by name"):
        values.scheduled(object(), "Karras")
    with pytest.raises(ValueError, match="Schedule type 'Uniform' is not one"):
        values.schedule("Uniform")
    assert values.size("96x64") == (96, 64)
    with pytest.raises(ValueError, match="not WIDTHxHEIGHT"):
        values.size("96 by 64")


def test_a_styles_value_names_one_style_or_several():
    assert values.style_names("on blue") == ["on blue"] and values.style_names(" flat, blue ,") == ["flat", "blue"]
