"""What one call asks for, as typed records: the images to draw (``Draw``), the resolved settings
(``Settings``), and how progress is reported (``Callback``, ``CallProgress``). ``latentgen.pipeline`` turns them
into images; ``latentgen.starts`` builds how the loop starts.

All checks here are cheap and run before any model work, so bad input fails in milliseconds with
an error that names the parameter and the fix.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from numbers import Integral, Real

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from . import checks, schedulers
from .models.presets import Defaults
from .starts import Variation
from .text import prompts, xl

Callback = Callable[..., None]  # (steps done, steps in all, latents (B, C, h, w)[, denoised (B, C, h, w)])


def takes_denoised(callback) -> bool:
    """Whether ``callback`` takes a fourth argument, the step's estimate of the clean latents (``denoised``)."""
    try:
        params = inspect.signature(callback).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: the three arguments
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 4 or any(p.kind == p.VAR_POSITIONAL for p in params)


class Stop(Exception):
    """Raise from a ``callback`` to end the drawing there, as A1111's interrupt and skip do: the images in the loop
    are finished from the step's estimate of the clean latents (no further step, no hires pass) and returned with
    those drawn before them; nothing after them is drawn (the call's later images, a plot's later cells)."""


class Stopped(Exception):
    """``Stop`` on its way out of a denoising loop, with that step's clean-latents estimate (B, C, h, w)."""

    def __init__(self, latents: torch.Tensor):
        super().__init__("the callback raised latentgen.Stop")
        self.latents = latents


def until_stop(run: Callable[..., torch.Tensor], *args) -> tuple[torch.Tensor, bool]:
    """``run(*args)``'s latents and False, or, where its callback raised ``Stop``, the estimate and True."""
    try:
        return run(*args), False
    except Stopped as e:
        return e.latents, True


class Watch:
    """``callback`` as the loop calls it (with the three or four arguments it takes), noting in ``stopped`` whether
    it raised ``Stop``."""

    def __init__(self, callback: Callback | None):
        self.stopped, self.given, four = False, callback, callback is not None and takes_denoised(callback)
        self.callback = None if callback is None else (lambda done, total, latents, x0: self._call(
            done, total, latents, x0)) if four else (lambda done, total, latents: self._call(done, total, latents))

    def _call(self, *args) -> None:
        try:
            self.given(*args)
        except Stop:
            self.stopped = True
            raise


def overall(watch: Watch, index: int, count: int) -> Callback | None:
    """The callback of call ``index`` of ``count`` like it (tiles, loops): each step counted as the fraction of all the
    calls done, (index * total + done) of count * total, through ``watch`` (None when it has no callback)."""
    if watch.callback is None:
        return None
    if takes_denoised(watch.callback):
        return lambda done, total, latents, x0: watch.callback(index * total + done, count * total, latents, x0)
    return lambda done, total, latents: watch.callback(index * total + done, count * total, latents)


MAX_SEED = 2**64 - 1  # the largest seed torch.Generator.manual_seed takes
MAX_GUIDANCE = 100.0  # the largest CFG scale taken (ComfyUI's bound; A1111's slider stops at 30, usual is 4-12)


@dataclass(frozen=True)
class Draw:
    """One image to draw: its text conditioning and its seed (its own CPU generator)."""

    prompt: str
    negative_prompt: str | None  # the unconditional branch of CFG; None when guidance is off
    seed: int
    subseed: int | None = None  # the variation seed (``starts.Variation``): Variation.seed + i


