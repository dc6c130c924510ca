"""latentgen.embedded.quality: the evaluator reads the procedural data (>= 99% right, held-out vocabulary
included) and the adherence prompts cover the vocabulary."""

import pytest
from PIL import Image

from latentgen.embedded import quality, shapes


@pytest.mark.parametrize("size", [64, 128])
def test_evaluator_reads_the_data(size):
    n, right = 600, {"background": 0, "color": 0, "shape": 0, "centroid": 0}
    for seed in range(n):
        image, s = shapes.sample(seed, size)
        r = shapes.read(image)
        right["background"] += r.background == s.background
        right["color"] += r.color == s.color
        right["shape"] += r.shape == s.shape
        right["centroid"] += r.centroid is not None and abs(r.centroid[0] - s.cx) < 0.1 * size
    assert all(v >= 0.99 * n for v in right.values()), right


def test_evaluator_reads_the_held_out_vocabulary():
    n, right = 300, 0
    for seed in range(n):
        image, s = shapes.sample(seed, colors=("purple",), shapes=shapes.ALL_SHAPES)
        r = shapes.read(image)
        right += (r.color, r.shape, r.background) == ("purple", s.shape, s.background)
    assert right >= 0.99 * n


def test_evaluator_reports_a_missing_shape():
    r = shapes.read(Image.new("RGB", (64, 64), shapes.PALETTE["green"]))
    assert (r.background, r.color, r.shape) == ("green", None, None)


def test_adherence_prompts_cover_every_color_and_shape_twice():
    prompts = quality.adherence_prompts()
    assert len(prompts) == 42 == len(set(prompts))
    parsed = [quality.parse(p) for p in prompts]
    for color in shapes.COLORS:
        for kind in shapes.SHAPES:
            bgs = {bg for c, k, bg in parsed if (c, k) == (color, kind)}
            assert len(bgs) == 2 and color not in bgs
    assert {bg for *_, bg in parsed} == set(shapes.COLORS)
    with pytest.raises(ValueError, match="not of the form"):
        quality.parse("a red thing")
