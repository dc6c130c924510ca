"""How the latent loop starts: from noise (txt2img), from an image (img2img), from an image and a mask
(inpainting: two builders, one per kind of U-Net). Each is a pure function ``(sampler, seeds, dtype,
...) -> Start``; the pipeline binds the inputs with ``functools.partial`` and runs the same loop
(``Pipeline.denoise``) on it. A ``Start`` carries the loop's per-step extension points (``Hooks``).

img2img (SDEdit, Meng et al. 2021, https://arxiv.org/abs/2108.01073): encode the image to latents
z0 (B, 4, h, w), noise them to the timestep that ``strength`` picks, denoise the last
``int(steps * strength)`` steps (PLMS: one more, as in diffusers); when that is 0, z0 itself is
decoded: the VAE reconstruction, for every sampler. Inpainting adds a mask (1 repaint, 0 keep):
  - 4-channel U-Nets (``inpaint_blend``): after every step the known region is replaced by z0 noised to
    the next timestep (RePaint-style blending, as diffusers and A1111 do);
  - 9-channel inpainting U-Nets (``inpaint_input``, SD 1.5/2 inpainting): the U-Net input is
    cat(latents (4), mask at latent size (1), latents of the masked image (4)).

Random draws per image (its own generator, in ``Seeds``) follow diffusers' reference pipelines with one
generator: txt2img: noise. img2img: VAE latent sample, then noise. Inpainting: VAE latent sample of
the image (4-channel, or strength < 1), noise, then the latent sample of the masked image
(4-channel U-Nets do not use it; the draw is still made so later sampler noise lines up). A1111's variation
seeds change the start noise only (``Variation``, ``Seeds.noise``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from . import precision
from .canvas.fill import hole_latents, paint_pixels


@dataclass(frozen=True)
class Hooks:
    """The denoising loop's named extension points, each called once per step i (None: not used). A feature
    that enters the loop fills one of these; it does not add a parameter to ``Pipeline.denoise``.

    context: (i, context) -> the text context for step i, (2B or B, 77 * k, D) as given ([uncond; cond]
        under CFG): conditioning that changes by step (A1111's prompt editing and alternation).
    unet_inputs: (i, x, t, context, added) -> extra keyword inputs of the U-Net call at step i, x (2B or B, C, h, w)
        as the U-Net gets it (``added``: SDXL's ``added_cond_kwargs``, rows alike, or None): per-step inputs such
        as ControlNet's residuals (``down_block_additional_residuals``, ``mid_block_additional_residual``). Such a call runs the torch U-Net (converted graphs take x, t, context).
    after_step: (i, latents) -> latents after the sampler's step i: inpainting's known region put back.
    """

    context: Callable[[int, torch.Tensor], torch.Tensor] | None = None
    unet_inputs: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, dict | None], dict] | None = None
    after_step: Callable[[int, torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True)
class Variation:
    """A1111's variation seed and seed resize, for the start noise. Image i's noise is the spherical interpolation
    (slerp) of its seed's noise and the noise of ``seed + i`` at ``strength``: 0 draws the seed's image, 1 the
    variation seed's (with samplers that draw no fresh noise later: ancestral ones keep the image's own seed there).
    ``resize_from`` (width, height in pixels): the noise is drawn at that size and pasted into the middle of the
    drawing's own (the rest: the seed's noise at the drawing's size), so a seed keeps its look at another size."""

    seed: int = 0
    strength: float = 0.0
    resize_from: tuple[int, int] | None = None


@dataclass(frozen=True)
class Seeds:
    """A chunk's random sources: each image's generator (seeded with its seed; it draws the VAE's latent samples,
    the start noise and the sampler's fresh noise) and, with a variation, each image's variation seed."""

    generators: list[torch.Generator]
    subseeds: list[int] | None = None  # per image: Variation.seed + i
    strength: float = 0.0
    from_shape: tuple[int, int] | None = None  # (h, w) latent cells of Variation.resize_from

    def noise(self, shape: tuple[int, int, int], device, dtype) -> torch.Tensor:
        """(B, *shape): each image's start noise, drawn from its generator as diffusers' ``randn_tensor`` does;
        with a variation, mixed and resized as A1111 does (its ``slerp``, its centered paste)."""
        if not self.strength and self.from_shape is None:
            return randn_tensor((len(self.generators), *shape), generator=self.generators, device=device, dtype=dtype)
        small = shape if self.from_shape is None else (shape[0], *self.from_shape)
        out = []
        for g, subseed in zip(self.generators, self.subseeds or [None] * len(self.generators)):
            seed_noise = randn_tensor((1, *shape), generator=g, dtype=dtype)[0]  # the image's generator, as always
            noise = seed_noise if small == shape else _randn(g.initial_seed(), small, dtype)
            if self.strength:
                noise = _slerp(self.strength, noise.float(), _randn(subseed, small, dtype).float()).to(dtype)
            out.append(noise if small == shape else _paste(noise, seed_noise.clone()))
        return torch.stack(out).to(device)


def seeds(draws, variation: Variation | None, f: int) -> Seeds:
    """The ``Seeds`` of a chunk of ``request.Draw``: a CPU generator per image seeded ``draw.seed`` (as diffusers'
    reference pipelines with one generator per image), its variation seed, and ``f`` pixels per latent cell."""
    generators = [torch.Generator("cpu").manual_seed(d.seed) for d in draws]
    if variation is None:
        return Seeds(generators)
    resize = variation.resize_from
    return Seeds(generators, [d.subseed for d in draws], variation.strength,
                 None if resize is None else (max(resize[1] // f, 1), max(resize[0] // f, 1)))


def _randn(seed: int, shape: tuple[int, ...], dtype) -> torch.Tensor:
    return randn_tensor((1, *shape), generator=torch.Generator().manual_seed(seed), dtype=dtype)[0]


def _slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of two (C, h, w) noises at ``t``, per (channel, column) over the rows (A1111's
    normalisation over dim 1); nearly parallel noises are interpolated linearly."""
    dot = (low / low.norm(dim=1, keepdim=True) * high / high.norm(dim=1, keepdim=True)).sum(1)  # (C, w)
    if dot.mean() > 0.9995:
        return (1 - t) * low + t * high
    omega = torch.acos(dot)
    return (torch.sin((1 - t) * omega) / torch.sin(omega))[:, None] * low + \
        (torch.sin(t * omega) / torch.sin(omega))[:, None] * high


def _paste(small: torch.Tensor, into: torch.Tensor) -> torch.Tensor:
    """``small`` (C, h', w') in the middle of ``into`` (C, h, w), cropped to it where larger."""
    (_, h, w), (_, sh, sw) = into.shape, small.shape
    dy, dx = (h - sh) // 2, (w - sw) // 2
    ch, cw = min(sh, h), min(sw, w)
    into[:, max(dy, 0):max(dy, 0) + ch, max(dx, 0):max(dx, 0) + cw] = \
        small[:, max(-dy, 0):max(-dy, 0) + ch, max(-dx, 0):max(-dx, 0) + cw]
    return into


@dataclass(frozen=True)
class Start:
    """How a chunk of B images enters the loop (``Pipeline.denoise``), and what the loop adds at each step."""

    latents: torch.Tensor  # (B, C, h, w), noised and scaled for the sampler's first timestep
    timesteps: torch.Tensor  # the sampler timesteps to run (all of them for txt2img)
    c_concat: torch.Tensor | None = None  # (B, c, h, w) extra U-Net input channels (9-channel: mask + masked image)
    hooks: Hooks = field(default_factory=Hooks)


# builds the Start of one chunk: (sampler with timesteps set, the images' seeds, dtype) -> Start
StartFn = Callable[[SchedulerMixin, Seeds, torch.dtype], Start]


def strength_timesteps(sched, steps: int, strength: float) -> torch.Tensor:
    """The last ``int(steps * strength)`` of the sampler's timesteps, as diffusers picks them; none when
    that is 0 (the start is the image itself). PLMS (PNDM) lists ``steps + 1`` timesteps (one of them
    twice), so the same slice runs one step more, as in diffusers."""
    k = min(int(steps * strength), steps)
    if k == 0:  # diffusers' slice would still leave PLMS its last timestep: one step, not the reconstruction
        return sched.timesteps[:0]
    t_start = steps - k
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(t_start * sched.order)
    return sched.timesteps[t_start * sched.order:]


@torch.no_grad()
def latent_samples(vae, pixels: torch.Tensor, generators: list[torch.Generator], dtype: torch.dtype) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1] -> one scaled latent sample per generator: (B, 4, H/f, W/f)."""
    pixels = pixels.to(precision.device_of(vae), precision.dtype_of(vae))
    out = vae.encode(pixels)  # encoded once, sampled B times
    if hasattr(out, "latent_dist"):
        z = torch.cat([out.latent_dist.sample(generator=g) for g in generators])
    else:  # a tiny VAE (latentgen.vae.tiny) encodes to one latent, drawing nothing (as diffusers' retrieve_latents)
        z = out.latents.repeat(len(generators), 1, 1, 1)
    return (z * vae.config.scaling_factor).to(dtype)


def to_latent_mask(mask_px: torch.Tensor, lat_size: tuple[int, int], mode: str = "coverage") -> torch.Tensor:
    """(1, 1, H, W) mask of 0/1 -> (1, 1, h, w) of 0/1, 1 = repaint the cell.

    "coverage": the cells at least half of whose pixels repaint, so the latent hole sits on the pixel
    hole; a connected part of the mask that fills no cell by half (a brush stroke narrower than a
    cell) repaints every cell it touches, rather than nothing. "nearest": one pixel per cell
    (diffusers' ``F.interpolate``)."""
    if mode == "nearest":
        return F.interpolate(mask_px, size=lat_size)
    cells = F.adaptive_avg_pool2d(mask_px, lat_size) >= 0.5  # (1, 1, h, w)
    thin = _parts_outside(mask_px[0, 0].cpu().numpy() >= 0.5,  # (H, W) pixels of parts no cell holds
                          F.interpolate(cells.float(), size=mask_px.shape[-2:])[0, 0].cpu().numpy() > 0)
    if thin.any():  # (1, 1, h, w): the cells those pixels touch
        touched = F.adaptive_max_pool2d(torch.from_numpy(thin).float()[None, None], lat_size) > 0
        cells |= touched.to(cells.device)
    return cells.to(mask_px.dtype)


def _parts_outside(hole: np.ndarray, in_cells: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels of the connected parts of ``hole`` (8-connected) with no pixel in ``in_cells``."""
    from scipy import ndimage  # as diffusers' LMS sampler, a dependency; imported when a mask needs it

    labels, n = ndimage.label(hole, structure=np.ones((3, 3)))
    kept = np.zeros(n + 1, bool)
    kept[labels[in_cells & hole]] = True
    return hole & ~kept[labels]


def from_noise(sched, seeds: Seeds, dtype, *, shape: tuple[int, int, int], device) -> Start:
    """txt2img: pure noise (B, C, h, w) scaled to the sampler's first sigma; ``shape`` is (C, h, w)."""
    return Start(seeds.noise(shape, device, dtype) * sched.init_noise_sigma, sched.timesteps)


def from_image(sched, seeds: Seeds, dtype, *, vae, pixels: torch.Tensor, steps: int, strength: float,
               latent_size: tuple[int, int] | None = None) -> Start:
    """img2img: the image's latents (B, 4, h, w) noised to the first of the last ``steps * strength`` steps;
    latents of another size than ``latent_size`` (h, w) are resized to it, bilinear (A1111's latent upscale)."""
    z0 = latent_samples(vae, pixels, seeds.generators, dtype)
    if latent_size is not None and tuple(z0.shape[-2:]) != tuple(latent_size):
        z0 = F.interpolate(z0, size=latent_size, mode="bilinear")
    return from_latents(sched, seeds, dtype, z0=z0, steps=steps, strength=strength)


def from_latents(sched, seeds: Seeds, dtype, *, z0: torch.Tensor, steps: int, strength: float) -> Start:
    """img2img from latents z0 (B, C, h, w) (an image's, or upscaled ones: the hires fix's second pass)."""
    timesteps = strength_timesteps(sched, steps, strength)
    if len(timesteps) == 0:  # strength 0 (or too few steps): the reconstruction
        return Start(z0, timesteps)
    noise = seeds.noise(z0.shape[1:], z0.device, dtype)
    return Start(sched.add_noise(z0, noise, timesteps[:1].repeat(len(z0))), timesteps)


def inpaint_blend(sched, seeds: Seeds, dtype, *, vae, pixels: torch.Tensor, mask_lat: torch.Tensor, steps: int,
                  strength: float, fill: str = "original") -> Start:
    """Inpainting with a 4-channel U-Net: ``pixels`` (1, 3, H, W) in [-1, 1], ``mask_lat`` (1, 1, h, w) with
    1 = repaint. After every step the known region (mask 0) is put back as the image's latents z0 noised to
    the next step's timestep, so only the hole is drawn; the last step puts back z0 itself."""
    timesteps = strength_timesteps(sched, steps, strength)
    generators = seeds.generators
    z0 = latent_samples(vae, pixels, generators, dtype)  # (B, 4, h, w)
    c, (h, w) = vae.config.latent_channels, mask_lat.shape[-2:]
    noise = seeds.noise((c, h, w), mask_lat.device, dtype)
    for g in generators:  # diffusers' masked-image latent draw, unused here; made so later sampler noise lines up
        randn_tensor((c, h, w), generator=g, device=vae.device, dtype=vae.dtype)
    if len(timesteps) == 0:  # strength 0: the reconstruction
        return Start(z0, timesteps)
    hole = mask_lat.to(dtype).expand(len(generators), -1, -1, -1)  # (B, 1, h, w)
    z0 = hole_latents(z0, hole, noise, fill)  # masked content: the hole only (the known part is put back)

    def put_back_known(i: int, latents: torch.Tensor) -> torch.Tensor:
        known = z0 if i == len(timesteps) - 1 else sched.add_noise(z0, noise, torch.tensor([timesteps[i + 1]]))
        return (1 - hole) * known + hole * latents

    full = strength == 1.0
    first = noise * sched.init_noise_sigma if full else sched.add_noise(z0, noise, timesteps[:1].repeat(len(z0)))
    return Start(first, timesteps, hooks=Hooks(after_step=put_back_known))


def inpaint_input(sched, seeds: Seeds, dtype, *, vae, pixels: torch.Tensor, masked: torch.Tensor,
                  mask_lat: torch.Tensor, steps: int, strength: float, fill: str = "original") -> Start:
    """Inpainting with a 9-channel inpainting U-Net: ``pixels`` (1, 3, H, W), ``masked`` the same with the hole
    blanked, ``mask_lat`` (1, 1, h, w) with 1 = repaint. The U-Net sees the mask and the masked image's latents
    beside the latents at every step (``Start.c_concat``, (B, 1 + 4, h, w)); at strength 1 it starts from noise."""
    timesteps = strength_timesteps(sched, steps, strength)
    full, generators = strength == 1.0 and len(timesteps) > 0, seeds.generators
    z0 = None if full else latent_samples(vae, pixels, generators, dtype)  # (B, 4, h, w)
    c, (h, w) = vae.config.latent_channels, mask_lat.shape[-2:]
    noise = seeds.noise((c, h, w), mask_lat.device, dtype)
    hole = mask_lat.to(dtype).expand(len(generators), -1, -1, -1)  # (B, 1, h, w)
    c_concat = torch.cat([hole, latent_samples(vae, masked, generators, dtype)], dim=1)  # (B, 5, h, w)
    if len(timesteps) == 0:  # strength 0: the reconstruction
        return Start(z0, timesteps)
    if not full:
        z0 = hole_latents(z0, hole, noise, fill)  # masked content
    first = noise * sched.init_noise_sigma if full else sched.add_noise(z0, noise, timesteps[:1].repeat(len(z0)))
    return Start(first, timesteps, c_concat=c_concat)


def for_inpaint(inp, *, in_channels: int, vae, f: int, latent_mask: str, steps: int, strength: float,
                fill: str = "original") -> StartFn:
    """The start of an inpainting call on ``inp`` (``images.inpaint_input``: pixels, mask, masked image at the work
    size) for a U-Net of ``in_channels``: latent blending (4) or the inpainting U-Net's inputs (9); ``f``: pixels
    per latent cell; ``fill``: the masked content (``latentgen.canvas.fill``)."""
    mask_lat = to_latent_mask(inp.mask_px, (inp.size[1] // f, inp.size[0] // f), latent_mask)
    pixels = paint_pixels(inp.pixels, inp.mask_px) if fill == "fill" else inp.pixels
    given = dict(vae=vae, pixels=pixels, mask_lat=mask_lat.to(precision.device_of(vae)), steps=steps,
                 strength=strength, fill=fill)
    if in_channels == vae.config.latent_channels:
        return partial(inpaint_blend, **given)
    return partial(inpaint_input, masked=inp.masked, **given)
