"""latentgen.upscale.upscalers: A1111's latent upscale modes (interpolate mode and antialias per name), the
pixel resamplers, and upscaler model files by path or by stem in a folder: run in blended tiles, as many passes as
the size asks (A1111's rule), then Lanczos to the exact size; unknown names are refused with the list."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from latentgen.upscale import esrgan, upscalers


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


def test_unknown_upscalers_are_refused_with_the_choices(monkeypatch, upscaler_folder):
    monkeypatch.delenv(upscalers.ENV, raising=False)
    with pytest.raises(ValueError, match=r"hires.upscaler='R-ESRGAN 4x\+' is not an upscaler here: use one of "
                                         r"'Latent', .*'Lanczos'.*, or a model file's path, or set "
                                         r"\$LATENTGEN_UPSCALERS to a folder of them"):
        upscalers.check("R-ESRGAN 4x+", "hires.upscaler")
    with pytest.raises(ValueError, match=r"model files in .*: '2x-compact', '4x-tiny' \(ESRGAN, Real-ESRGAN"):
        upscalers.check("4x-other", "upscaler", folder=upscaler_folder)
    with pytest.raises(TypeError, match="upscaler must be an upscaler's name, got int"):
        upscalers.check(4)


def test_model_files_by_stem_or_path(monkeypatch, upscaler_folder):
    monkeypatch.delenv(upscalers.ENV, raising=False)
    path = str(upscaler_folder / "4x-tiny.pth")
    assert upscalers.check(path) == path and upscalers.label(path) == "4x-tiny"
    assert upscalers.label("Latent") == "Latent"
    assert upscalers.check("4x-tiny", folder=upscaler_folder) == path
    assert list(upscalers.model_files(upscaler_folder)) == ["2x-compact", "4x-tiny"] and not upscalers.model_files()
    monkeypatch.setenv(upscalers.ENV, str(upscaler_folder))
    assert upscalers.check("2x-compact") == str(upscaler_folder / "2x-compact.safetensors")
    assert upscalers.model(path) is upscalers.model(path)  # read once
    assert upscalers.describe(path) == ("ESRGAN", 4)
    assert not upscalers.is_latent(path)


def picture(w=41, h=30, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_a_model_runs_as_many_passes_as_the_size_asks(monkeypatch, upscaler_folder):
    passes = []
    run = upscalers.run
    monkeypatch.setattr(upscalers, "run", lambda net, im, **kw: passes.append(net.scale) or run(net, im, **kw))
    two, four = (str(upscaler_folder / n) for n in ("2x-compact.safetensors", "4x-tiny.pth"))
    im = picture()
    out = upscalers.pixels(im, (164, 120), two)  # x2, x2
    assert out.size == (164, 120) and passes == [2, 2]
    want = run(upscalers.model(two), run(upscalers.model(two), im))
    assert np.array_equal(np.asarray(out), np.asarray(want))
    passes.clear()
    out = upscalers.pixels(im, (82, 60), four)  # one x4 pass, then Lanczos down to x2
    assert passes == [4] and np.array_equal(np.asarray(out), np.asarray(
        run(upscalers.model(four), im).resize((82, 60), Image.Resampling.LANCZOS)))
    passes.clear()
    assert upscalers.pixels(im, (50, 40), two).size == (50, 40) and passes == [2]


def test_tiles_blend_into_the_whole_pictures_pass(upscaler_folder):
    net = upscalers.model(upscaler_folder / "2x-compact.safetensors")
    im = picture()
    whole = np.asarray(upscalers.run(net, im, tile=0)).astype(int)
    assert whole.shape == (60, 82, 3) and whole.std() > 10
    assert np.array_equal(np.asarray(upscalers.run(net, im, tile=64)), whole)  # one tile: the same pass
    for bad in (5, 16, -1, 2.5, True):  # tiles must be wider than two overlaps (8 pixels each)
        with pytest.raises(ValueError, match=rf"tile={bad!r} is invalid: use 0 .* more than 16 pixels"):
            upscalers.run(net, im, tile=bad)
    tiled = np.abs(np.asarray(upscalers.run(net, im, tile=17)).astype(int) - whole)  # 3 x 3 tiles
    assert tiled.max() <= 8 and tiled.mean() < 0.5  # without the overlap: 23 and 0.76


def test_a_one_x_model_runs_once(tmp_path):
    from safetensors.torch import save_file

    net = esrgan.Compact(3, nf=4, convs=1, scale=1)
    save_file(dict(net.state_dict()), str(tmp_path / "1x-clean.safetensors"))
    im = picture()
    out = upscalers.pixels(im, im.size, str(tmp_path / "1x-clean.safetensors"))
    assert out.size == im.size and not np.array_equal(np.asarray(out), np.asarray(im))
