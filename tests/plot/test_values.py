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


def test_each_tab_numbers_the_axes_it_shows():
    """A1111's img2img tab hides the Hires axes and shows Image CFG Scale and Cond. Image Mask Weight; txt2img the
    reverse; the axes both show keep their order."""
    assert values.a1111_label(5) == "Hires steps" and values.a1111_label(5, "img2img") == "CFG Scale"
    assert values.a1111_label(6, "img2img") == "Image CFG Scale" and values.a1111_label(28, "img2img") == \
        "Cond. Image Mask Weight"
    shared = [a for a in values.A1111_AXES if not any(a in only for only in values.ONLY.values())]
    assert [a for a in values.A1111_TXT2IMG if a in shared] == [a for a in values.A1111_IMG2IMG if a in shared] == shared
    with pytest.raises(ValueError, match=r"axis type -1 is not an A1111 txt2img axis index \(0-42\)"):
        values.a1111_label(-1)
