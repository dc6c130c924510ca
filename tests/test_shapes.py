"""The procedural world and its evaluator: deterministic data, held-out vocabulary, >= 99% readings."""

import random

import numpy as np
import pytest
from PIL import Image

from latentgen import images
from latentgen.embedded import quality, shapes


def test_sample_is_a_function_of_the_seed():
    a, sa = shapes.sample(7)
    b, sb = shapes.sample(7)
    c, _ = shapes.sample(8)
    assert sa == sb and np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert sa.caption == f"a {sa.color} {sa.shape} on a {sa.background} background"


def test_base_vocabulary_leaves_out_purple_and_star():
    rng = random.Random(0)
    seen = [shapes.random_scene(rng, 64) for _ in range(3000)]
    assert {s.color for s in seen} == set(shapes.COLORS) == {s.background for s in seen}
    assert {s.shape for s in seen} == {"circle", "square", "triangle"}
    assert all(s.color != s.background for s in seen)
    assert len({round(s.r) for s in seen}) > 5 and len({round(s.cx) for s in seen}) > 20  # size, position vary


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


def test_grid_tiles_images():
    ims = [Image.new("RGB", (64, 64), c) for c in ("red", "blue", "green")]
    g = images.grid(ims, cols=2, labels=["a", "b", "c"], scale=1, pad=2)
    assert g.size[0] == 2 * 66 + 2 and g.getpixel((3, 3)) == (255, 0, 0) and g.getpixel((70, 3)) == (0, 0, 255)
    with pytest.raises(ValueError, match="images"):
        images.grid([], cols=2)
    with pytest.raises(ValueError, match="cols"):
        images.grid(ims, cols=0)
