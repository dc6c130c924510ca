"""latentgen.upscale.sd_upscale: A1111's "SD upscale". Its tiles are A1111's (positions, ramps over the overlap), each
tile is the pipeline's own img2img of the upscaled picture's crop with A1111's seed, and bad settings are refused
before anything draws."""

import numpy as np
import pytest
from PIL import Image

import latentgen
from conftest import photo
from latentgen.upscale import sd_upscale as sd
from latentgen.upscale import upscalers


def test_tiles_start_as_a1111_splits_the_picture():
    assert sd.tile_starts(1024, 512, 64) == [0, 256, 512]  # three tiles of 512 cover 1024 sharing >= 64 pixels
    assert sd.tile_starts(512, 512, 64) == [0] and sd.tile_starts(100, 64, 0) == [0, 36]
    assert sd.tile_starts(96, 64, 16) == [0, 32]
    assert sd.upscaled_size((100, 75), 2.5) == (248, 184)  # down to a multiple of 8, as A1111's upscalers


def test_tiles_cut_from_a_picture_combine_into_it_and_the_overlap_ramps():
    picture = photo(96)
    xs = ys = sd.tile_starts(96, 64, 16)
    tiles = [[picture.crop((x, y, x + 64, y + 64)) for x in xs] for y in ys]
    assert sd.combine(tiles, xs, ys, (96, 96), 16).tobytes() == picture.tobytes()
    black, white = Image.new("RGB", (64, 64)), Image.new("RGB", (64, 64), "white")
    row = np.asarray(sd.combine([[black, white]], [0, 32], [0], (96, 64), 16))[10, :, 0]
    assert (row[:32] == 0).all() and (row[48:] == 255).all()  # the right tile's ramp over pixels 32-47
    assert list(row[32:48]) == [int(i * 255 / 16) for i in range(16)]


def test_each_tile_is_the_img2img_of_the_upscaled_crop_with_a1111s_seed(pipe):
    kw = dict(steps=3, guidance=4.0, strength=0.5)
    src = photo(48)
    [out] = sd.sd_upscale(pipe, "a red cat", src, scale=2, overlap=16, width=64, height=64, seed=5, **kw)
    big = upscalers.pixels(src, (96, 96), "Lanczos")
    first = pipe.img2img("a red cat", big.crop((0, 0, 64, 64)), seed=5, **kw)[0]
    last = pipe.img2img("a red cat", big.crop((32, 32, 96, 96)), seed=8, **kw)[0]  # tile 3 of 4: seed + 3
    a = np.asarray(out)
    assert out.size == (96, 96) and (a[:32, :32] == np.asarray(first)[:32, :32]).all()
    assert (a[48:, 48:] == np.asarray(last)[16:, 16:]).all()  # past every overlap: the last tile as drawn
    assert out.info["parameters"].endswith("Denoising strength: 0.5, SD upscale overlap: 16, SD upscale upscaler: "
                                           "Lanczos")
    [b2] = sd.sd_upscale(pipe, "a red cat", src, scale=2, overlap=16, width=64, height=64, seed=5, batch=2, **kw)
    tile3 = pipe.img2img("a red cat", big.crop((32, 32, 96, 96)), seed=7, **kw)[0]  # A1111: 5 + 3 // 2 + 3 % 2
    assert (np.asarray(b2)[48:, 48:] == np.asarray(tile3)[16:, 16:]).all()
    two = sd.sd_upscale(pipe, "a red cat", src, scale=2, overlap=16, width=64, height=64, seed=4, num_images=2, **kw)
    assert two[1].tobytes() == out.tobytes()  # upscale n starts from seed + n


def test_a_stop_keeps_the_tiles_drawn_and_leaves_the_rest_upscaled(pipe):
    def stop(done, total, latents):
        if done == total // 4 + 1:  # in the second tile of four
            raise latentgen.Stop()

    src = photo(48)
    [out] = sd.sd_upscale(pipe, "a cat", src, overlap=16, width=64, height=64, steps=2, callback=stop)
    big = np.asarray(upscalers.pixels(src, (96, 96), "Lanczos"))
    assert (np.asarray(out)[48:, 48:] == big[48:, 48:]).all() and not (np.asarray(out)[:32, :32] == big[:32, :32]).all()


@pytest.mark.parametrize("kw, message", [
    (dict(scale=0.5), r"scale=0.5 is invalid: use 1 to 8"),
    (dict(overlap=64), r"tiles of 64x64 with overlap=64 do not fit"),
    (dict(width=128), r"tiles of 128x64 with overlap=16 do not fit the upscaled picture 96x96"),
    (dict(upscaler="Latent"), r"upscaler='Latent' works on latents"),
    (dict(upscaler="4x-nope"), r"upscaler='4x-nope' is not an upscaler here"),
    (dict(mask=photo()), r"takes no control= or mask="),
    (dict(steps=0), r"steps=0 is invalid"),
    (dict(width=63, height=63), r"width=63 is invalid: use a positive multiple"),
])
def test_bad_settings_are_refused_before_anything_draws(pipe, monkeypatch, kw, message):
    monkeypatch.setattr(pipe, "denoise", lambda *a, **k: pytest.fail("drew"))
    with pytest.raises(ValueError, match=message):
        sd.sd_upscale(pipe, "a cat", photo(48), **{"overlap": 16, "width": 64, "height": 64, **kw})
