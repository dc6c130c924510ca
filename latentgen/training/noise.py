"""The denoising loss's noise and each example's weight, with kohya's options (``kohya_options.LossOptions``).

``loop.diffusion_loss`` draws the noise e (B, C, h, w) for latents x0 and a timestep t per example, feeds the U-Net
x_t = sqrt(a_t) x0 + sqrt(1 - a_t) e' and asks it for e (or v). The options shape e, e' and the per-example weight:
  * offset noise (Guttenberg 2023, "Diffusion with Offset Noise"): e += s * n, n (B, C, 1, 1), so the model learns
    to change an image's mean brightness; kohya's adaptive scale lets s grow with each channel's |mean of x0|.
  * multi-resolution (pyramid) noise (Whitaker 2023, "Multi-Resolution Noise for Diffusion Model Training"): noise
    drawn at sizes (h, w) / r^i, i = 0 .. N-1, r in [2, 4) drawn per level, is upsampled, weighed discount^i and
    added (as kohya's pyramid_noise_like); the sum is rescaled to unit std. Like offset noise, it puts low
    frequencies into e.
  * input perturbation (Ning et al. 2023, https://arxiv.org/abs/2301.11706): e' = e + gamma * n, the target stays
    e, against the exposure bias of sampling.
  * min-SNR-gamma (Hang et al. 2023, https://arxiv.org/abs/2303.09556): weight min(SNR, gamma) / SNR (v-prediction:
    / (SNR + 1)).
  * debiased estimation (Yu et al. 2024, https://arxiv.org/abs/2310.08442): weight 1 / sqrt(SNR) (v-prediction:
    1 / (SNR + 1)), SNR capped at 1000, as kohya weighs it.
Every draw comes from the step's generator, in a fixed order, so a resumed run sees the same noise; options that
are off draw nothing, so a run without them draws what it always did.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def draw(latents: torch.Tensor, generator: torch.Generator, o) -> torch.Tensor:
    """The target noise e (B, C, h, w) for ``latents`` under ``o``'s offset and multi-resolution options."""
    b, c, h, w = latents.shape
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    if o.noise_offset:
        strength = o.noise_offset
        if o.adaptive_noise_scale is not None:  # per (B, C): s + scale * |mean of the channel|, at least 0
            strength = (strength + o.adaptive_noise_scale * latents.mean(dim=(2, 3), keepdim=True).abs()).clamp(min=0)
        noise = noise + strength * torch.randn((b, c, 1, 1), generator=generator).to(latents)
    for i in range(o.multires_noise_iterations):  # level i: (h, w) / r^i, r in [2, 4) (kohya's: level 0 full size)
        r = float(torch.rand((), generator=generator)) * 2 + 2
        hn, wn = max(1, int(h / r ** i)), max(1, int(w / r ** i))
        coarse = torch.randn((b, c, hn, wn), generator=generator).to(latents)
        noise = noise + F.interpolate(coarse, size=(h, w), mode="bilinear") * o.multires_noise_discount ** i
        if hn == 1 or wn == 1:  # the coarsest level there is
            break
    return noise / noise.std() if o.multires_noise_iterations else noise


def perturbed(noise: torch.Tensor, generator: torch.Generator, gamma: float) -> torch.Tensor:
    """The noise the input is made with: e + gamma * n (input perturbation), or e itself at gamma 0."""
    return noise + gamma * torch.randn(noise.shape, generator=generator).to(noise) if gamma else noise


def weight(snr: torch.Tensor, v_prediction: bool, o) -> torch.Tensor | None:
    """Each example's loss weight (B,) from its timestep's SNR (B,): min-SNR-gamma and debiased estimation, both
    when both are on; None when neither is."""
    out = None
    if o.snr_gamma is not None:  # (at SNR 0, a zero-terminal-SNR schedule's last step, epsilon's weight is its limit 1)
        s = snr if v_prediction else snr.clamp(min=torch.finfo(snr.dtype).tiny)
        out = torch.clamp(s, max=o.snr_gamma) / (s + 1 if v_prediction else s)
    if o.debiased_estimation:
        capped = torch.clamp(snr, max=1000.0)  # SNR is inf at t = 0 on some schedules
        debiased = 1 / (capped + 1) if v_prediction else 1 / capped.sqrt()
        out = debiased if out is None else out * debiased
    return out
