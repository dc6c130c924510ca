"""latentgen.images: img2img / inpainting inputs (image modes, arrays, paths, alpha masks, sizes, bad
input), the crop box of only-masked inpainting, the image grid."""

import warnings

import numpy as np
import pytest
from PIL import Image

from conftest import huge_png
from conftest import mask as _mask
from conftest import photo as _photo
from latentgen import images
from latentgen import images as im


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "1", "I;16", "I", "CMYK"])
def test_every_pil_mode_becomes_rgb(mode):
    src = _photo()
    image = src.convert("L").convert(mode) if mode in ("I;16", "I") else src.convert(mode)
    rgb, alpha = im.load_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == src.size
    assert (alpha is not None) == (mode in ("RGBA", "LA"))
    if mode in ("RGB", "RGBA"):
        assert np.array_equal(np.asarray(rgb), np.asarray(src))


def test_16_bit_images_are_scaled_not_clipped():
    a = np.full((8, 8), 32768, np.uint16)
    assert np.asarray(im.load_rgb(Image.fromarray(a))[0])[0, 0, 0] == 128  # PIL's convert would clip to 255
    assert np.asarray(im.load_rgb(a)[0])[0, 0, 0] == 128
    assert np.asarray(im.load_mask(Image.fromarray(np.full((8, 8), 65535, np.uint16))))[0, 0] == 1.0