@dataclass(frozen=True)
class Settings:
    """A call's settings after defaults and checks: the same for every image of the call."""

    steps: int
    guidance: float  # classifier-free guidance scale; <= 1 turns CFG off
    width: int  # pixels, a multiple of the VAE's scale factor
    height: int
    scheduler: str | SchedulerMixin  # a sampler name from latentgen.schedulers, or an instance
    batch_size: int | None  # images per U-Net call; None: 1 on CPU (bit-exact), all on GPU
    clip_skip: int = 1  # A1111's "Clip skip": 1 = CLIP's last layer, 2 = the one before (latentgen.text.prompts)
    prompt_syntax: str = "a1111"  # "a1111": emphasis, BREAK, 75-token chunks, <lora:...> tags; "plain": none
    variation: Variation | None = None  # A1111's variation seed and seed resize (``latentgen.starts``)
    size_cond: object = None  # SDXL's size conditioning (``latentgen.text.xl.SizeCond``); None: the defaults
    tiling: bool = False  # A1111's "Tiling": pictures that tile seamlessly (``latentgen.canvas.seamless``)
    guidance_rescale: float = 0.0  # CFG rescale phi (Lin et al. 2024, eq. 16; ``Pipeline.denoise``): 0 is off

    @property
    def cfg(self) -> bool:  # classifier-free guidance on: decided here only
        return self.guidance > 1

    def batch(self, device: torch.device, images: int) -> int:
        """Images per U-Net call: ``batch_size``, or by default 1 on CPU (each image bit-identical to its
        one-image call) and all ``images`` at once on GPU (equal within float rounding)."""
        return self.batch_size or (1 if device.type == "cpu" else images)


class CallProgress:
    """A call's ``callback(done, total, latents)`` over its loops (chunks, and their hires passes): each loop's
    steps counted on from the last loop's, out of all of them."""

    def __init__(self, callback: Callback | None, chunks: int):
        self.callback, self.chunks, self.done, self.started = callback, chunks, 0, 0

    def chunk(self, steps: int) -> Callback | None:
        """The callback for the next chunk's loop of ``steps`` steps (None when the call has none); the total counts
        the loops still to come as this one (exact when all run as many steps: a hires pass may run other counts)."""
        if self.callback is None:
            return None
        self.started += 1
        base, total = self.done, self.done + steps * (self.chunks - self.started + 1)
        self.done += steps
        if takes_denoised(self.callback):
            return lambda i, _steps, latents, denoised: self.callback(base + i, total, latents, denoised)
        return lambda i, _steps, latents: self.callback(base + i, total, latents)


def as_prompts(prompt, name: str) -> list[str]:
    """A prompt or a non-empty list of prompts, as a list of valid Unicode text."""
    texts = [prompt] if isinstance(prompt, str) else prompt
    if isinstance(texts, Sequence) and texts and all(isinstance(p, str) for p in texts):
        for p in texts:
            try:
                p.encode("utf-8")
            except UnicodeEncodeError as e:  # a lone surrogate ("\ud800"): no tokenizer can read it
                raise ValueError(f"{name} {p[:40] + ('...' if len(p) > 40 else '')!r} holds {p[e.start]!r} at character {e.start}, half of a "
                                 f"surrogate pair, which is not text; pass the whole character, or remove it.") from None
        return list(texts)
    raise TypeError(f"{name} must be a string or a non-empty list of strings, got {type(prompt).__name__}; "
                    f"pass text such as {name}='a red circle'.")


