"""latentgen.canvas.fill: A1111's masked content. The hole painted from its surroundings keeps every known pixel
and takes the nearest colours; each mode keeps the outside pixels exactly, on 4- and 9-channel U-Nets; the modes
differ where the start keeps the image (strength < 1) and the latent ones agree at strength 1 (pure noise; "fill"
changes what the VAE encodes beside the hole too, as in A1111); the latent modes put
the start noise or zeros in the hole."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import mask, max_diff, photo
from latentgen.canvas import fill


def _halves():
    a = np.zeros((64, 64, 3), np.uint8)
    a[:, :32] = (0, 0, 255)
    a[:, 32:] = (255, 0, 0)
    return Image.fromarray(a)


def test_paint_hole_keeps_the_known_pixels_and_takes_the_colours_around():
    image = _halves()
    hole = np.zeros((64, 64))
    hole[16:48, 8:56] = 1
    out = np.asarray(fill.paint_hole(image, hole)).astype(int)
    assert np.array_equal(out[hole < 0.5], np.asarray(image)[hole < 0.5])
    left, right = out[32, 10], out[32, 53]  # inside the hole, near each side
    assert left[2] > 200 > left[0] and right[0] > 200 > right[2]
    assert 60 < out[32, 32, 0] < 200 and 60 < out[32, 32, 2] < 200  # the middle: both, mixed
    assert not np.array_equal(out[hole >= 0.5], np.asarray(image)[hole >= 0.5])


def test_hole_latents():
    z0, noise = torch.ones(1, 4, 4, 4), torch.full((1, 4, 4, 4), 7.0)
    hole = torch.zeros(1, 1, 4, 4)
    hole[..., 1:3, 1:3] = 1
    assert torch.equal(fill.hole_latents(z0, hole, noise, "original"), z0)
    assert torch.equal(fill.hole_latents(z0, hole, noise, "fill"), z0)
    assert torch.equal(fill.hole_latents(z0, hole, noise, "latent noise"), torch.where(hole > 0, noise, z0))
    assert torch.equal(fill.hole_latents(z0, hole, noise, "latent nothing"), torch.where(hole > 0, 0.0, z0))


@pytest.mark.parametrize("value, name", [(0, "fill"), (1, "original"), (2, "latent noise"), (3, "latent nothing"),
                                         ("latent noise", "latent noise")])
def test_modes_by_a1111_number_or_name(value, name):
    assert fill.mode(value) == name


@pytest.mark.parametrize("bad", [4, -1, "noise", True, 1.0])
def test_bad_modes_name_the_parameter(bad):
    with pytest.raises(ValueError, match="fill="):
        fill.mode(bad)


@pytest.mark.parametrize("nine", [False, True])
def test_every_mode_keeps_the_outside_and_they_differ_where_the_image_is_kept(pipe, folder9, nine):
    import latentgen

    p = latentgen.load(folder9) if nine else pipe
    image, hole = photo(), mask()
    outside = np.asarray(hole) < 128

    def draw(mode, strength=0.6):
        return p.inpaint("a red square", image, hole, strength=strength, seed=3, steps=5, guidance=4,
                         mask_blur=0, fill=mode)
    drawn = {m: draw(m) for m in fill.MODES}
    for m, out in drawn.items():
        assert np.array_equal(np.asarray(out[0])[outside], np.asarray(image)[outside]), m
    assert min(max_diff(drawn[a], drawn[b]) for a in fill.MODES for b in fill.MODES if a < b) > 0
    full = [draw(m, 1.0) for m in ("original", "latent noise", "latent nothing")]
    assert all(max_diff(full[0], f) == 0 for f in full[1:])  # strength 1: pure noise, whatever is in the hole
    with pytest.raises(ValueError, match="fill='noise' is invalid"):
        draw("noise")
