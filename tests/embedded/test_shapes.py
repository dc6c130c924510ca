"""latentgen.embedded.shapes: the procedural world: deterministic data, held-out vocabulary."""

import random

import numpy as np
import pytest

from latentgen.embedded import shapes


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


def test_a_radius_range_narrows_sizes_and_bad_ones_are_refused():
    """``shapes-data --radius``: the star LoRA's data draws large stars only (their points survive the VAE)."""
    big = [shapes.random_scene(random.Random(i), 64, shapes=("star",), radius=(0.27, 0.34)) for i in range(300)]
    assert all(0.27 * 64 <= s.r <= 0.34 * 64 for s in big) and max(s.r for s in big) - min(s.r for s in big) > 3
    assert all(s.r + 0.04 * 64 <= s.cx <= 64 - s.r - 0.04 * 64 for s in big)  # the shape stays inside
    assert shapes.random_scene(random.Random(3), 64) == shapes.random_scene(random.Random(3), 64, radius=shapes.RADIUS)
    assert shapes.radius_range("0.27-0.34") == (0.27, 0.34)
    for bad in ("0.3", "0.4-0.3", "0-0.2", "0.2-0.5", "a-b"):
        with pytest.raises(ValueError, match="radius=.*LOW-HIGH"):
            shapes.radius_range(bad)