def _size(name: str, value, f: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value <= 0 or value % f:
        ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
        near = max(f, round(value / f) * f) if ok else 64 * f
        raise ValueError(f"{name}={value!r} is invalid: use a positive multiple of {f} "
                         f"(the VAE's scale factor), such as {name}={near}.")
    return int(value)


def resolve(defaults: Defaults, vae_scale_factor: int, own_scheduler: SchedulerMixin, *, steps=None, guidance=None, width=None, height=None,
            scheduler=None, batch_size=None, num_images=1, seed=0, clip_skip=1, prompt_syntax="a1111",
            variation=None, size_cond=None, tiling=False, guidance_rescale=0.0) -> Settings:
    """Fill in the model's defaults and check every setting; ``num_images`` and ``seed`` are checked too.
    ``clip_skip`` is checked against the text encoder's depth when the first prompt is encoded.

    The scheduler falls back to the defaults' sampler name, then to the model's own scheduler."""
    steps = checks.whole("steps", defaults.steps if steps is None else steps, 1,
                         "use a whole number of denoising steps >= 1, such as steps=20")
    guidance = checks.number("guidance", defaults.guidance if guidance is None else guidance, minimum=0,
                             maximum=MAX_GUIDANCE, fix=f"use a finite number from 0 to {MAX_GUIDANCE:g}, such as 7.5 (<= 1 "
                                                       f"turns classifier-free guidance off)")
    rescale = checks.number("guidance_rescale", guidance_rescale, minimum=0, maximum=1, fix="use 0 to 1, such as 0.7")
    width = _size("width", defaults.width if width is None else width, vae_scale_factor)
    height = _size("height", defaults.height if height is None else height, vae_scale_factor)
    checks.whole("num_images", num_images, 1, "ask for at least one image, such as num_images=1")
    seeds(seed, num_images)
    if batch_size is not None:
        checks.whole("batch_size", batch_size, 1, "use batch_size >= 1, or None for the default")
    if scheduler is None:
        scheduler = defaults.scheduler or own_scheduler
    elif not isinstance(scheduler, (str, SchedulerMixin)):
        raise TypeError(f"scheduler must be a name or a diffusers scheduler, got {type(scheduler).__name__}; "
                        f"use one of: {', '.join(schedulers.SAMPLERS)}.")
    if isinstance(scheduler, str):
        schedulers.check_name(scheduler)
        bound = schedulers.step_bound(scheduler, own_scheduler.config)
        if bound is not None and steps > bound:
            raise ValueError(f"steps={steps} is more than the {scheduler!r} sampler takes ({bound}, its distillation "
                             f"schedule's original_inference_steps): use steps <= {bound}; 2-8 is usual.")
    checks.whole("clip_skip", clip_skip, 1, "use 1 (CLIP's last layer, the default) or 2 (the layer before, "
                 "A1111's 'Clip skip: 2'), such as clip_skip=2")
    checks.choice("prompt_syntax", prompt_syntax, prompts.SYNTAXES,
                  "use 'a1111' (emphasis, BREAK, long prompts, <lora:...> tags) or 'plain' (the text as it is)")
    if not isinstance(tiling, bool):
        raise TypeError(f"tiling must be True or False, got {tiling!r}; tiling=True draws pictures that tile "
                        f"seamlessly (A1111's Tiling).")
    return Settings(steps, guidance, width, height, scheduler, batch_size, int(clip_skip), prompt_syntax,
                    check_variation(variation, num_images), xl.check_size_cond(size_cond), tiling, rescale)


def check_variation(v, num_images: int) -> Variation | None:
    """A ``starts.Variation``, checked (None and a variation that changes nothing: None)."""
    if v is None:
        return None
    if not isinstance(v, Variation):
        raise TypeError(f"variation must be a latentgen.Variation, got {type(v).__name__}; such as "
                        f"variation=latentgen.Variation(seed=7, strength=0.3).")
    try:
        seeds(v.seed, num_images)
    except ValueError as e:
        raise ValueError(f"variation.{e}") from None
    checks.number("variation.strength", v.strength, minimum=0, maximum=1,
                  fix="use 0 (the seed's image) to 1 (the variation seed's), such as 0.3")
    if v.resize_from is not None:
        if not (isinstance(v.resize_from, Sequence) and len(v.resize_from) == 2):
            raise ValueError(f"variation.resize_from={v.resize_from!r} is invalid: give (width, height) in pixels, "
                             f"such as (512, 512), or None.")
        for name, n in zip(("width", "height"), v.resize_from):
            checks.whole(f"variation.resize_from {name}", n, 1, "use a size in pixels, such as 512")
    if not v.strength and v.resize_from is None:
        return None
    return v


def seeds(seed, count: int) -> int:
    """``seed`` when ``seed`` ... ``seed + count - 1`` (image i of the call draws from seed + i) are all
    seeds of torch's generator, 0 to 2**64 - 1. A negative seed is refused: torch would read -1 as
    2**64 - 1, and the PNG would say "Seed: -1", which A1111 reads as "a random seed"."""
    top = MAX_SEED - (count - 1)  # the call's last image draws from seed + count - 1
    if isinstance(seed, bool) or not isinstance(seed, Integral) or not 0 <= seed <= top:
        note = "there is no random seed (A1111's -1) here: pick one; " if isinstance(seed, Real) and seed < 0 else ""
        many = f" (image i of the call uses seed + i; {count} images here)" if count > 1 else ""
        raise ValueError(f"seed={seed!r} is invalid: {note}use a whole number from 0 to {top}{many}, such as seed=0.")
    return int(seed)


def draws(prompt, negative_prompt, num_images: int, seed: int, s: Settings) -> list[Draw]:
    """The images of a call, in order: ``num_images`` per prompt; image i has seed ``seed + i`` (and variation seed
    ``s.variation.seed + i``). Without CFG (``s.cfg`` false) a draw has no negative prompt."""
    texts = as_prompts(prompt, "prompt")
    negatives = [""] if negative_prompt is None else as_prompts(negative_prompt, "negative_prompt")
    if len(negatives) == 1:
        negatives = negatives * len(texts)
    if len(negatives) != len(texts):
        raise ValueError(f"negative_prompt has {len(negatives)} entries for {len(texts)} prompts; "
                         f"pass one negative prompt, or one per prompt.")
    if negative_prompt is not None and not s.cfg:
        warnings.warn(f"negative_prompt has no effect with guidance={s.guidance} <= 1.")
    pairs = [(p, n if s.cfg else None) for p, n in zip(texts, negatives) for _ in range(num_images)]
    seed = seeds(seed, len(pairs))  # every prompt's images
    sub = s.variation.seed if s.variation else None
    if sub is not None:
        check_variation(s.variation, len(pairs))
    return [Draw(p, n, seed + i, None if sub is None else sub + i) for i, (p, n) in enumerate(pairs)]


def batches(draws: list[Draw], size: int, key: Callable[[Draw], int]) -> list[list[Draw]]:
    """``draws`` in order, as U-Net batches of at most ``size`` images with one ``key``: the number of
    77-token chunks of an image's text (``CallText.embed``). An image padded to a batch mate's longer
    text would change with its batch; this way each image is the one its seed draws alone."""
    runs = [list(run) for _, run in groupby(draws, key)]
    return [run[i:i + size] for run in runs for i in range(0, len(run), size)]


def plain_unet(call: str, model: str, in_channels: int, latent_channels: int) -> None:
    """txt2img and img2img need a U-Net that takes the latents alone; an inpainting one (9 channels:
    latents, mask, masked-image latents) is refused, before any image is read or encoded."""
    if in_channels != latent_channels:
        raise ValueError(f"{model} is an inpainting model (its U-Net takes {in_channels} channels), which "
                         f"{call} cannot run: use pipe.inpaint(prompt, image, mask).")


def drawing_size(own: tuple[int, int], width, height) -> tuple[int, int]:
    """(w, h) an image-in call draws at: ``width`` x ``height`` where given, else the input image's ``own``."""
    for name, v in (("width", width), ("height", height)):
        if v is not None:
            checks.whole(name, v, 1, f"use a size in pixels, such as {name}=512, or None for the image's own")
    return (width or own[0], height or own[1])


def strength(value) -> float:
    """img2img / inpainting strength in [0, 1]."""
    return checks.number("strength", value, minimum=0, maximum=1,
                         fix="use a number in [0, 1] (0 keeps the image, 1 repaints it from pure noise), "
                             "such as strength=0.6")

