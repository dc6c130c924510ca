"""img2img and inpainting: the txt2img loop (``Pipeline.sample``), started from an image.

img2img (SDEdit, Meng et al. 2021, https://arxiv.org/abs/2108.01073): encode the image to latents
z0 (1, 4, h, w), noise them to the timestep that ``strength`` picks, denoise the last
``int(steps * strength)`` steps. Inpainting adds a mask (1 repaint, 0 keep):
  - 4-channel U-Nets: after every step the known region is replaced by z0 noised to the next
    timestep (RePaint-style blending, as diffusers and A1111 do);
  - 9-channel inpainting U-Nets (SD 1.5/2 inpainting): the U-Net input is
    cat(latents (4), mask at latent size (1), latents of the masked image (4)).
Then the decoded image is composited over the original through the mask, feathered inward, so
every pixel outside the mask is the original's.

Random draws per image i (its own generator, seed + i) follow diffusers'
``StableDiffusionImg2ImgPipeline`` / ``StableDiffusionInpaintPipeline`` with one generator:
img2img: VAE latent sample, then noise. Inpainting: VAE latent sample of the image (4-channel, or
strength < 1), noise, then the latent sample of the masked image (4-channel U-Nets do not use it;
the draw is still made so later sampler noise lines up).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from . import images as im


def _check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
        raise ValueError(f"strength={strength!r} is invalid: use a number in [0, 1] "
                         f"(0 keeps the image, 1 repaints it from pure noise), such as strength=0.6.")
    return float(strength)


def strength_timesteps(sched, steps: int, strength: float) -> torch.Tensor:
    """The last ``int(steps * strength)`` of the sampler's timesteps, as diffusers picks them."""
    t_start = steps - min(int(steps * strength), steps)
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(t_start * sched.order)
    return sched.timesteps[t_start * sched.order:]


