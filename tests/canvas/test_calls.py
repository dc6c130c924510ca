"""latentgen.canvas.calls: the calls that start from a picture, as Pipeline methods. Outpainting extends the
picture and keeps it, pixel for pixel, outside the seam; the new area is drawn; bad sides fail before any model
runs. (img2img and inpainting against diffusers: tests/test_starts.py; their modes: test_resize.py, test_fill.py.)"""

import numpy as np
import pytest

from conftest import max_diff, photo


def test_outpaint_extends_and_keeps_the_picture(pipe):
    src = photo(64)
    out = pipe.outpaint("a red cat", src, right=32, bottom=16, seed=2, steps=4, mask_blur=2)
    assert [o.size for o in out] == [(96, 80)]
    a = np.asarray(out[0]).astype(int)
    assert np.array_equal(a[:60, :60], np.asarray(src)[:60, :60])  # outside the 4 px seam: exactly the picture
    assert a[:, 64:].std() > 3 and a[64:].std() > 3  # the new area is drawn, not a flat fill
    params = out[0].info["parameters"]
    assert "Size: 96x80" in params and "Denoising strength: 0.8" in params and "Mask blur: 2" in params
    # it is inpainting on the larger canvas
    from latentgen.canvas.outpaint import extend

    canvas, mask = extend(src, right=32, bottom=16, overlap=4)
    same = pipe.inpaint("a red cat", canvas, mask, fill="fill", strength=0.8, seed=2, steps=4, mask_blur=2)
    assert max_diff(out, same) == 0


def test_outpaint_refuses_bad_sides_before_any_model_runs(pipe, monkeypatch):
    monkeypatch.setattr(pipe.text_encoder, "forward", lambda *a, **k: pytest.fail("encoded before refusing"))
    with pytest.raises(ValueError, match="nothing to outpaint"):
        pipe.outpaint("a cat", photo(64))
    with pytest.raises(ValueError, match="left=-4 is invalid"):
        pipe.outpaint("a cat", photo(64), left=-4)
    with pytest.raises(ValueError, match="fill='sky' is invalid"):
        pipe.outpaint("a cat", photo(64), left=8, fill="sky")
