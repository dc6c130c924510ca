"""latentgen.training.noise: kohya's noise and loss-weight options of the denoising loss, each doing what its paper
says, drawn from the step's generator; with every option off, the loss draws what it always drew."""

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from latentgen.training import loop, noise
from latentgen.training.configs import LoraTrainConfig
from latentgen.training.kohya_options import LossOptions

SCHEDULER = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)  # SD's


class Recorder:
    """A U-Net stand-in that records its input and timesteps and predicts zeros (so the loss is the target's power)."""

    def __init__(self):
        self.seen = []

    def __call__(self, x, t, encoder_hidden_states):
        self.seen.append((x.clone(), t.clone()))
        return type("Out", (), {"sample": torch.zeros_like(x)})()


def _loss(o, latents, seed=0, **kw):
    unet = Recorder()
    value = loop.diffusion_loss(unet, torch.zeros(latents.shape[0], 77, 8), latents, SCHEDULER,
                                torch.Generator().manual_seed(seed), options=o, **kw)
    return value, unet.seen[0]


def test_with_every_option_off_the_loss_draws_what_it_always_drew():
    latents = torch.randn(3, 4, 8, 8)
    g = torch.Generator().manual_seed(0)  # the draws, in their order: noise, then timesteps
    e = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, 1000, (3,), generator=g)
    value, (x, seen_t) = _loss(LossOptions(), latents)
    assert torch.equal(seen_t, t) and torch.equal(x, SCHEDULER.add_noise(latents, e, t))
    torch.testing.assert_close(value, (e ** 2).mean())


def test_offset_noise_and_its_adaptive_scale_shift_each_channel():
    latents = torch.randn(2, 4, 8, 8) + torch.tensor([0.0, 1.0, -2.0, 3.0])[None, :, None, None]
    g = torch.Generator().manual_seed(1)
    e, n = torch.randn(latents.shape, generator=g), torch.randn((2, 4, 1, 1), generator=g)
    got = noise.draw(latents, torch.Generator().manual_seed(1), LossOptions(noise_offset=0.1))
    torch.testing.assert_close(got, e + 0.1 * n)
    got = noise.draw(latents, torch.Generator().manual_seed(1), LossOptions(noise_offset=0.1, adaptive_noise_scale=0.5))
    s = 0.1 + 0.5 * latents.mean(dim=(2, 3), keepdim=True).abs()  # grows with each channel's |mean|
    torch.testing.assert_close(got, e + s * n)


def test_multires_noise_is_unit_noise_with_more_low_frequencies():
    latents = torch.zeros(64, 4, 32, 32)
    white = noise.draw(latents, torch.Generator().manual_seed(0), LossOptions())
    pyramid = noise.draw(latents, torch.Generator().manual_seed(0), LossOptions(multires_noise_iterations=6,
                                                                                 multires_noise_discount=0.8))
    assert abs(float(pyramid.std()) - 1) < 1e-4  # rescaled to unit std
    low = {k: float(v.mean(dim=(2, 3)).std()) for k, v in (("white", white), ("pyramid", pyramid))}
    assert low["pyramid"] > 5 * low["white"]  # each picture's mean: white noise averages out, coarse noise does not
    again = noise.draw(latents, torch.Generator().manual_seed(0), LossOptions(multires_noise_iterations=6,
                                                                               multires_noise_discount=0.8))
    assert torch.equal(pyramid, again)  # from the generator alone


def test_input_perturbation_noises_the_input_more_and_leaves_the_target():
    latents = torch.randn(3, 4, 8, 8)
    plain, (x0, t0) = _loss(LossOptions(), latents)
    perturbed, (x1, t1) = _loss(LossOptions(ip_noise_gamma=0.1), latents)
    assert torch.equal(plain, perturbed) and torch.equal(t0, t1)  # the same target (zeros predicted: its power)
    g = torch.Generator().manual_seed(0)
    e = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, 1000, (3,), generator=g)
    extra = torch.randn(latents.shape, generator=g)  # drawn after the timesteps
    torch.testing.assert_close(x1, SCHEDULER.add_noise(latents, e + 0.1 * extra, t))


@pytest.mark.parametrize("v", [False, True])
def test_min_snr_and_debiased_weights(v):
    snr = torch.tensor([0.01, 1.0, 20.0, float("inf")])
    w = noise.weight(snr, v, LossOptions(debiased_estimation=True))
    capped = torch.tensor([0.01, 1.0, 20.0, 1000.0])
    torch.testing.assert_close(w, 1 / (capped + 1) if v else 1 / capped.sqrt())
    both = noise.weight(snr[:3], v, LossOptions(snr_gamma=5.0, debiased_estimation=True))
    min_snr = torch.clamp(snr[:3], max=5.0) / (snr[:3] + 1 if v else snr[:3])
    torch.testing.assert_close(both, min_snr * w[:3])
    assert noise.weight(snr, v, LossOptions()) is None
    at_zero = noise.weight(torch.tensor([0.0]), v, LossOptions(snr_gamma=5.0))  # a zero-terminal-SNR last step
    assert float(at_zero) == (0.0 if v else 1.0)  # min(SNR, g) / (SNR + 1), and epsilon's limit, not nan
    latents = torch.randn(3, 4, 8, 8)
    weighted, (_, t) = _loss(LossOptions(debiased_estimation=True), latents)
    plain, _ = _loss(LossOptions(), latents)
    e = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    expect = ((e ** 2).mean(dim=(1, 2, 3)) / compute_snr(SCHEDULER, t).sqrt()).mean()
    torch.testing.assert_close(weighted, expect)
    torch.testing.assert_close(plain, (e ** 2).mean())


@pytest.mark.parametrize("kw, message", [
    (dict(noise_offset=-0.1), r"noise_offset=-0.1 is invalid: use a small number >= 0"),
    (dict(ip_noise_gamma=float("nan")), r"ip_noise_gamma=nan is invalid"),
    (dict(adaptive_noise_scale=0.01), r"adaptive_noise_scale scales the offset noise: add noise_offset"),
    (dict(multires_noise_iterations=-1), r"multires_noise_iterations=-1 is invalid"),
    (dict(multires_noise_iterations=6, multires_noise_discount=0.0), r"multires_noise_discount=0.0 is invalid"),
    (dict(noise_offset=0.05, multires_noise_iterations=6), r"noise_offset and multires_noise_iterations .* give one"),
    (dict(snr_gamma=0.0), r"snr_gamma=0.0 is invalid: use a positive number such as 5"),
])
def test_bad_loss_options_are_refused_by_name(kw, message):
    with pytest.raises(ValueError, match=message):
        LoraTrainConfig(data=".", out=".", steps=2, **kw).check()
