"""latentgen.canvas.resize: img2img's resize modes as A1111 defines them (stretch; cover and crop; fit and fill
the bands with the outer rows or columns; latent upscale), and img2img drawing at width x height through them."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from conftest import max_diff, photo
from latentgen.canvas import resize


def _wide():
    """200x100: blue left half, red right half, a green top row and a yellow bottom row."""
    im = Image.new("RGB", (200, 100), (0, 0, 255))
    d = ImageDraw.Draw(im)
    d.rectangle((100, 0, 199, 99), fill=(255, 0, 0))
    d.line((0, 0, 199, 0), fill=(0, 255, 0))
    d.line((0, 99, 199, 99), fill=(255, 255, 0))
    return im


def test_just_resize_stretches():
    out = resize.resize(_wide(), (64, 64), "just resize")
    assert out.size == (64, 64) and out.getpixel((10, 32))[2] > 200 and out.getpixel((54, 32))[0] > 200


def test_crop_and_resize_covers_and_crops_evenly():
    out = resize.resize(_wide(), (64, 64), "crop and resize")  # scaled to 128x64, 32 px cut on each side
    a = np.asarray(out).astype(int)
    assert out.size == (64, 64)
    assert a[32, 2, 2] > 200 and a[32, 61, 0] > 200  # both halves survive, centered
    assert abs(int(np.argmax(np.abs(np.diff(a[32, :, 0]))) + 1) - 32) <= 1  # the edge in the middle


def test_resize_and_fill_fits_and_stretches_the_outer_rows_over_the_bands():
    out = resize.resize(_wide(), (64, 64), "resize and fill")  # scaled to 64x32 at y = 16
    a = np.asarray(out).astype(int)
    assert out.size == (64, 64)
    assert (a[:16] == a[16]).all() and (a[48:] == a[47]).all()  # the bands: the outer rows, stretched
    assert a[0, 5, 1] > 50 and a[63, 5, 0] > 50 and a[63, 5, 1] > 50  # greenish at the top, yellowish at the bottom
    assert a[32, 5, 2] > 200 and a[32, 58, 0] > 200  # the image itself, in the middle
    tall = resize.resize(_wide().rotate(90, expand=True), (64, 64), "resize and fill")
    assert np.asarray(tall).shape == (64, 64, 3)


def test_latent_upscale_leaves_the_pixels_alone_and_modes_by_number():
    im = _wide()
    assert resize.resize(im, (64, 64), "latent upscale") is im
    assert [resize.mode(i) for i in range(4)] == list(resize.MODES)
    with pytest.raises(ValueError, match="resize_mode='stretch' is invalid"):
        resize.mode("stretch")


def test_img2img_draws_at_width_and_height_through_the_mode(pipe):
    src = _wide().resize((96, 48))
    outs = {m: pipe.img2img("a cat", src, width=64, height=64, resize_mode=m, strength=0.5, seed=2, steps=4)[0]
            for m in resize.MODES}
    assert {o.size for o in outs.values()} == {(64, 64)}
    assert "Size: 64x64" in outs["crop and resize"].info["parameters"]
    assert min(max_diff([outs[a]], [outs[b]]) for a in resize.MODES for b in resize.MODES if a < b) > 0
    same = pipe.img2img("a cat", resize.resize(src, (64, 64), "crop and resize"), strength=0.5, seed=2, steps=4)
    assert max_diff(same, [outs["crop and resize"]]) == 0  # the mode is only the fitting
    assert pipe.img2img("a cat", src, strength=0.5, seed=2, steps=4)[0].size == (96, 48)  # default: its own size
    with pytest.raises(ValueError, match="width=0 is invalid"):
        pipe.img2img("a cat", src, width=0, height=64)


def test_latent_upscale_resizes_the_image_latents_bilinear(pipe):
    from latentgen import images, starts

    src = photo(32)
    out = pipe.img2img("a cat", src, width=64, height=64, resize_mode=3, strength=0.0, seed=4, steps=4)[0]
    z = starts.latent_samples(pipe.vae, images.to_tensor(src), [torch.Generator().manual_seed(4)], torch.float32)
    f = pipe.vae_scale_factor
    z = torch.nn.functional.interpolate(z, size=(64 // f, 64 // f), mode="bilinear")
    assert out.size == (64, 64) and max_diff([out], pipe.decode(z)) == 0
