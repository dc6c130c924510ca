"""SDXL's refiner (latentgen.models.refiner): a tiny random refiner folder (bigG alone, five size numbers) draws as diffusers'
StableDiffusionXLImg2ImgPipeline draws it, alone and after the base model (diffusers' denoising_end ->
denoising_start hand-over); what cannot follow a model is refused before drawing."""

import numpy as np
import pytest
import torch

import latentgen
from conftest import diffusers_pipeline, mask, max_diff, photo
from latentgen.models import refiner as refine


@pytest.fixture(scope="module")
def xpipe(xl_folder):
    return latentgen.load(xl_folder)


@pytest.fixture(scope="module")
def rpipe(xl_refiner_folder):
    return latentgen.load(xl_refiner_folder)


@pytest.fixture(scope="module")
def rref(xl_refiner_folder):
    return diffusers_pipeline("StableDiffusionXLImg2ImgPipeline", xl_refiner_folder)


def _gens(seed, n):
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_a_refiner_folder_loads_with_its_one_encoder_and_aesthetic_scores(rpipe):
    assert rpipe.xl.refiner and rpipe.xl.aesthetic == (6.0, 2.5) and not rpipe.xl.force_zeros
    assert type(rpipe.text_encoder).__name__ == "CLIPTextModelWithProjection"
    assert rpipe.unet.config.projection_class_embeddings_input_dim == 8 * 5 + 32  # five size numbers
    hidden = rpipe.encode_prompt("a red cat")
    assert hidden.shape == (1, 77, 64)  # bigG's penultimate layer alone


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_the_refiner_alone_redraws_as_diffusers_refiner_pipeline(rpipe, rref, negative):
    image = photo(64, 3)
    ours = rpipe.img2img("a red cat", image, strength=0.4, seed=4, steps=10, guidance=5.0, negative_prompt=negative,
                         num_images=2)
    theirs = rref("a red cat", image=image, strength=0.4, num_inference_steps=10, guidance_scale=5.0,
                  negative_prompt=negative, num_images_per_prompt=2, generator=_gens(4, 2)).images
    assert max_diff(ours, theirs) <= 2
    assert max_diff(ours[:1], rpipe.img2img("a blue dog", image, strength=0.4, seed=4, steps=10)) > 2


@pytest.mark.parametrize("switch_at", [0.8, 0.5])
def test_base_then_refiner_equals_diffusers_hand_over(xpipe, xl_folder, rpipe, rref, switch_at):
    base = diffusers_pipeline("StableDiffusionXLPipeline", xl_folder)
    gens = _gens(6, 2)
    latents = base("a red circle on grey", negative_prompt="dark", num_inference_steps=10, guidance_scale=5.0,
                   num_images_per_prompt=2, generator=gens, denoising_end=switch_at, output_type="latent").images
    theirs = rref("a red circle on grey", negative_prompt="dark", image=latents, num_inference_steps=10,
                  guidance_scale=5.0, num_images_per_prompt=2, generator=gens, denoising_start=switch_at).images
    ours = xpipe.generate("a red circle on grey", negative_prompt="dark", seed=6, steps=10, guidance=5.0,
                          num_images=2, refiner=latentgen.Refiner(rpipe, switch_at=switch_at))
    assert max_diff(ours, theirs) <= 2
    alone = xpipe.generate("a red circle on grey", negative_prompt="dark", seed=6, steps=10, guidance=5.0)
    assert max_diff(ours[:1], alone) > 2  # the refiner drew the end
    assert f"Refiner: {rpipe.name}, Refiner switch at: {switch_at}" in ours[0].info["parameters"]


def test_the_switch_splits_the_schedule_as_denoising_end(xpipe, rpipe):
    ts = torch.tensor([951, 901, 851, 801, 751, 701, 651, 601, 551, 501, 451, 401, 351, 301, 251, 201, 151, 101, 51, 1])
    assert refine.split(ts, 0.8, 1000) == 16  # SDXL's leading spacing: 16 of 20 steps to the base
    assert refine.split(ts, 1.0, 1000) == 20 and refine.split(ts, 0.0, 1000) == 0
    alone = xpipe.generate("a cat", seed=2, steps=4)
    assert max_diff(alone, xpipe.generate("a cat", seed=2, steps=4, refiner=latentgen.Refiner(rpipe, 1.0))) == 0
    seen = []
    only = xpipe.generate("a cat", seed=2, steps=4, refiner=latentgen.Refiner(rpipe, 0.0),
                          callback=lambda done, total, latents: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]  # all the refiner's, counted as the call's
    assert max_diff(alone, only) > 2


