"""latentgen.starts (through the pipeline): img2img and inpainting against diffusers'
StableDiffusionImg2ImgPipeline and StableDiffusionInpaintPipeline on tiny random components (4- and
9-channel U-Nets): within 1/255, compared before latentgen's pixel composite (composite=False); the
pixels outside the mask; the coverage latent mask."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import diffusers_pipeline
from conftest import max_diff as _max_diff
from latentgen import schedulers


def _photo(seed=0, size=64):
    """A smooth random RGB image (so the VAE sees structure, not only noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def _mask(size=64):
    m = np.zeros((size, size), np.uint8)
    m[16:44, 20:52] = 255
    return Image.fromarray(m)


@pytest.fixture(scope="module")
def img2img_ref(tiny_folder):
    return diffusers_pipeline("StableDiffusionImg2ImgPipeline", tiny_folder)


@pytest.fixture(scope="module")
def inpaint_ref(tiny_folder):
    return diffusers_pipeline("StableDiffusionInpaintPipeline", tiny_folder)


def _gens(seed, n):
    gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    return gens[0] if n == 1 else gens


@pytest.mark.parametrize("name", ["ddim", "euler_a", "dpm++2m", "pndm"])
@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_img2img_matches_diffusers(pipe, img2img_ref, name, strength):
    image = _photo(1)
    ours = pipe.img2img("a red cat", image, strength=strength, seed=7, steps=5, guidance=6.0, scheduler=name)
    img2img_ref.scheduler = schedulers.make(name, pipe.scheduler.config)
    ref = img2img_ref("a red cat", image=image, strength=strength, num_inference_steps=5, guidance_scale=6.0,
                      generator=_gens(7, 1)).images
    assert _max_diff(ours, ref) <= 1
    other = pipe.img2img("a red cat", image, strength=strength, seed=8, steps=5, guidance=6.0, scheduler=name)
    assert _max_diff(ours, other) > 5  # the seed matters, so the comparison has teeth


def test_img2img_batch_uses_per_image_seeds(pipe, img2img_ref):
    image = _photo(2)
    ours = pipe.img2img("a dog", image, strength=0.7, seed=3, steps=4, guidance=5.0, num_images=2,
                        negative_prompt="blurry", scheduler="euler_a")
    img2img_ref.scheduler = schedulers.make("euler_a", pipe.scheduler.config)
    ref = img2img_ref("a dog", image=image, strength=0.7, num_inference_steps=4, guidance_scale=5.0,
                      negative_prompt="blurry", num_images_per_prompt=2, generator=_gens(3, 2)).images
    assert _max_diff(ours, ref) <= 1
    single = pipe.img2img("a dog", image, strength=0.7, seed=4, steps=4, guidance=5.0,
                          negative_prompt="blurry", scheduler="euler_a")
    assert np.array_equal(np.asarray(ours[1]), np.asarray(single[0]))


@pytest.mark.parametrize("strength", [0.0, 0.05])  # 0.05: int(10 * 0.05) = 0 steps too
def test_img2img_strength_zero_is_the_vae_reconstruction(pipe, strength):
    """No step runs and the VAE reconstruction comes back, with every sampler (PLMS included, whose
    timestep list has one more entry than the steps), in img2img and in inpainting's hole."""
    image = _photo(3)
    vae = pipe.vae
    from latentgen.images import to_tensor

    with torch.no_grad():
        z = vae.encode(to_tensor(image)).latent_dist.sample(generator=torch.Generator().manual_seed(0))
        expected = pipe.decode(z * vae.config.scaling_factor)[0]
    hole = np.asarray(_mask()) > 0
    for name in schedulers.SAMPLERS:
        steps = []
        out = pipe.img2img("a cat", image, strength=strength, seed=0, steps=10, scheduler=name,
                           callback=lambda done, total, lat: steps.append(done))[0]
        assert steps == [] and _max_diff([out], [expected]) <= 1, name
        assert f"Denoising strength: {strength}" in out.info["parameters"]
        filled = pipe.inpaint("a cat", image, _mask(), strength=strength, seed=0, steps=10, scheduler=name,
                              mask_blur=0, callback=lambda done, total, lat: steps.append(done))[0]
        diff = np.abs(np.asarray(filled, np.int16) - np.asarray(expected, np.int16))
        assert steps == [] and diff[hole].max() <= 1, name


@pytest.mark.parametrize("name,runs", [("ddim", 5), ("euler_a", 5), ("pndm", 6)])
def test_img2img_runs_int_steps_times_strength_plms_one_more(pipe, name, runs):
    """As in diffusers: int(steps * strength) sampler steps; PLMS one more (its list repeats a timestep)."""
    seen = []
    pipe.img2img("a cat", _photo(3), strength=0.5, steps=10, scheduler=name, callback=lambda d, t, lat: seen.append(t))
    assert seen == [runs] * runs


@pytest.mark.parametrize("name,strength", [("ddim", 1.0), ("euler_a", 1.0), ("euler_a", 0.75), ("dpm++2m", 0.5)])
def test_inpaint_4ch_matches_diffusers(pipe, inpaint_ref, name, strength):
    image, mask = _photo(4), _mask()
    ours = pipe.inpaint("a red square", image, mask, strength=strength, seed=5, steps=5, guidance=6.0,
                        scheduler=name, composite=False, latent_mask="nearest")
    inpaint_ref.scheduler = schedulers.make(name, pipe.scheduler.config)
    ref = inpaint_ref("a red square", image=image, mask_image=mask, strength=strength, num_inference_steps=5,
                      guidance_scale=6.0, generator=_gens(5, 1), height=64, width=64).images
    assert _max_diff(ours, ref) <= 1


@pytest.mark.parametrize("name,strength", [("ddim", 1.0), ("euler_a", 1.0), ("euler_a", 0.7)])
def test_inpaint_9ch_matches_diffusers(folder9, name, strength):
    import latentgen
    from diffusers import StableDiffusionInpaintPipeline

    pipe9 = latentgen.load(folder9)
    assert pipe9.unet.config.in_channels == 9
    ref = StableDiffusionInpaintPipeline.from_pretrained(folder9, safety_checker=None)
    ref.set_progress_bar_config(disable=True)
    ref.scheduler = schedulers.make(name, pipe9.scheduler.config)
    image, mask = _photo(5), _mask()
    ours = pipe9.inpaint("a red square", image, mask, strength=strength, seed=2, steps=5, guidance=6.0,
                         scheduler=name, composite=False)
    theirs = ref("a red square", image=image, mask_image=mask, strength=strength, num_inference_steps=5,
                 guidance_scale=6.0, generator=_gens(2, 1), height=64, width=64).images
    assert _max_diff(ours, theirs) <= 1
    with pytest.raises(ValueError, match="inpainting model"):
        pipe9.generate("a cat", steps=1)


def _outside_unchanged(src, out, mask):
    keep = np.asarray(mask.convert("L")) < 128
    a, b = np.asarray(src.convert("RGB")), np.asarray(out)
    assert out.size == src.size
    assert np.array_equal(a[keep], b[keep])
    assert np.abs(a[~keep].astype(int) - b[~keep]).mean() > 3  # and the hole did change


@pytest.mark.parametrize("kwargs", [{}, {"mask_blur": 0}, {"mask_blur": 10}, {"strength": 0.6},
                                    {"only_masked": True, "padding": 4}, {"scheduler": "euler_a", "num_images": 2}])
def test_inpaint_keeps_every_pixel_outside_the_mask(pipe, kwargs):
    image, mask = _photo(6), _mask()
    outs = pipe.inpaint("a cat", image, mask, seed=1, steps=3, **kwargs)
    for out in outs:
        _outside_unchanged(image, out, mask)


def test_inpaint_9ch_keeps_outside_and_sizes_that_are_not_multiples(folder9, pipe):
    import latentgen

    image = _photo(7, 70).crop((0, 0, 70, 61))  # 70x61: worked at 64x56, resized back
    m = np.zeros((61, 70), np.uint8)
    m[10:40, 15:50] = 255
    mask = Image.fromarray(m)
    for p in (latentgen.load(folder9), pipe):
        _outside_unchanged(image, p.inpaint("a cat", image, mask, steps=2)[0], mask)
    out = pipe.img2img("a cat", image, strength=0.5, steps=2)[0]
    assert out.size == (70, 61)


def test_coverage_latent_mask_sits_on_the_pixel_hole(pipe):
    """The default latent mask repaints the cells at least half inside the hole; diffusers' nearest
    sampling takes each cell's top-left pixel, shifting the hole right/down on unaligned masks."""
    from latentgen.starts import to_latent_mask

    m = torch.zeros(1, 1, 64, 64)
    m[..., 13:50, 13:50] = 1  # the embedded model's inpainting yardstick: a centered 37 px hole
    cov, near = to_latent_mask(m, (8, 8))[0, 0], to_latent_mask(m, (8, 8), "nearest")[0, 0]
    assert cov.nonzero()[:, 0].tolist() == [2] * 4 + [3] * 4 + [4] * 4 + [5] * 4  # cells 2..5: pixels 16..47
    assert near[6, 6] == 1 and near[1, 1] == 0  # cell 6 (pixels 48..55) is mostly outside the hole
    aligned = torch.zeros(1, 1, 64, 64)
    aligned[..., 16:48, 8:40] = 1
    assert torch.equal(to_latent_mask(aligned, (8, 8)), to_latent_mask(aligned, (8, 8), "nearest"))
    with pytest.raises(ValueError, match="latent_mask"):
        pipe.inpaint("a cat", _photo(1), _mask(), steps=1, latent_mask="bilinear")


def test_a_stroke_thinner_than_a_cell_repaints_the_cells_it_touches(pipe):
    """A 3-px line fills no 8x8 cell by half: with latent blending it would repaint nothing (the
    reconstruction); its cells repaint instead. Parts that fill a cell by half keep the half rule."""
    from latentgen.starts import to_latent_mask

    m = torch.zeros(1, 1, 64, 64)
    m[..., :, 30:33] = 1  # pixels 30..32: cells 3 (24..31) and 4 (32..39), 2/8 and 1/8 covered
    lat = to_latent_mask(m, (8, 8))[0, 0]
    assert lat[:, 3:5].eq(1).all() and lat.sum() == 16
    m[..., 8:40, 8:40] = 1  # a block over the line: one part, with whole cells; the line's other cells drop
    assert to_latent_mask(m, (8, 8))[0, 0].nonzero()[:, 0].unique().tolist() == [1, 2, 3, 4]
    image, stroke = _photo(8), np.zeros((64, 64), np.uint8)
    stroke[:, 30:33] = 255
    rec = pipe.img2img("a cat", image, strength=0.0, seed=0)[0]
    out = pipe.inpaint("a red square", image, stroke, seed=0, steps=4, mask_blur=0, variant="blend")[0]
    diff = np.abs(np.asarray(out, np.int16) - np.asarray(rec, np.int16))[:, 30:33]
    assert diff.max() > 10


# -- A1111's variation seeds (latentgen.starts.Variation) ----------------------------------------------------
def _ddim(pipe, **kw):
    return pipe.generate("a red cat", steps=4, guidance=5.0, scheduler="ddim", **kw)


def test_variation_strength_0_is_the_seed_and_1_the_variation_seed(pipe):
    from latentgen import Variation

    seed_image, sub_image = _ddim(pipe, seed=3), _ddim(pipe, seed=40)
    assert _max_diff(_ddim(pipe, seed=3, variation=Variation(seed=40, strength=0.0)), seed_image) == 0
    assert _max_diff(_ddim(pipe, seed=3, variation=Variation(seed=40, strength=1.0)), sub_image) <= 2
    half = _ddim(pipe, seed=3, variation=Variation(seed=40, strength=0.5))
    assert _max_diff(half, seed_image) > 2 and _max_diff(half, sub_image) > 2
    # image i of a call: seed + i and variation seed + i, as in A1111
    two = _ddim(pipe, seed=3, num_images=2, variation=Variation(seed=40, strength=1.0))
    assert _max_diff(two, sub_image + _ddim(pipe, seed=41)) <= 2
    assert "Seed: 4, Size: 64x64, Model: tiny-sd0, Variation seed: 41, Variation seed strength: 1.0" \
        in two[1].info["parameters"]


def test_slerp_keeps_the_noise_on_the_sphere():
    from latentgen.starts import Seeds

    g = [torch.Generator().manual_seed(1)]
    mixed = Seeds(g, [2], 0.5).noise((4, 32, 32), "cpu", torch.float32)[0]
    a = Seeds([torch.Generator().manual_seed(1)]).noise((4, 32, 32), "cpu", torch.float32)[0]
    b = Seeds([torch.Generator().manual_seed(2)]).noise((4, 32, 32), "cpu", torch.float32)[0]
    linear = (a + b) / 2
    assert abs(mixed.std().item() - a.std().item()) < 0.05 < abs(linear.std().item() - a.std().item())  # ~0.71


def test_seed_resize_keeps_the_small_noise_in_the_middle(pipe):
    from latentgen.starts import Seeds

    small = Seeds([torch.Generator().manual_seed(5)]).noise((4, 8, 8), "cpu", torch.float32)
    big = Seeds([torch.Generator().manual_seed(5)], [0], 0.0, (8, 8)).noise((4, 12, 16), "cpu", torch.float32)
    assert torch.equal(big[:, :, 2:10, 4:12], small)  # centered
    plain_big = Seeds([torch.Generator().manual_seed(5)]).noise((4, 12, 16), "cpu", torch.float32)
    assert torch.equal(big[:, :, :2], plain_big[:, :, :2])  # around it: the seed's own noise at the drawing's size
    cropped = Seeds([torch.Generator().manual_seed(5)], [0], 0.0, (16, 16)).noise((4, 8, 8), "cpu", torch.float32)
    bigger = Seeds([torch.Generator().manual_seed(5)]).noise((4, 16, 16), "cpu", torch.float32)
    assert torch.equal(cropped, bigger[:, :, 4:12, 4:12])  # larger: its middle
    from latentgen import Variation

    f = pipe.vae_scale_factor
    im = _ddim(pipe, seed=5, width=96, variation=Variation(resize_from=(64, 64)))[0]
    assert im.size == (96, 64) and "Seed resize from: 64x64" in im.info["parameters"]
    assert _max_diff([im], _ddim(pipe, seed=5, width=96)) > 0 and f == 2  # the tiny VAE: 2 pixels per cell


@pytest.mark.parametrize("variation, match", [
    (dict(seed=1, strength=1.5), r"variation.strength=1.5 is invalid"),
    (dict(seed=-1, strength=0.5), r"variation.seed=-1 is invalid"),
    (dict(seed=1, strength=0.5, resize_from=(0, 64)), r"variation.resize_from width=0 is invalid"),
    (dict(seed=1, strength=0.5, resize_from=64), r"variation.resize_from=64 is invalid: give \(width, height\)"),
])
def test_bad_variations_are_refused_before_any_model_runs(pipe, monkeypatch, variation, match):
    from latentgen import Variation

    monkeypatch.setattr(pipe.text_encoder, "forward", lambda *a, **k: pytest.fail("encoded before refusing"))
    with pytest.raises(ValueError, match=match):
        pipe.generate("a cat", steps=1, variation=Variation(**variation))
    with pytest.raises(TypeError, match=r"variation must be a latentgen.Variation"):
        pipe.generate("a cat", steps=1, variation=0.5)
