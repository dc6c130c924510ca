"""latentgen.plot.cells: each cell of a plot is the pipeline's own call (generate, img2img, inpaint) with its
settings; the cells of one model drawn together, in the calls' order."""

import numpy as np

from conftest import mask, photo
from latentgen.plot import cells


def test_the_call_a_cell_makes(pipe):
    assert cells.method(pipe, {"prompt": "a"}) == pipe.generate
    assert cells.method(pipe, {"prompt": "a", "image": photo()}) == pipe.img2img
    assert cells.method(pipe, {"prompt": "a", "image": photo(), "mask": mask()}) == pipe.inpaint


def test_each_cell_is_its_calls_own_image(pipe):
    kw = dict(seed=3, steps=2, guidance=4.0)
    calls = [{"prompt": "a red circle", **kw},
             {"prompt": "a red circle", "image": photo(), "strength": 0.5, **kw},
             {"prompt": "a red circle", "image": photo(seed=1), "mask": mask(), "strength": 0.9, **kw}]
    got = cells.draw(pipe, calls)
    want = [pipe.generate("a red circle", **kw)[0],
            pipe.img2img("a red circle", photo(), strength=0.5, **kw)[0],
            pipe.inpaint("a red circle", photo(seed=1), mask(), strength=0.9, **kw)[0]]
    assert all(np.array_equal(np.asarray(g), np.asarray(w)) for g, w in zip(got, want))
    assert "Denoising strength: 0.5" in got[1].info["parameters"]
