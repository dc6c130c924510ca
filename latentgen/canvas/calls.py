"""The calls that start from a picture, ``Pipeline.img2img`` and ``Pipeline.inpaint`` (the class takes them as its
methods): each checks its inputs, brings the picture to the drawing's size (``resize``, ``fill``) and builds the
loop's start (``latentgen.starts``), then runs ``Pipeline.sample``, the one loop, and returns the pictures at the
input's size."""

from __future__ import annotations

import warnings
from functools import partial

from PIL import Image

from .. import images as im
from .. import checks, request, starts
from ..control import units as controls
from ..models import components
from ..models.presets import Defaults
from ..request import Callback
from ..text import prompts
from ..vae import tiny
from . import fill as masked
from . import resize


def img2img(self, prompt, image, *, strength: float = 0.75, seed: int = 0, steps: int | None = None,
            guidance: float | None = None, negative_prompt=None, num_images: int = 1, scheduler=None,
            width: int | None = None, height: int | None = None, resize_mode: str | int = "just resize",
            callback: Callback | None = None, batch_size: int | None = None, max_pixels: int | None = None,
            clip_skip: int = 1, prompt_syntax: str = "a1111", variation=None, control=None,
            refiner=None, size_cond=None, tiling: bool = False, guidance_rescale: float = 0.0) -> list[Image.Image]:
    """Redraw ``image`` under ``prompt``; returns images of the input's size, or of ``width`` x ``height``.

    image: PIL image (any mode), numpy array or path (``latentgen.images``); sizes not multiples of the
        VAE factor are resized down for the model and back.
    strength: how much to change, in [0, 1]: ``int(steps * strength)`` steps run from the
        matching noise level; 0 returns the VAE reconstruction of the input.
    resize_mode: how an image of another shape than ``width`` x ``height`` is fitted (``latentgen.canvas.resize``:
        "just resize", "crop and resize", "resize and fill", "latent upscale", or A1111's 0-3).
    Other arguments as in ``generate`` (``control``: ControlNet units; ``refiner``: a ``latentgen.Refiner``, for the
    end of the noise schedule; ``size_cond``: SDXL's size conditioning; ``tiling``: pictures that tile seamlessly,
    ``latentgen.canvas.seamless``); ``max_pixels`` bounds the image size.
    """
    request.plain_unet("img2img", self.name, self.unet.config.in_channels, self.vae.config.latent_channels)
    tiny.check_encoder(self.vae, "img2img")
    max_pixels, how, f = max_pixels or self.limits.max_input_pixels, resize.mode(resize_mode), self.vae_scale_factor
    src, _ = im.load_rgb(image, "image", max_pixels)  # a file's size checked from its header, then decoded
    size = request.drawing_size(src.size, width, height)
    w, h = im.work_size(size, f, max_pixels)
    strength = request.strength(strength)
    s = self.settings(steps=steps, guidance=guidance, width=w, height=h, scheduler=scheduler, seed=seed,
                      batch_size=batch_size, num_images=num_images, clip_skip=clip_skip, prompt_syntax=prompt_syntax,
                      variation=variation, prompt=prompt, size_cond=size_cond, tiling=tiling,
                      guidance_rescale=guidance_rescale)
    draws = request.draws(prompt, negative_prompt, num_images, seed, s)
    src = resize.resize(src, size, how)  # "latent upscale": as it is, encoded at its own size
    own = (w, h) if how != "latent upscale" else im.work_size(src.size, f, max_pixels)
    pixels = im.to_tensor(src if src.size == own else src.resize(own, im.LANCZOS))  # (1, 3, H, W)
    start = partial(starts.from_image, vae=self.vae, pixels=pixels, steps=s.steps, strength=strength,
                    latent_size=(h // f, w // f))
    control = controls.prepare(control, self.unet, (w, h), max_pixels=max_pixels)
    out = self.sample(draws, s, start, size=f"{size[0]}x{size[1]}", info={"Denoising strength": strength},
                      callback=callback, control=control, refiner=refiner)
    return [o if o.size == size else im.resized(o, size) for o in out]


def inpaint(self, prompt, image, mask=None, *, strength: float = 1.0, seed: int = 0,
            steps: int | None = None, guidance: float | None = None, negative_prompt=None,
            num_images: int = 1, scheduler=None, mask_blur: float | None = None, only_masked: bool = False,
            padding: int = 32, composite: bool = True, callback: Callback | None = None,
            batch_size: int | None = None, max_pixels: int | None = None,
            latent_mask: str = "coverage", clip_skip: int = 1, prompt_syntax: str = "a1111",
            variant: str = "auto", fill: str | int = "original", variation=None, control=None,
            refiner=None, size_cond=None, tiling: bool = False, guidance_rescale: float = 0.0) -> list[Image.Image]:
    """Repaint the white part of ``mask`` under ``prompt``; keep the rest, pixel for pixel.

    image: PIL image (any mode), numpy array or path. mask: the same kinds, same size; white
        (>= 0.5) repaints, black keeps. None: the image's alpha channel, transparent = repaint.
    strength: 1 repaints the hole from pure noise; lower keeps more of what is under it.
    mask_blur: feather radius (pixels) of the final composite, inside the mask only; None: the model's
        default (``defaults.mask_blur``: 4, as A1111; the embedded model's 2, see its preset).
    only_masked: work on the mask's bounding box plus ``padding`` pixels, at the model's native size, and
        paste it back (A1111's "inpaint only masked"): more detail for small holes in large images.
    composite: False: the decoded image without the pixel composite (as diffusers; only_masked: unblended).
    latent_mask: mask -> one value per 8x8 latent cell. "coverage": a cell repaints when half its
        pixels do (as A1111 rounds), so the latent hole sits on the pixel hole. "nearest": one pixel
        per cell as diffusers (the hole shifts up to 7 px down-right): diffusers' exact images.
    variant: "auto": a 9-channel U-Net, the model's own or the variant it ships (``self.inpaint_unet``:
        the embedded default has one; not with a LoRA loaded or tagged), else latent blending; "blend": always.
    fill: the masked content where the start keeps the image (strength < 1): "original", "fill", "latent
        noise", "latent nothing", or A1111's 0-3 (``latentgen.canvas.fill``). control: ControlNet units, their
        images fitted to the input image (and cropped with it for ``only_masked``). refiner: a ``latentgen.Refiner``
        for the end of the noise schedule (with a 4-channel U-Net; the known part put back at its steps too);
        size_cond (SDXL's size conditioning), tiling (A1111's Tiling), guidance_rescale: as in ``generate``."""
    mask_blur, fill = _inpaint_options(self.defaults, mask_blur, latent_mask, variant), masked.mode(fill)
    tiny.check_encoder(self.vae, "inpaint")
    f = self.vae_scale_factor
    inp = im.inpaint_input(image, mask, only_masked=only_masked, padding=padding, f=f,
                           native=(self.defaults.width, self.defaults.height),
                           max_pixels=max_pixels or self.limits.max_input_pixels)
    strength = request.strength(strength)
    s = self.settings(steps=steps, guidance=guidance, width=inp.size[0], height=inp.size[1], scheduler=scheduler,
                      batch_size=batch_size, num_images=num_images, seed=seed, clip_skip=clip_skip,
                      prompt_syntax=prompt_syntax, variation=variation, prompt=prompt, size_cond=size_cond,
                      tiling=tiling, guidance_rescale=guidance_rescale)
    draws = request.draws(prompt, negative_prompt, num_images, seed, s)
    if inp.empty:
        warnings.warn("mask is empty (no pixel >= 0.5): nothing to repaint, returning the input.")
        return [inp.source.copy() for _ in draws]
    unet, c = self.unet, self.vae.config.latent_channels
    lora = self.loras.loaded or (prompt_syntax == "a1111" and any(prompts.extra_networks(d.prompt)[1] for d in draws))
    if variant == "auto" and self.inpaint_unet is not None and unet.config.in_channels == c and not lora:
        unet = self.inpaint_unet = components.load_unet(self.inpaint_unet, like=self.unet)  # the 9-channel variant
    if refiner is not None and unet.config.in_channels != c:
        raise ValueError(f"refiner= needs a {c}-channel U-Net for inpainting: {self.name!r} inpaints with a "
                         f"{unet.config.in_channels}-channel one here; pass variant='blend'.")
    start = starts.for_inpaint(inp, in_channels=unet.config.in_channels, vae=self.vae, f=f, latent_mask=latent_mask,
                               steps=s.steps, strength=strength, fill=fill)
    box = inp.box if only_masked and inp.box != (0, 0, *inp.source.size) else None
    control = controls.prepare(control, unet, inp.size, max_pixels=max_pixels or self.limits.max_input_pixels,
                               box=box, source=inp.source.size)
    info = {"Denoising strength": strength, "Mask blur": mask_blur,
            **({"Inpaint area": "Only masked", "Masked area padding": int(padding)} if only_masked else {})}
    out = self.sample(draws, s, start, size=f"{inp.source.width}x{inp.source.height}", info=info,
                      callback=callback, unet=unet, control=control, refiner=refiner)
    return im.paste_back(out, inp, mask_blur, composite)


def outpaint(self, prompt, image, *, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0,
             fill: str | int = "fill", strength: float = 0.8, mask_blur: float | None = None,
             **options) -> list[Image.Image]:
    """Extend ``image`` by ``left``, ``right``, ``top``, ``bottom`` pixels and draw the new area under ``prompt``
    (A1111's "Poor man's outpainting"): an inpainting call (``inpaint``) on the larger canvas
    (``latentgen.canvas.outpaint``), the new area masked and the seam (twice ``mask_blur`` pixels into the
    picture) redrawn; ``fill``: what stands in the new area before drawing (default "fill": painted from the
    picture's edge); ``strength`` as in ``inpaint`` (default 0.8, so the fill shows through). Other ``options``
    (seed, steps, guidance, negative_prompt, num_images, scheduler, ...) as in ``inpaint``."""
    from .outpaint import extend

    mask_blur = _inpaint_options(self.defaults, mask_blur, options.get("latent_mask", "coverage"),
                                        options.get("variant", "auto"))
    src, _ = im.load_rgb(image, "image", options.get("max_pixels") or self.limits.max_input_pixels)
    canvas, mask = extend(src, left=left, right=right, top=top, bottom=bottom, overlap=int(2 * mask_blur))
    return self.inpaint(prompt, canvas, mask, fill=fill, strength=strength, mask_blur=mask_blur, **options)


def _inpaint_options(defaults: Defaults, mask_blur, latent_mask: str, variant: str) -> float:
    """``Pipeline.inpaint``'s own options, checked; returns the mask blur (None: the model's ``defaults``)."""
    checks.choice("latent_mask", latent_mask, ("coverage", "nearest"), "use 'coverage' (default) or 'nearest'")
    checks.choice("variant", variant, ("auto", "blend"), "use 'auto' (default) or 'blend'")
    if mask_blur is None:  # the model's own; a bad one is named as the model's setting
        mask_blur = checks.number("defaults.mask_blur", defaults.mask_blur, minimum=0,
                                  fix="set mask_blur >= 0 in the model's latentgen.json or preset")
    checks.number("mask_blur", mask_blur, minimum=0, fix="use a radius in pixels >= 0, such as 4")
    return mask_blur  # as given: the PNG says "Mask blur: 4", not 4.0
