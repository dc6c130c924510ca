"""The refiner hand-over: one model draws the start of the noise schedule, another the rest, from the same
latents with the same sampler. SDXL ships a refiner for the low-noise end (Podell et al. 2023, "SDXL",
https://arxiv.org/abs/2307.01952, section 2.5: "ensemble of expert denoisers", as eDiff-I's, Balaji et al. 2022);
A1111 calls it ``refiner_checkpoint`` / ``refiner_switch_at``, diffusers ``denoising_end`` on the base and
``denoising_start`` on the refiner.

Where the models switch, as diffusers: the timesteps t >= round(T * (1 - switch_at)) (T = the training
timesteps, 1000) go to the base model, the rest to the refiner: ``switch_at=0.8`` leaves the last 20% of the noise
schedule to the refiner (16 of 20 steps to the base with SDXL's "leading" spacing). The sampler goes on as one
(its state, its step index, each image's generator), so with a first-order sampler (Euler, DDIM, ...) the image
equals diffusers' base -> refiner hand-over; multistep samplers keep their history over the switch, as A1111's
(diffusers restarts the refiner's sampler). A1111 counts steps rather than timesteps and may give the base one
step more. The refiner reads the prompts with its own text encoder (an SDXL refiner: bigG alone, with its
aesthetic scores: ``latentgen.text.xl``); ``<lora:...>`` tags, ControlNet units and the step hooks of inpainting
act on the base model's steps, and prompt editing counts on over the switch. The images are decoded by the base
model's VAE (the same VAE as the refiner's, for SDXL).

With the hires fix, ``hires_pass`` says which pass the refiner acts in, as A1111's ``hires_fix_refiner_pass``:
"second" (its default: the first pass is the base model's alone; the hires pass hands over), "first" or "both". A
pass hands over where its own timesteps cross the cutoff (the hires pass starts lower, at its denoising strength).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import checks, request
from ..starts import Hooks, Start
from ..text.conditioning import CallText


@dataclass(frozen=True)
class Refiner:
    """A second model for the end of the noise schedule: ``latentgen.Refiner(latentgen.load("sdxl-refiner"),
    switch_at=0.8)`` (A1111's ``refiner_checkpoint`` and ``refiner_switch_at``)."""

    model: object  # a loaded latentgen Pipeline: an SDXL refiner, or any model of the base's latent space
    switch_at: float = 0.8  # the fraction of the noise schedule the base model draws
    hires_pass: str = "second"  # with hires=: the pass(es) it acts in, "first", "second" or "both" (A1111's setting)


HIRES_PASSES = {"first": "first pass", "second": "second pass", "both": "both passes"}  # A1111's names


def acts(r: Refiner, second: bool) -> bool:
    """Whether the refiner hands over in the first pass of a hires call (``second``: in its hires pass)."""
    return r.hires_pass in (("second", "both") if second else ("first", "both"))


def info(r: Refiner, hires: bool) -> dict:
    """The PNG's fields, as A1111 writes them ("Hires refiner" only where it is not the default second pass)."""
    where = {"Hires refiner": HIRES_PASSES[r.hires_pass]} if hires and r.hires_pass != "second" else {}
    return {**where, "Refiner": r.model.name, "Refiner switch at": r.switch_at}


def check(r, pipe) -> Refiner:
    """A ``Refiner`` that can follow ``pipe``, checked before any model runs."""
    if not isinstance(r, Refiner):
        raise TypeError(f"refiner must be a latentgen.Refiner, got {type(r).__name__}; such as refiner="
                        f"latentgen.Refiner(latentgen.load('sdxl-refiner-folder'), switch_at=0.8).")
    if not all(hasattr(r.model, a) for a in ("denoise", "unet", "vae", "tokenizer")):
        raise TypeError(f"refiner.model must be a loaded model, got {type(r.model).__name__}; pass "
                        f"latentgen.load('path/to/refiner-folder') (an SDXL refiner's diffusers folder).")
    checks.number("refiner.switch_at", r.switch_at, minimum=0, maximum=1,
                  fix="use a fraction of the noise schedule from 0 to 1, such as 0.8")
    checks.choice("refiner.hires_pass", r.hires_pass, tuple(HIRES_PASSES),
                  "use 'second' (the hires pass hands over; A1111's default), 'first' or 'both'")
    follows(r.model, pipe, "refiner.model", "use a refiner of the same family (an SDXL refiner after an SDXL model)")
    return r


def follows(model, pipe, name: str, fix: str) -> None:
    """``model`` (a refiner, a hires pass's model) can go on from ``pipe``'s latents: the same latent space (channels,
    scaling factor, pixels per latent cell) on the same device; else a ValueError naming ``name`` and ``fix``."""
    from ..precision import device_of

    mine, theirs = pipe.vae.config, model.vae.config
    same = [(k, mine[k], theirs[k]) for k in ("latent_channels", "scaling_factor") if mine[k] != theirs[k]]
    if same or pipe.vae_scale_factor != model.vae_scale_factor:
        what = ", ".join(f"{k} {a} vs {b}" for k, a, b in same) or "pixels per latent cell"
        raise ValueError(f"{name} {model.name!r} works in another latent space than {pipe.name!r} ({what}): {fix}.")
    if device_of(model.unet) != device_of(pipe.unet):
        raise ValueError(f"{name} {model.name!r} is on {device_of(model.unet)} and {pipe.name!r} on "
                         f"{device_of(pipe.unet)}: load both on one device (latentgen.load(..., device=...)).")


def split(timesteps: torch.Tensor, switch_at: float, train_steps: int) -> int:
    """How many of ``timesteps`` the base model runs: those at or above the cutoff, as diffusers' ``denoising_end``."""
    cutoff = int(round(train_steps - switch_at * train_steps))
    return int((timesteps >= cutoff).sum())


class Handover:
    """A call's refiner pass, prepared in ``Pipeline.sample`` before any model runs (its text, its limits);
    ``run`` per chunk in place of ``Pipeline.denoise``."""

    def __init__(self, pipe, draws, s, r: Refiner):
        """``draws`` and ``s``: the pass's (the hires pass's own prompts and steps in the second pass); ``r``: checked
        by ``Pipeline.sample``, before either pass is prepared."""
        self.r, self.model = r, r.model
        self.s = s
        self.model.check_limits(s, len(draws))
        self.text = CallText(draws, s, self.model.tokenizer, self.model.text_encoder, self.model.embeddings,
                             xl=self.model.xl)

    def run(self, pipe, chunk, start: Start, cond, guidance: float, sched, generators, callback=None, unet=None,
            rescale: float = 0.0):
        """``pipe.denoise`` over the base model's timesteps of ``start``, then the refiner's denoise over the rest,
        from the same latents and sampler: (B, C, h, w) -> (B, C, h, w), in the base model's dtype."""
        k = split(start.timesteps, self.r.switch_at, pipe.scheduler.config.num_train_timesteps)
        first = Start(start.latents, start.timesteps[:k], start.c_concat, start.hooks)
        latents = pipe.denoise(first, cond, guidance, sched, generators, callback, unet, rescale) if k else \
            start.latents
        if k == len(start.timesteps):
            return latents
        text = self.text.embed(chunk, self.s.cfg)
        hooks = Hooks(context=_shifted(text.context, k), after_step=_shifted(start.hooks.after_step, k))
        rest = Start(latents.to(self.model.dtype), start.timesteps[k:], hooks=hooks)
        later = None if callback is None else (
            (lambda i, n, x, x0: callback(k + i, n, x, x0)) if request.takes_denoised(callback) else
            (lambda i, n, x: callback(k + i, n, x)))
        return self.model.denoise(rest, text, guidance, sched, generators, later, rescale=rescale).to(latents.dtype)


def _shifted(hook, k: int):
    """A step hook (i, x) of the whole loop, for the refiner's steps (its step i is the loop's k + i)."""
    return None if hook is None else (lambda i, x: hook(k + i, x))
