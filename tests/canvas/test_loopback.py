"""latentgen.canvas.loopback: A1111's Loopback. Its strengths follow A1111's curves, each loop is the pipeline's own
img2img (inpaint) of the last loop's picture with A1111's seeds, and a stop keeps the loops drawn."""

import math

import numpy as np
import pytest

import latentgen
from conftest import mask, photo
from latentgen.canvas import loopback as lb


def test_the_strengths_follow_a1111s_curves():
    assert lb.strengths(4, 0.75, 0.5) == pytest.approx([0.75, 0.75 - 0.25 / 3, 0.75 - 0.5 / 3, 0.5])
    assert lb.strengths(3, 0.2, 0.6, "Aggressive") == pytest.approx([0.2, 0.2 + 0.4 * math.sin(math.pi / 4), 0.6])
    assert lb.strengths(3, 0.2, 0.6, "Lazy") == pytest.approx([0.2, 0.2 + 0.4 * (1 - math.cos(math.pi / 4)), 0.6])
    assert lb.strengths(1, 0.3, 0.9) == [0.3]
    for args, message in [((0, 0.5, 0.5), "loops=0 is invalid"), ((2, 0.5, 1.5), "final_strength=1.5 is invalid"),
                          ((2, 1.2, 0.5), "strength=1.2 is invalid"), ((2, 0.5, 0.5, "Steep"), "curve='Steep'")]:
        with pytest.raises(ValueError, match=message):
            lb.strengths(*args)


def test_each_loop_redraws_the_last_with_the_next_seed(pipe):
    kw = dict(steps=4, guidance=4.0)
    got = lb.loopback(pipe, "a red cat", photo(), loops=3, strength=0.8, final_strength=0.4, seed=5, num_images=2, **kw)
    assert [len(p) for p in got] == [3, 3]
    last, seed = photo(), 5
    for n in range(2):
        last = photo()
        for i, s in enumerate(lb.strengths(3, 0.8, 0.4)):
            last = pipe.img2img("a red cat", last, strength=s, seed=seed, **kw)[0]
            assert np.array_equal(np.asarray(got[n][i]), np.asarray(last)), (n, i)
            seed += 1  # A1111: one seed on each loop, across the pictures too
    assert got[1][2].info["parameters"].endswith("Final denoising strength: 0.4, Denoising curve: Linear")


def test_with_a_mask_each_loop_inpaints_and_later_loops_start_from_the_picture(pipe):
    kw = dict(steps=3, guidance=4.0, mask_blur=0)
    [got] = lb.loopback(pipe, "a red cat", photo(), mask(), loops=2, strength=1.0, final_strength=0.6,
                        fill="latent noise", seed=2, **kw)
    first = pipe.inpaint("a red cat", photo(), mask(), strength=1.0, fill="latent noise", seed=2, **kw)[0]
    second = pipe.inpaint("a red cat", first, mask(), strength=0.6, fill="original", seed=3, **kw)[0]
    assert np.array_equal(np.asarray(got[1]), np.asarray(second))


def test_a_stop_ends_the_loops_keeping_those_drawn(pipe, monkeypatch):
    calls = []

    def stop(done, total, latents):
        calls.append((done, total))
        if done > total / 6:  # in loop 2 of picture 1's 3 (of 6 loops in all)
            raise latentgen.Stop()

    got = lb.loopback(pipe, "a cat", photo(), loops=3, strength=0.9, final_strength=0.9, steps=3, num_images=2,
                      callback=stop)
    assert [len(p) for p in got] == [2] and all(d <= t for d, t in calls)  # picture 1's loops 1-2, nothing after
    monkeypatch.setattr(pipe, "denoise", lambda *a, **k: pytest.fail("drew"))
    with pytest.raises(ValueError, match="steps=0 is invalid"):
        lb.loopback(pipe, "a cat", photo(), steps=0)