class EditMixin:
    """img2img and inpainting methods of ``Pipeline``."""

    max_pixels: int = 2048 * 2048  # largest image (in pixels) the VAE is given; raise per call or here

    @torch.no_grad()
    def _latent_samples(self, pixels: torch.Tensor, generators: list[torch.Generator],
                        dtype: torch.dtype) -> torch.Tensor:
        """(1, 3, H, W) in [-1, 1] -> one scaled latent sample per generator: (B, 4, H/f, W/f)."""
        vae = self.c.vae
        dist = vae.encode(pixels.to(self.c.device, vae.dtype)).latent_dist  # encoded once, sampled B times
        z = torch.cat([dist.sample(generator=g) for g in generators])
        return (z * vae.config.scaling_factor).to(dtype)

    def _edit_args(self, prompt, strength, steps, guidance, num_images, seed, scheduler, batch_size,
                   negative_prompt, size):
        from .pipeline import _as_prompts

        prompts = _as_prompts(prompt, "prompt")
        strength = _check_strength(strength)
        steps, guidance, w, h, scheduler = self._resolve(
            steps=steps, guidance=guidance, width=size[0], height=size[1], num_images=num_images,
            seed=seed, scheduler=scheduler, batch_size=batch_size)
        return self._jobs(prompts, negative_prompt, num_images, guidance), strength, steps, guidance, scheduler

    def img2img(self, prompt, image, *, strength: float = 0.75, seed: int = 0, steps: int | None = None,
                guidance: float | None = None, negative_prompt=None, num_images: int = 1, scheduler=None,
                callback=None, batch_size: int | None = None, max_pixels: int | None = None) -> list[Image.Image]:
        """Redraw ``image`` under ``prompt``; returns images of the input's size.

        image: PIL image (any mode), numpy array or path; see ``latentgen.images``. Sizes that are
            not multiples of the VAE factor are resized down for the model and back.
        strength: how much to change, in [0, 1]: ``int(steps * strength)`` steps run from the
            matching noise level; 0 returns the VAE reconstruction of the input.
        Other arguments as in ``generate``; ``max_pixels`` bounds the image size (memory).
        """
        src, _ = im.load_rgb(image, "image")
        size = im.work_size(src.size, self.c.vae_scale_factor, max_pixels or self.max_pixels)
        jobs, strength, steps, guidance, scheduler = self._edit_args(
            prompt, strength, steps, guidance, num_images, seed, scheduler, batch_size, negative_prompt, size)
        pixels = im.to_tensor(src if src.size == size else src.resize(size, im.LANCZOS))  # (1, 3, H, W)

        def start(sched, idx, generators, dtype):
            timesteps = strength_timesteps(sched, steps, strength)
            z0 = self._latent_samples(pixels, generators, dtype)  # (B, 4, h, w)
            if len(timesteps) == 0:  # strength 0 (or too few steps): the reconstruction
                return z0, timesteps, {}
            noise = randn_tensor(z0.shape, generator=generators, device=z0.device, dtype=dtype)
            return sched.add_noise(z0, noise, timesteps[:1].repeat(len(idx))), timesteps, {}

        out = self.sample(jobs, start, seed=seed, steps=steps, guidance=guidance, scheduler=scheduler,
                          callback=callback, batch_size=batch_size,
                          info={"Size": f"{src.width}x{src.height}", "Denoising strength": strength})
        return [o if o.size == src.size else _resized(o, src.size) for o in out]

    def inpaint(self, prompt, image, mask=None, *, strength: float = 1.0, seed: int = 0,
                steps: int | None = None, guidance: float | None = None, negative_prompt=None,
                num_images: int = 1, scheduler=None, mask_blur: float = 4, only_masked: bool = False,
                padding: int = 32, composite: bool = True, callback=None, batch_size: int | None = None,
                max_pixels: int | None = None, latent_mask: str = "coverage") -> list[Image.Image]:
        """Repaint the white part of ``mask`` under ``prompt``; keep the rest, pixel for pixel.

        image: PIL image (any mode), numpy array or path. mask: the same kinds, same size; white
            (>= 0.5) repaints, black keeps. None: the image's alpha channel, transparent = repaint.
        strength: 1 repaints the hole from pure noise; lower keeps more of what is under it.
        mask_blur: feather radius (pixels) of the final composite, inside the mask only.
        only_masked: work on the mask's bounding box plus ``padding`` pixels, at the model's
            native size, and paste it back (A1111's "inpaint only masked"): more detail for
            small holes in large images.
        composite: False returns the model's decoded image without the pixel composite (for
            comparing with diffusers); with ``only_masked`` the crop is pasted unblended.
        latent_mask: how the mask becomes one value per latent cell (8x8 pixels). "coverage": a
            cell repaints when at least half its pixels do (A1111 rounds its resized mask alike),
            so the latent hole sits on the pixel hole. "nearest": one pixel per cell, as diffusers
            does, which shifts the hole by up to 7 px toward the bottom right; use it to match
            diffusers exactly. They agree on masks whose edges lie on the 8-pixel grid.
        Works with 4-channel U-Nets (latent blending) and 9-channel inpainting U-Nets.
        """
        if latent_mask not in ("coverage", "nearest"):
            raise ValueError(f"latent_mask={latent_mask!r} is invalid: use 'coverage' (default) or 'nearest' "
                             f"(diffusers' sampling).")
        src, alpha = im.load_rgb(image, "image")
        if mask is None:
            if alpha is None:
                raise ValueError("mask is missing and the image has no alpha channel: pass mask=... "
                                 "(white repaints, black keeps), or an image whose transparent pixels "
                                 "mark what to repaint.")
            m = 1.0 - alpha.astype(np.float32) / 255.0
        else:
            m = im.load_mask(mask, "mask")
            if (m.shape[1], m.shape[0]) != src.size:
                raise ValueError(f"mask is {m.shape[1]}x{m.shape[0]} but image is {src.width}x{src.height}: "
                                 f"pass a mask of the image's size, e.g. mask.resize(image.size).")
        if isinstance(mask_blur, bool) or not isinstance(mask_blur, (int, float)) or not (
                math.isfinite(mask_blur) and mask_blur >= 0):
            raise ValueError(f"mask_blur={mask_blur!r} is invalid: use a radius in pixels >= 0, such as 4.")
        if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
            raise ValueError(f"padding={padding!r} is invalid: use a whole number of pixels >= 0, such as 32.")
        f, limit = self.c.vae_scale_factor, max_pixels or self.max_pixels
        hole = m >= 0.5
        box = (0, 0, *src.size)
        if only_masked and hole.any():
            d = self.c.defaults
            box = im.crop_box(hole, int(padding), d.width / d.height)
            size = im.work_size((d.width, d.height), f, limit)
        else:
            size = im.work_size(src.size, f, limit)
        jobs, strength, steps, guidance, scheduler = self._edit_args(
            prompt, strength, steps, guidance, num_images, seed, scheduler, batch_size, negative_prompt, size)
        if not hole.any():
            warnings.warn("mask is empty (no pixel >= 0.5): nothing to repaint, returning the input.")
            return [src.copy() for _ in jobs]

        region = src.crop(box)  # the whole image unless only_masked
        pixels = im.to_tensor(region if region.size == size else region.resize(size, im.LANCZOS))
        mask_px = im.mask_tensor(im.resize_mask(m[box[1]:box[3], box[0]:box[2]], size))  # (1, 1, H, W)
        masked = pixels * (mask_px < 0.5)  # the image with the hole blanked (0 = mid-gray)
        mask_lat = to_latent_mask(mask_px, (size[1] // f, size[0] // f), latent_mask).to(self.c.device)
        nine = self.c.unet.config.in_channels != self.c.vae.config.latent_channels

        def start(sched, idx, generators, dtype):
            timesteps = strength_timesteps(sched, steps, strength)
            full = strength == 1.0 and len(timesteps) > 0
            z0 = self._latent_samples(pixels, generators, dtype) if (not nine or not full) else None
            shape = (len(idx), self.c.vae.config.latent_channels, size[1] // f, size[0] // f)
            noise = randn_tensor(shape, generator=generators, device=self.c.device, dtype=dtype)
            m_lat = mask_lat.to(dtype).expand(len(idx), -1, -1, -1)  # (B, 1, h, w)
            if nine:
                cond = torch.cat([m_lat, self._latent_samples(masked, generators, dtype)], dim=1)  # (B, 5, h, w)
                extra = {"condition": cond}
            else:
                vae = self.c.vae
                for g in generators:  # diffusers' masked-image latent draw, unused by 4-channel U-Nets
                    randn_tensor(shape[1:], generator=g, device=vae.device, dtype=vae.dtype)

                def blend(i, latents):  # known region := z0 noised to the next timestep
                    known = z0 if i == len(timesteps) - 1 else \
                        sched.add_noise(z0, noise, torch.tensor([timesteps[i + 1]]))
                    return (1 - m_lat) * known + m_lat * latents

                extra = {"blend": blend}
            if len(timesteps) == 0:
                return z0 if z0 is not None else self._latent_samples(pixels, generators, dtype), timesteps, {}
            latents = noise * sched.init_noise_sigma if full else sched.add_noise(
                z0, noise, timesteps[:1].repeat(len(idx)))
            return latents, timesteps, extra

        info = {"Size": f"{src.width}x{src.height}", "Denoising strength": strength, "Mask blur": mask_blur}
        if only_masked:
            info.update({"Inpaint area": "Only masked", "Masked area padding": int(padding)})
        out = self.sample(jobs, start, seed=seed, steps=steps, guidance=guidance, scheduler=scheduler,
                          callback=callback, batch_size=batch_size, info=info)
        results = []
        for o in out:
            crop = o if o.size == region.size else _resized(o, region.size)
            full_image = src.copy()
            full_image.paste(crop, box[:2])
            full_image.info.update(o.info)
            results.append(im.composite(src, full_image, m, mask_blur) if composite else full_image)
        return results


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    out = image.resize(size, im.LANCZOS)
    out.info.update(image.info)
    return out


def to_latent_mask(mask_px: torch.Tensor, lat_size: tuple[int, int], mode: str = "coverage") -> torch.Tensor:
    """(1, 1, H, W) mask in [0, 1] -> (1, 1, h, w) of 0/1: "coverage" (at least half of each cell's
    pixels) or "nearest" (one pixel per cell, diffusers' ``F.interpolate``)."""
    if mode == "nearest":
        return F.interpolate(mask_px, size=lat_size)
    return (F.adaptive_avg_pool2d(mask_px, lat_size) >= 0.5).to(mask_px.dtype)
