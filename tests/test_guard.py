"""latentgen.guard: NaN/inf latents or pixels never become a black image. A U-Net that makes NaNs raises an
error naming the likely causes; an fp16 VAE that overflows is moved to fp32 once, with a warning, and gives
the fp32 image; an fp32 VAE that makes NaNs raises."""

import copy
import warnings

import pytest
import torch

from latentgen import guard

PROMPT = "a red circle on a blue background"


def test_a_unet_that_makes_nans_raises_instead_of_a_black_image(fresh):
    with torch.no_grad():
        fresh.unet.conv_out.bias.fill_(float("nan"))
    with pytest.raises(guard.NonFiniteError, match=r"U-Net produced NaN/inf latents.*checkpoint's U-Net weights"):
        fresh.generate(PROMPT, steps=2)


def test_absurd_guidance_is_refused_before_any_nan_and_high_guidance_is_named_as_a_cause(fresh):
    with pytest.raises(ValueError, match=r"guidance=1e\+30 is invalid: use a finite number from 0 to 100"):
        fresh.generate(PROMPT, steps=2, guidance=1e30)  # up front, not a NaN error blaming the weights
    nan = torch.full((1, 4, 8, 8), float("nan"))
    with pytest.raises(guard.NonFiniteError, match=r"guidance=95 may be too high"):
        guard.check_latents(nan, guidance=95, loras=[], dtype=torch.float32)


def test_a_broken_lora_is_named(fresh, lora_files):
    fresh.load_lora(lora_files[0], name="broken", scale=1e30)
    with pytest.raises(guard.NonFiniteError, match=r"a LoRA may be broken.*loaded: broken"):
        fresh.generate(PROMPT, steps=2)


def test_finite_latents_pass():
    guard.check_latents(torch.zeros(2, 4, 8, 8), guidance=7.5, loras=[], dtype=torch.float32)


def _overflowing_fp16_vae(vae):
    """A copy of ``vae`` in fp16 whose last convolution outputs beyond fp16's 65504 (fine in fp32)."""
    vae = copy.deepcopy(vae).half()
    with torch.no_grad():
        vae.decoder.conv_out.weight.mul_(2e5)
    return vae


def test_an_fp16_vae_overflow_is_decoded_again_in_fp32(pipe):
    vae, z = _overflowing_fp16_vae(pipe.vae), torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.isfinite(vae.decode(z.half()).sample).all()  # what a black image comes from
        want = copy.deepcopy(vae).float().decode(z).sample
    with pytest.warns(RuntimeWarning, match="fp16 VAE overflowed.*fp32"):
        got = guard.decode(vae, z)
    assert vae.dtype == torch.float32  # for good: the next image does not overflow again
    assert torch.equal(got, want)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        guard.decode(vae, z)  # no second warning


def test_the_pipeline_decodes_through_the_guard(fresh):
    fresh.vae = _overflowing_fp16_vae(fresh.vae)
    with pytest.warns(RuntimeWarning, match="fp16 VAE overflowed"):
        image = fresh.generate(PROMPT, steps=2)[0]
    assert fresh.vae.dtype == torch.float32 and image.getextrema() != ((0, 0), (0, 0), (0, 0))


def test_an_fp32_vae_that_makes_nans_raises(pipe):
    vae = copy.deepcopy(pipe.vae)
    with torch.no_grad():
        vae.decoder.conv_out.bias.fill_(float("nan"))
    with pytest.raises(guard.NonFiniteError, match=r"VAE \(float32\) decoded NaN/inf pixels.*vae="):
        guard.decode(vae, torch.zeros(1, 4, 8, 8))
