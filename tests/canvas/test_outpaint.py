"""latentgen.canvas.outpaint: the larger canvas and its mask (the new area, and the seam into the picture)."""

import numpy as np
import pytest
from PIL import Image

from latentgen.canvas.outpaint import extend


def test_the_canvas_holds_the_picture_and_the_mask_the_new_area_and_the_seam():
    im = Image.new("RGB", (40, 30), (10, 200, 30))
    canvas, mask = extend(im, left=8, bottom=6, overlap=4)
    assert canvas.size == mask.size == (48, 36)
    assert np.array_equal(np.asarray(canvas)[0:30, 8:48], np.asarray(im))
    m = np.asarray(mask) > 127
    assert m[:, :12].all() and m[26:].all()  # the new area plus 4 px into the picture on the extended sides
    assert not m[0:26, 12:48].any()  # the rest of the picture is kept (no overlap on sides not extended)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "nothing to outpaint"), ({"left": -8}, "left=-8 is invalid"), ({"top": 1.5}, "top=1.5 is invalid"),
    ({"right": 8, "overlap": -1}, "overlap=-1 is invalid"),
])
def test_bad_sides_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        extend(Image.new("RGB", (8, 8)), **kwargs)