def test_a_refined_img2img_and_inpaint_keep_their_rules(xpipe, rpipe):
    image = photo(64, 1)
    r = latentgen.Refiner(rpipe, 0.6)
    steps = []
    out = xpipe.img2img("a cat", image, strength=0.7, seed=1, steps=10, refiner=r,
                        callback=lambda done, total, latents: steps.append(done))
    assert steps == list(range(1, 8)) and out[0].size == (64, 64)  # int(10 * 0.7) steps, base and refiner
    hole = mask(64)  # rows 16-40, columns 20-44 repaint
    painted, alone = [np.asarray(xpipe.inpaint("a cat", image, hole, seed=1, steps=6, composite=False, **kw)[0], float)
                      for kw in ({"refiner": r}, {})]
    far, inside = np.ones((64, 64), bool), np.zeros((64, 64), bool)
    far[8:48, 12:52], inside[20:36, 24:40] = False, True
    # the known part is put back at the refiner's steps too (the image's latents at the last): far from the hole
    # the two agree, inside it the refiner drew
    assert np.abs(painted - alone)[far].mean() < 1 < np.abs(painted - alone)[inside].mean()


def test_what_cannot_refine_is_refused_before_drawing(xpipe, rpipe):
    with pytest.raises(TypeError, match="refiner must be a latentgen.Refiner"):
        xpipe.generate("a cat", steps=2, refiner=rpipe)
    with pytest.raises(TypeError, match="refiner.model must be a loaded model"):
        xpipe.generate("a cat", steps=2, refiner=latentgen.Refiner("some/folder"))
    with pytest.raises(ValueError, match="refiner.switch_at"):
        xpipe.generate("a cat", steps=2, refiner=latentgen.Refiner(rpipe, 1.5))
    with pytest.raises(ValueError, match=r"refiner.hires_pass='last' is invalid: use 'second'"):
        xpipe.generate("a cat", steps=2, refiner=latentgen.Refiner(rpipe, hires_pass="last"), hires=latentgen.Hires())
    embedded = latentgen.load()  # another latent space (its VAE's scaling factor and channels)
    with pytest.raises(ValueError, match="works in another latent space"):
        xpipe.generate("a cat", steps=2, refiner=latentgen.Refiner(embedded))


def test_with_the_hires_fix_the_refiner_acts_in_the_pass_a1111s_setting_names(xpipe, xl_folder, rpipe):
    """A1111's hires_fix_refiner_pass: "second" (its default), "first" or "both". The same model as its own
    "refiner" hands over to itself and changes nothing, in every pass (the plumbing); the real refiner changes the
    passes it acts in, and the PNG says where (A1111's "Hires refiner", not written for the default)."""
    hires = latentgen.Hires(scale=1.5, strength=0.6, steps=4, upscaler="Lanczos")
    kw = dict(seed=2, steps=4, hires=hires, scheduler="euler")
    plain = xpipe.generate("a cat", **kw)
    itself = latentgen.load(xl_folder)
    for where in ("first", "second", "both"):
        same = xpipe.generate("a cat", refiner=latentgen.Refiner(itself, 0.5, hires_pass=where), **kw)
        assert max_diff(same, plain) == 0, where
    got = {w: xpipe.generate("a cat", refiner=latentgen.Refiner(rpipe, 0.5, hires_pass=w), **kw)
           for w in ("first", "second", "both")}
    pairs = [(got["first"], plain), (got["second"], plain), (got["first"], got["second"]), (got["both"], got["second"]),
             (got["both"], got["first"])]
    assert min(max_diff(a, b) for a, b in pairs) > 0
    assert "Hires refiner" not in got["second"][0].info["parameters"]
    assert "Hires refiner: first pass, Refiner: " in got["first"][0].info["parameters"]
    assert "Hires refiner: both passes" in got["both"][0].info["parameters"]
    assert got["both"][0].size == plain[0].size == (96, 96)
