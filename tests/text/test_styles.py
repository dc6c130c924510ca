"""latentgen.text.styles: A1111's styles.csv read as A1111 reads it, its merge rule, and names refused when unknown."""

import pytest

from latentgen.text import styles


def test_a_style_fills_its_placeholder_or_is_appended_after_a_comma():
    assert styles.merge("{prompt}, oil painting", "a cat") == "a cat, oil painting"
    assert styles.merge("masterpiece", " a cat ") == "a cat, masterpiece"
    assert styles.merge("masterpiece", "") == "masterpiece" and styles.merge("", "a cat") == "a cat"
    table = {"a": styles.Style("a", "{prompt} at night", "day"), "b": styles.Style("b", "film grain")}
    assert styles.apply("a cat", None, ["a", "b"], table) == ("a cat at night, film grain", "day")
    assert styles.apply("a cat", "dog", ["b", "a"], table) == ("a cat, film grain at night", "dog, day")  # in order
    assert styles.apply("a cat", None, [], table) == ("a cat", "")
    assert styles.apply_given("a dog", None, ["a"], table) == ("a dog at night", None)  # a hires pass's own prompts
    assert styles.apply_given("", "rain", ["a"], table) == ("", "rain, day") and \
        styles.apply_given(None, None, ["a"], table) == (None, None)  # not given: the first pass's, styled already


def test_the_file_is_read_as_a1111_writes_it_and_a_bad_one_is_refused(tmp_path):
    f = tmp_path / "styles.csv"
    f.write_text('\ufeffname, prompt, negative_prompt\n"x","{prompt}, red, blue",""\n,ignored,\nx,again,no\n'
                 '# portraits,ignored,\n', "utf-8")
    assert styles.read(f) == {"x": styles.Style("x", "again", "no")}  # a later row of the same name wins; # comments
    f.write_text("name,text\nold,sepia\n")  # A1111's first format
    assert styles.read(f) == {"old": styles.Style("old", "sepia", "")}
    for text in ("title,prompt\na,b\n", "title,prompt\n"):  # with rows or without
        f.write_text(text)
        with pytest.raises(ValueError, match="has the columns 'title', 'prompt'; A1111's styles.csv has name, prompt"):
            styles.read(f)
    f.write_bytes(b"name,prompt\n\xff\xfe,x\n")
    with pytest.raises(ValueError, match="cannot be read .*UnicodeDecodeError"):
        styles.read(f)
    with pytest.raises(ValueError, match="cannot be read .*FileNotFoundError"):
        styles.read(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match=r"--style: no style 'y'; the styles are 'x'"):
        styles.apply("a", None, ["y"], {"x": styles.Style("x")}, "--style")
    double = {"d": styles.Style("d", "{prompt} {prompt}")}
    assert styles.apply("ab", None, ["d"] * 3, double, limit=23)[0] == " ".join(["ab"] * 8)
    with pytest.raises(ValueError, match="styles: the prompts with these styles are over 23 characters"):
        styles.apply("ab", None, ["d"] * 4, double, limit=23)  # refused as it grows, not after
