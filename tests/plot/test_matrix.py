"""latentgen.plot.matrix: A1111's Prompt matrix. Its prompts are A1111's (every combination of the parts, in bit
order, either side of the base, joined as asked), its cells are the pipeline's own images of them with the call's
seed (or seed + k), its labels strike out the parts a cell leaves out; bad settings are refused before drawing."""

import numpy as np
import pytest
from conftest import mask, max_diff, photo

import latentgen
from latentgen.plot import matrix


def test_the_prompts_are_every_combination_in_a1111s_order():
    assert matrix.prompts("a cat|smiling|a hat") == ["a cat", "a cat, smiling", "a cat, a hat",
                                                      "a cat, smiling, a hat"]
    assert matrix.prompts("a cat|smiling|a hat", at_start=True, joiner="space")[1:] == [
        "smiling a cat", "a hat a cat", "smiling a hat a cat"]
    assert matrix.prompts("a cat, | smiling, |a hat")[3] == "a cat, , smiling, a hat"  # parts stripped, the base not
    assert len(matrix.prompts("x|a|b|c|d|e")) == 32
    with pytest.raises(ValueError, match="has no '\\|'"):
        matrix.prompts("a cat")
    with pytest.raises(ValueError, match="joiner='tab'.*'comma' or 'space'"):
        matrix.prompts("a|b", joiner="tab")


def test_columns_hold_the_first_half_of_the_parts_rows_the_rest():
    cols, rows = matrix.labels("a cat|smiling|a hat|at night")
    assert len(cols) == 4 and len(rows) == 2  # 8 cells: 4 columns (two parts), 2 rows (one part)
    assert cols[1] == [("smiling", True), ("a hat", False)] and cols[3] == [("smiling", True), ("a hat", True)]
    assert rows == [[("at night", False)], [("at night", True)]]
    assert matrix.labels("a|b")[1] == [[]]  # one part: one row, unlabeled


def test_the_cells_are_the_pipelines_images_of_each_combination(pipe):
    kw = dict(steps=2, guidance=5.0, width=64, height=64)
    p = matrix.matrix(pipe, "a cat|smiling|a hat", seed=3, **kw)
    want = [pipe.generate(text, seed=3, **kw)[0] for text in matrix.prompts("a cat|smiling|a hat")]
    assert max_diff(p.cells, want) == 0 and [label[0] for label in p.labels] == matrix.prompts("a cat|smiling|a hat")
    assert p.grid.size[0] > 2 * 64 and p.grid.size[1] > 2 * 64  # two by two, labels above and left
    a = np.asarray(p.grid)  # no margin: the cells touch, the last at the bottom right, x (the first part) fastest
    top, left = a.shape[0] - 128, a.shape[1] - 128
    for k in range(4):
        y, x = top + 64 * (k // 2), left + 64 * (k % 2)
        assert (a[y:y + 64, x:x + 64] == np.asarray(want[k])).all(), k
    seeds = matrix.matrix(pipe, "a cat|smiling", seed=3, different_seeds=True, **kw)
    assert max_diff(seeds.cells[1:], pipe.generate("a cat, smiling", seed=4, **kw)) == 0  # seed + k
    neg = matrix.matrix(pipe, "a cat", seed=3, negative=True, negative_prompt="blurry|dark", **kw)
    assert max_diff(neg.cells[1:], pipe.generate("a cat", negative_prompt="blurry, dark", seed=3, **kw)) == 0
    assert "Negative prompt: blurry, dark" in neg.cells[1].info["parameters"]


def test_an_img2img_matrix_redraws_the_picture_with_each_combination(pipe):
    kw = dict(seed=3, steps=2, guidance=5.0, strength=0.7)
    p = matrix.matrix(pipe, "a cat|smiling", image=photo(), **kw)
    assert max_diff(p.cells, [pipe.img2img(t, photo(), **kw)[0] for t in ("a cat", "a cat, smiling")]) == 0
    p = matrix.matrix(pipe, "a cat|smiling", image=photo(), mask=mask(), **kw)
    assert max_diff(p.cells[1:], pipe.inpaint("a cat, smiling", photo(), mask(), **kw)) == 0


def test_bad_settings_are_refused_before_anything_draws(pipe, monkeypatch):
    monkeypatch.setattr(pipe, "denoise", lambda *a, **k: pytest.fail("drew"))
    with pytest.raises(ValueError, match="margin=-2 is invalid"):
        matrix.matrix(pipe, "a|b", margin=-2)
    with pytest.raises(ValueError, match="negative=True varies the negative prompt"):
        matrix.matrix(pipe, "a cat", negative=True)
    with pytest.raises(ValueError, match="the prompt matrix's negative_prompt has no"):
        matrix.matrix(pipe, "a|b", negative=True, negative_prompt="blurry")
    with pytest.raises(ValueError, match="steps"):
        matrix.matrix(pipe, "a|b", steps=0)
    with pytest.raises(ValueError, match="has no '\\|'"):
        matrix.matrix(pipe, "a cat")


def test_a_stop_ends_the_matrix_with_black_cells(pipe):
    def stop(done, total, latents):
        raise latentgen.Stop()
    p = matrix.matrix(pipe, "a cat|smiling|a hat", steps=2, callback=stop)
    assert len(p.cells) == 4 and all(not np.asarray(c).any() for c in p.cells[1:])
