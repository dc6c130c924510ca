"""A1111's hires fix ("Hires. fix", txt2img's ``enable_hr``): draw at the base size, upscale (the latents, or
the decoded picture, which is encoded again: ``latentgen.upscale.upscalers``), then redraw at the larger size
from the upscaled picture, as img2img does at ``strength`` (A1111's denoising strength), with its own steps,
sampler and prompts when given. The second pass draws from the same seeds again (its start noise at the larger
size), and prompt editing counts its steps after the first pass's (``latentgen.text.schedule``). ControlNet units
act in both passes, their images fitted to each pass's size.

With ``model`` (A1111's ``hr_checkpoint_name``) another loaded model of the same latent space draws the second
pass, as A1111 switches checkpoints between the passes: the first pass's picture is decoded by the first model's
VAE (pixel upscalers), the second pass reads its prompts with its own text encoder, under the prompt's
``<lora:...>`` tags applied to it too, runs its own sampler settings (betas, prediction type) and U-Net, and its
VAE encodes the upscaled picture and decodes the result. ControlNet units must fit both U-Nets. The PNG says
"Hires checkpoint" (its name).

Sizes, as A1111: ``scale`` times the base size, or ``width`` and/or ``height`` (one of them: the other keeps the
aspect ratio; both: upscaled to cover them, then cropped evenly), rounded down to multiples of the VAE factor.
The PNG says "Size" (the base size), "Denoising strength", "Hires upscale" or "Hires resize", "Hires steps"
(when given), "Hires upscaler", and the hires checkpoint, sampler and prompts when given.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager, nullcontext
from functools import partial
from dataclasses import dataclass, replace

import torch

from .. import checks, images, schedulers, starts
from ..control import residuals
from ..text.conditioning import CallText
from . import upscalers


@dataclass(frozen=True)
class Hires:
    """A hires-fix second pass (A1111's ``hr_*`` fields; None: as the first pass)."""

    scale: float = 2.0  # hr_scale: times the base size, unless width or height is given
    width: int | None = None  # hr_resize_x
    height: int | None = None  # hr_resize_y
    upscaler: str = "Latent"  # hr_upscaler: a name in ``upscalers.NAMES``, or an upscaler model file (its path or
    # its stem in $LATENTGEN_UPSCALERS)
    strength: float = 0.7  # denoising_strength of the second pass
    steps: int | None = None  # hr_second_pass_steps
    scheduler: str | None = None  # hr_sampler_name, as a latentgen sampler name
    prompt: str | None = None  # hr_prompt
    negative_prompt: str | None = None  # hr_negative_prompt
    model: object = None  # hr_checkpoint_name: a loaded latentgen Pipeline for the second pass (None: the first's)


def sizes(h: Hires, width: int, height: int, f: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((w, h) the picture is upscaled to, (w, h) of the result after the even crop), multiples of ``f``."""
    if h.width is None and h.height is None:
        up = final = (int(width * h.scale), int(height * h.scale))
    elif h.height is None:
        up = final = (h.width, h.width * height // width)
    elif h.width is None:
        up = final = (h.height * width // height, h.height)
    else:  # cover both, then crop
        final = (h.width, h.height)
        up = (h.width, h.width * height // width) if width / height < h.width / h.height else \
            (h.height * width // height, h.height)
    up, final = [tuple(max(f, v // f * f) for v in size) for size in (up, final)]
    return up, final


def check(h, f: int) -> Hires:
    """A ``Hires``, checked before any model work (``f``: the VAE's pixels per latent cell)."""
    if not isinstance(h, Hires):
        raise TypeError(f"hires must be a latentgen.Hires, got {type(h).__name__}; such as hires=latentgen.Hires("
                        f"scale=2, strength=0.55).")
    checks.number("hires.scale", h.scale, minimum=1, maximum=8, fix="use 1 to 8 times the base size, such as 2")
    for name in ("width", "height"):
        if getattr(h, name) is not None:
            checks.whole(f"hires.{name}", getattr(h, name), f, f"use a size in pixels >= {f}, or None")
    upscalers.check(h.upscaler, "hires.upscaler")
    checks.number("hires.strength", h.strength, minimum=0, maximum=1, fix="use 0 to 1, such as 0.55")
    if h.steps is not None:
        checks.whole("hires.steps", h.steps, 1, "use a whole number of steps >= 1, or None for the first pass's")
    if h.scheduler is not None:
        schedulers.check_name(h.scheduler)
    for name in ("prompt", "negative_prompt"):
        if getattr(h, name) is not None and not isinstance(getattr(h, name), str):
            raise TypeError(f"hires.{name} must be text or None, got {type(getattr(h, name)).__name__}.")
    if h.model is not None and not all(hasattr(h.model, a) for a in ("denoise", "unet", "vae", "tokenizer")):
        raise TypeError(f"hires.model must be a loaded model or None, got {type(h.model).__name__}; pass "
                        f"latentgen.load('path/to/model') (A1111's hr_checkpoint_name).")
    return h


def check_model(m, pipe) -> None:
    """``m`` can draw ``pipe``'s hires pass (``Hires.model``): a plain model of its latent space, on its device."""
    from ..models import refiner as refine

    refine.follows(m, pipe, "hires.model", "use a model of the same family (A1111's hr_checkpoint_name)")
    if m.unet.config.in_channels != m.vae.config.latent_channels:
        raise ValueError(f"hires.model {m.name!r} is an inpainting model (its U-Net takes {m.unet.config.in_channels} "
                         f"channels): the hires pass needs a plain model.")


class SecondPass:
    """A call's hires pass, prepared in ``Pipeline.sample`` before any model runs: its settings, its text (the
    hires prompts, or the first pass's, scheduled over its own steps) and its sizes; ``run`` per chunk."""

    def __init__(self, pipe, draws, s, h: Hires, text: CallText, control=None, refiner=None):
        """``control``: the first pass's ControlNet units (``control.units.Prepared``), fitted again to the final
        size for the second pass (as sd-webui-controlnet's default, "Both"); ``refiner``: a ``latentgen.Refiner``,
        which hands over in this pass unless its ``hires_pass`` is "first" (``models.refiner``)."""
        from ..control import units
        from ..models import refiner as refine

        self.h, self.f = check(h, pipe.vae_scale_factor), pipe.vae_scale_factor
        self.model = m = pipe if h.model is None or h.model is pipe else h.model  # draws the pass, decodes
        self.other = m is not pipe  # A1111's hr_checkpoint_name
        if self.other:
            check_model(m, pipe)
        self.up, self.final = sizes(h, s.width, s.height, self.f)
        self.s = replace(s, steps=h.steps or s.steps, scheduler=h.scheduler or s.scheduler, width=self.final[0],
                         height=self.final[1])
        self.draws = {d: self.draw(d) for d in draws}
        for model in (pipe, m) if self.other else (pipe,):  # the first model's limits bound the pass too
            model.check_limits(self.s, len(draws))
        self.text = CallText(list(self.draws.values()), self.s, m.tokenizer, m.text_encoder, m.embeddings,
                             base_steps=s.steps, xl=m.xl)
        if self.text.loras != text.loras:
            raise ValueError(f"hires.prompt asks for other <lora:...> tags ({self.text.loras}) than the prompt "
                             f"({text.loras}): give both the same tags.")
        if not self.other:
            self.text.cache = text.cache  # each text encoded once for both passes
        self.control = None if control is None else units.prepare(control.units, m.unet, self.final,
                                                                   max_pixels=pipe.limits.max_input_pixels)
        self.handover = refine.Handover(m, list(self.draws.values()), self.s, refiner) \
            if refiner is not None and refine.acts(refiner, second=True) else None  # the refiner's own text

    @contextmanager
    def lora_tags(self):
        """The prompt's ``<lora:...>`` tags on the second pass's model while the call runs (nothing to do when it is
        the first pass's, which ``Pipeline.sample`` tags)."""
        with ExitStack() as stack:
            try:
                stack.enter_context(self.text.lora_tags(self.model.loras) if self.other else nullcontext())
            except FileNotFoundError as e:
                raise FileNotFoundError(f"hires.model {self.model.name!r}: {e} A LoRA loaded by name must be loaded "
                                        f"on both models: hires.model.load_lora(path, name=...).") from None
            yield

    def draw(self, d):
        """The first pass's ``request.Draw`` as the second pass draws it (its prompts when given)."""
        negative = d.negative_prompt if self.h.negative_prompt is None or d.negative_prompt is None else \
            self.h.negative_prompt
        return replace(d, prompt=self.h.prompt if self.h.prompt is not None else d.prompt, negative_prompt=negative)

    def info(self) -> dict:
        h = self.h
        size = {"Hires upscale": f"{h.scale:g}"} if h.width is None and h.height is None else \
            {"Hires resize": f"{self.final[0]}x{self.final[1]}"}
        return {"Denoising strength": h.strength, "Hires checkpoint": self.model.name if self.other else None,
                "Hires sampler": schedulers.SAMPLERS[h.scheduler].label if h.scheduler else None,
                "Hires prompt": h.prompt, "Hires negative prompt": h.negative_prompt,  # in A1111's order
                **size, "Hires steps": h.steps, "Hires upscaler": upscalers.label(h.upscaler)}

    def run(self, pipe, chunk, latents: torch.Tensor, progress, unet=None) -> torch.Tensor:
        """The first pass's latents (B, C, h, w) of ``chunk`` -> the second pass's (B, C, H / f, W / f), in the dtype
        of ``self.model`` (which decodes them). ``unet``: the first pass's own U-Net (inpainting), for the same model."""
        f, (uw, uh), (fw, fh), m = self.f, self.up, self.final, self.model
        seeds = starts.seeds(chunk, self.s.variation, f)  # the same seeds again, as A1111's second pass
        if upscalers.is_latent(self.h.upscaler):
            z0 = upscalers.latent(latents, (uh // f, uw // f), self.h.upscaler)
        else:  # decoded by the first model, upscaled, encoded by the second: each image with its own generator
            z0 = torch.cat([starts.latent_samples(m.vae, images.to_tensor(upscalers.pixels(
                im, (uw, uh), self.h.upscaler, device=pipe.device)), [g], latents.dtype)
                            for im, g in zip(pipe.decode(latents), seeds.generators)])
        top, left = (uh - fh) // f // 2, (uw - fw) // f // 2
        z0 = z0[:, :, top:top + fh // f, left:left + fw // f]  # the even crop when both sizes are given
        sched = schedulers.make(self.s.scheduler, m.scheduler.config)
        sched.set_timesteps(self.s.steps, device=m.device)
        cond = self.text.embed([self.draws[d] for d in chunk], self.s.cfg)
        first = starts.from_latents(sched, seeds, cond.cond.dtype, z0=z0.to(cond.cond.dtype), steps=self.s.steps,
                                    strength=self.h.strength)
        if cond.context:
            first = replace(first, hooks=replace(first.hooks, context=cond.context))
        first = residuals.hooked(first, self.control, b=len(chunk), cfg=self.s.cfg, pipe=m)
        run = m.denoise if self.handover is None else partial(self.handover.run, m, [self.draws[d] for d in chunk])
        run = partial(run, rescale=self.s.guidance_rescale)
        return run(first, cond, self.s.guidance, sched, seeds.generators, progress.chunk(len(first.timesteps)),
                   None if self.other else unet)