def test_arrays_and_paths(tmp_path):
    src = _photo()
    a = np.asarray(src)
    for x in (a, a.astype(np.float32) / 255, np.dstack([a, np.full(a.shape[:2], 255, np.uint8)])):
        assert np.abs(np.asarray(im.load_rgb(x)[0], int) - a).max() <= 1
    src.save(tmp_path / "in.png")
    assert np.array_equal(np.asarray(im.load_rgb(tmp_path / "in.png")[0]), a)
    assert im.load_mask(np.ones((4, 4), bool)).min() == 1.0
    with pytest.raises(FileNotFoundError, match="image"):
        im.load_rgb(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        im.load_rgb(tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        im.load_rgb(a.astype(np.float32))  # 0-255 floats
    with pytest.raises(ValueError, match="shape"):
        im.load_rgb(np.zeros((4, 4, 2), np.uint8))


def test_img2img_accepts_any_input_and_keeps_odd_sizes(pipe, tmp_path):
    src = _photo(70).crop((0, 0, 70, 45))
    src.save(tmp_path / "odd.png")
    for x in (src, src.convert("P"), np.asarray(src), str(tmp_path / "odd.png")):
        out = pipe.img2img("a cat", x, strength=0.5, steps=2)[0]
        assert out.size == (70, 45) and out.mode == "RGB"
    assert "Denoising strength: 0.5" in out.info["parameters"] and "Size: 70x45" in out.info["parameters"]


def test_alpha_channel_is_the_mask(pipe):
    src = _photo().convert("RGBA")
    a = np.asarray(src).copy()
    a[10:30, 10:30, 3] = 0  # transparent: repaint
    out = pipe.inpaint("a cat", Image.fromarray(a), steps=2)[0]
    hole = np.zeros((64, 64), bool)
    hole[10:30, 10:30] = True
    rgb = np.asarray(src.convert("RGB"))
    assert np.array_equal(np.asarray(out)[~hole], rgb[~hole])
    assert not np.array_equal(np.asarray(out)[hole], rgb[hole])


def test_transparent_pixels_are_flattened_onto_white(pipe):
    """As A1111's img2img: an RGBA input is composited onto white, not cut to the RGB hidden under
    its transparent pixels (black here)."""
    a = np.dstack([np.asarray(_photo()), np.full((64, 64), 255, np.uint8)])
    a[:32, :, :3], a[:32, :, 3] = 0, 0  # top half: transparent, black underneath
    a[32:40, :, 3] = 128  # half transparent
    rgb, alpha = im.load_rgb(Image.fromarray(a, "RGBA"))
    out = np.asarray(rgb, np.int16)
    assert (out[:32] == 255).all() and np.array_equal(alpha, a[..., 3])
    half = a[32:40, :, :3].astype(np.float32)
    assert np.abs(out[32:40] - (half * 128 + 255 * 127) / 255).max() <= 1
    assert np.array_equal(out[40:], a[40:, :, :3])  # opaque pixels as they are
    white = a[..., :3].copy()
    white[:40] = out[:40]
    ours, flat = (pipe.img2img("a cat", x, strength=0.0)[0] for x in (Image.fromarray(a, "RGBA"), white))
    assert np.array_equal(np.asarray(ours), np.asarray(flat))


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_a_mask_with_transparency_is_its_alpha(pipe, mode):
    """A1111's create_binary_mask: strokes of any color on a transparent layer repaint where opaque."""
    a = np.zeros((64, 64, 4), np.uint8)  # transparent black
    a[16:40, 20:44] = (0, 0, 0, 255)  # an opaque black stroke: repaint
    a[0:8, 0:8] = (200, 30, 30, 255)  # an opaque red one
    layer = Image.fromarray(a, "RGBA").convert(mode)
    m = im.load_mask(layer)
    assert m[16:40, 20:44].min() == 1.0 and m[0:8, 0:8].min() == 1.0
    assert m.sum() == 24 * 24 + 8 * 8
    opaque = a.copy()
    opaque[..., 3] = 255
    assert im.load_mask(Image.fromarray(opaque, "RGBA")).max() < 0.5  # fully opaque: its gray (black, keep)
    src = _photo()
    out = np.asarray(pipe.inpaint("a cat", src, layer, steps=2, mask_blur=0)[0], np.int16)
    hole, orig = m >= 0.5, np.asarray(src, np.int16)
    assert np.array_equal(out[~hole], orig[~hole]) and np.abs(out[hole] - orig[hole]).mean() > 3


def test_only_masked_on_a_larger_image(pipe):
    src = _photo(160)
    m = np.zeros((160, 160), np.uint8)
    m[100:120, 30:50] = 255
    out = pipe.inpaint("a cat", src, Image.fromarray(m), only_masked=True, padding=8, steps=2)[0]
    assert out.size == (160, 160)
    keep = m < 128
    assert np.array_equal(np.asarray(out)[keep], np.asarray(src)[keep])
    assert "Inpaint area: Only masked" in out.info["parameters"]
    assert im.crop_box(m >= 128, 8, 1.0) == (22, 92, 58, 128)  # 20x20 box + 8 px each side, square


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan"), "0.5", True])
def test_bad_strength(pipe, strength):
    with pytest.raises(ValueError, match="strength"):
        pipe.img2img("a cat", _photo(), strength=strength)
    with pytest.raises(ValueError, match="strength"):
        pipe.inpaint("a cat", _photo(), _mask(), strength=strength)


def test_bad_masks_and_sizes(pipe):
    with pytest.raises(TypeError, match="mask must be"):
        pipe.inpaint("a cat", _photo(), 5)
    with pytest.raises(ValueError, match="mask is 32x32 but image is 64x64"):
        pipe.inpaint("a cat", _photo(), _mask(32))
    with pytest.raises(ValueError, match="mask is missing"):
        pipe.inpaint("a cat", _photo())
    with pytest.raises(ValueError, match="mask_blur"):
        pipe.inpaint("a cat", _photo(), _mask(), mask_blur=-1)
    with pytest.raises(ValueError, match="padding"):
        pipe.inpaint("a cat", _photo(), _mask(), padding=-2)
    with pytest.raises(ValueError, match="max_pixels=4096"):
        pipe.img2img("a cat", _photo(), max_pixels=1000)
    assert pipe.img2img("a cat", _photo(), max_pixels=4096, steps=1)[0].size == (64, 64)  # the bound is raisable


def test_mask_blur_defaults_to_the_models(pipe):
    """``mask_blur=None`` (the default) takes the model's ``defaults.mask_blur``; a bad one is named."""
    from dataclasses import replace

    kw = dict(seed=3, steps=2)
    assert pipe.defaults.mask_blur == 4  # a model that says nothing: A1111's 4
    feathered, sharp = (np.asarray(pipe.inpaint("a cat", _photo(), _mask(), mask_blur=b, **kw)[0]) for b in (4, 0))
    assert np.array_equal(np.asarray(pipe.inpaint("a cat", _photo(), _mask(), **kw)[0]), feathered)
    assert not np.array_equal(feathered, sharp)
    before = pipe.defaults
    try:
        pipe.defaults = replace(before, mask_blur=0)
        assert np.array_equal(np.asarray(pipe.inpaint("a cat", _photo(), _mask(), **kw)[0]), sharp)
        pipe.defaults = replace(before, mask_blur=-2)
        with pytest.raises(ValueError, match="defaults.mask_blur"):
            pipe.inpaint("a cat", _photo(), _mask(), **kw)
    finally:
        pipe.defaults = before


def test_empty_mask_returns_the_input_with_a_warning(pipe):
    src = _photo()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = pipe.inpaint("a cat", src, np.zeros((64, 64), np.uint8), num_images=2)
    assert any("mask is empty" in str(x.message) for x in w)
    assert len(out) == 2 and all(np.array_equal(np.asarray(o), np.asarray(src)) for o in out)


def test_grid_tiles_images():
    ims = [Image.new("RGB", (64, 64), c) for c in ("red", "blue", "green")]
    g = images.grid(ims, cols=2, labels=["a", "b", "c"], scale=1, pad=2)
    assert g.size[0] == 2 * 66 + 2 and g.getpixel((3, 3)) == (255, 0, 0) and g.getpixel((70, 3)) == (0, 0, 255)
    with pytest.raises(ValueError, match="images"):
        images.grid([], cols=2)
    with pytest.raises(ValueError, match="cols"):
        images.grid(ims, cols=0)


def test_a_file_s_size_is_checked_from_its_header_before_any_pixel_is_decoded(pipe, tmp_path, monkeypatch):
    bomb, big = tmp_path / "bomb.png", tmp_path / "big.png"
    bomb.write_bytes(huge_png(100000, 100000))  # past Pillow's own bound: its DecompressionBombError
    big.write_bytes(huge_png(12000, 12000))  # a valid PNG of a few KB, 1.2 GB of pixels decoded
    real = Image.Image.load

    def load(self):  # a big image's pixels are never decoded
        assert self.size[0] * self.size[1] <= 2048 * 2048, f"decoded {self.size} before its size was checked"
        return real(self)
    monkeypatch.setattr(Image.Image, "load", load)
    for path, words in [(bomb, r"claims a size far above max_pixels=4194304"),
                        (big, r"is 12000x12000 \(144.0 MP\), above max_pixels=4194304 .*read from its header")]:
        with pytest.raises(ValueError, match=words):
            pipe.img2img("a cat", path, steps=1)
        with pytest.raises(ValueError, match=words):
            pipe.inpaint("a cat", _photo(), path, steps=1)
    with pytest.raises(ValueError, match=r"max_pixels=100"):
        images.load_rgb(big, max_pixels=100)
