"""latentgen.plot.draw: the labeled grid: cells in rows and columns, room for labels only where there are some."""

import numpy as np
from PIL import Image

from latentgen.plot.draw import LINE, annotated


def test_cells_in_rows_and_columns_with_their_labels():
    cells = [Image.new("RGB", (20, 10), c) for c in ("red", "green", "blue", "yellow")]
    plain = annotated(cells, ["", ""], ["", ""])
    assert plain.size == (2 * 24 + 4, 2 * 14 + 4)
    a = np.asarray(plain)
    assert tuple(a[4, 4]) == (255, 0, 0) and tuple(a[18, 28]) == (255, 255, 0)  # red first, yellow last
    labeled = annotated(cells, ["Steps: 10", "Steps: 20"], ["CFG: 4", "CFG: 7"], "Sampler: Euler")
    assert labeled.height == plain.height + 3 * LINE and labeled.width > plain.width  # narrow cells: labels wrap
    wide = annotated([Image.new("RGB", (80, 10))] * 2, ["Steps: 10", "Steps: 20"], [""], "Sampler: Euler")
    assert wide.height == 14 + 4 + 2 * LINE and wide.width == 2 * 84 + 4
    assert (np.asarray(labeled)[:LINE] < 128).any()  # the title is written


def test_a_left_out_part_is_gray_and_struck_through():
    """A1111's prompt matrix labels: a label of (text, held) lines, the parts a cell leaves out in gray."""
    from latentgen.plot.draw import INACTIVE

    cells = [Image.new("RGB", (120, 10), "white")] * 2
    g = np.asarray(annotated(cells, [[("smiling", False)], [("smiling", True)]], [""], pad=0))
    left, right = g[:LINE, :120], g[:LINE, 120:]
    assert (np.abs(left.astype(int) - INACTIVE).sum(-1) == 0).sum() > 20 and (left < 100).sum() == 0  # gray only
    assert (right < 100).any() and (np.abs(right.astype(int) - INACTIVE).sum(-1) == 0).sum() == 0
    row = (np.abs(left.astype(int) - INACTIVE).sum(-1) == 0).sum(1)
    from PIL import ImageDraw, ImageFont

    width = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength("smiling", font=ImageFont.load_default())
    assert row.max() >= width - 1  # the strike runs through the whole word
    assert g.shape[:2] == (LINE + 10, 240)  # pad=0: the cells touch
