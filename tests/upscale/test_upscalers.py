"""latentgen.upscale.upscalers: A1111's latent upscale modes (interpolate mode and antialias per name) and the
pixel resamplers; unknown names are refused with the list."""

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from latentgen.upscale import upscalers


@pytest.mark.parametrize("name, mode, antialias", [
    ("Latent", "bilinear", False), ("Latent (antialiased)", "bilinear", True), ("Latent (bicubic)", "bicubic", False),
    ("Latent (bicubic antialiased)", "bicubic", True), ("Latent (nearest)", "nearest", False),
    ("Latent (nearest-exact)", "nearest-exact", False),
])
def test_latent_modes_are_a1111s(name, mode, antialias):
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    want = F.interpolate(z, size=(12, 16), mode=mode, **({"antialias": True} if antialias else {}))
    assert torch.equal(upscalers.latent(z, (12, 16), name), want) and upscalers.is_latent(name)


def test_pixel_upscalers_resize_the_picture():
    im = Image.new("RGB", (4, 4), (255, 0, 0))
    im.putpixel((0, 0), (0, 0, 255))
    near = upscalers.pixels(im, (8, 8), "Nearest")
    assert near.size == (8, 8) and near.getpixel((1, 1)) == (0, 0, 255) and near.getpixel((2, 2)) == (255, 0, 0)
    assert upscalers.pixels(im, (8, 8), "Lanczos").getpixel((1, 1)) != (0, 0, 255)  # resampled, not repeated
    assert not upscalers.is_latent("Lanczos")


def test_unknown_upscalers_are_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"hires.upscaler='R-ESRGAN 4x\+' is not an upscaler here: use one of "
                                         r"'Latent', .*'Lanczos'"):
        upscalers.check("R-ESRGAN 4x+", "hires.upscaler")
