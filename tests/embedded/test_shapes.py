"""latentgen.embedded.shapes: the procedural world: deterministic data, held-out vocabulary."""

import random

import numpy as np

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
