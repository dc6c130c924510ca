"""latentgen.control.preprocess: the preprocessors that need no network, each a pure function with A1111's names,
aliases and threshold defaults; those that need an annotator network, and unknown names, refused by name."""

import numpy as np
import pytest
from PIL import Image

from latentgen.control import preprocess
from latentgen.embedded import shapes


def _square() -> Image.Image:
    """A white 20x20 square at (22..41, 22..41) on black: its outline is where the edges must be."""
    a = np.zeros((64, 64, 3), np.uint8)
    a[22:42, 22:42] = 255
    return Image.fromarray(a)


def test_canny_draws_the_outline_white_on_black_and_its_thresholds_matter():
    edges = np.asarray(preprocess.run("canny", _square()))
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) == {0, 255}
    on = edges[..., 0] > 0
    ys, xs = np.nonzero(on)
    assert 20 <= ys.min() <= 22 and 41 <= ys.max() <= 43 and 20 <= xs.min() <= 22 and 41 <= xs.max() <= 43
    assert not on[28:36, 28:36].any() and not on[:15].any()  # nothing inside, nothing far outside
    faint = Image.fromarray((np.asarray(_square()) * 0.08).astype(np.uint8))  # a step of 20 gray levels
    assert not np.asarray(preprocess.run("canny", faint)).any()  # its gradient is below the low threshold, 100
    assert np.asarray(preprocess.run("canny", faint, threshold_a=10, threshold_b=20)).any()


def test_invert_threshold_tile_and_none():
    im, _ = shapes.sample(3)
    a = np.asarray(im)
    assert np.array_equal(np.asarray(preprocess.run("none", im)), a)
    assert np.array_equal(np.asarray(preprocess.run("invert (from white bg & black line)", im)), 255 - a)
    th = np.asarray(preprocess.run("threshold", im, threshold_a=100))
    assert np.array_equal(th[..., 0] > 0, a.min(axis=2) > 100)
    assert np.array_equal(np.asarray(preprocess.run("tile_resample", im)), a)  # rate 1: as it is
    tile = preprocess.run("tile_resample", _square(), threshold_a=4.0)
    assert tile.size == (64, 64) and 0 < np.asarray(tile)[21, 30, 0] < 255  # 16x16 then back up: soft edges


def test_xdog_marks_lines_and_processor_res_keeps_the_size():
    lines = np.asarray(preprocess.run("scribble_xdog", _square()))
    assert lines[..., 0].any() and not lines[5, 5].any()
    big = preprocess.run("canny", _square(), resolution=256)  # processed at 256 on its short side, brought back
    assert big.size == (64, 64) and np.asarray(big).any()
    with pytest.raises(ValueError, match="processor_res=8 is invalid"):
        preprocess.run("canny", _square(), resolution=8)


def test_thresholds_default_as_a1111_and_minus_one_means_default():
    assert preprocess.thresholds("canny") == (100.0, 200.0) == preprocess.thresholds("canny", -1, -1)
    assert preprocess.thresholds("canny", 50, None) == (50, 200.0)
    assert preprocess.thresholds("none") == (None, None)
    with pytest.raises(ValueError, match="threshold_a=-5 is invalid"):
        preprocess.thresholds("canny", -5)


@pytest.mark.parametrize("name", ["depth_midas", "openpose_full", "lineart_realistic", "softedge_hed", "seg_ofade20k"])
def test_network_preprocessors_are_refused_saying_to_send_the_map(name):
    with pytest.raises(ValueError, match=f"preprocessor '{name}' runs an annotator network.*preprocessor 'none'"):
        preprocess.run(name, _square())


def test_unknown_preprocessors_are_refused_with_the_list():
    with pytest.raises(ValueError, match="preprocessor 'sharpen' is unknown: use one of none, invert, canny"):
        preprocess.name_of("sharpen")
