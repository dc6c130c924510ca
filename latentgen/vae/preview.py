"""Live previews: a picture of the latents mid-run, cheaply, as A1111's ``show_progress_type`` draws them.

    def show(done, total, latents):                       # generate(..., callback=show)
        pipe.preview(latents)[0].save(f"step-{done:02d}.png")

Methods (``METHODS``; A1111's names in ``A1111``):

* ``"cheap"`` (A1111's "Approx cheap"): one linear map per latent channel to RGB, (C, h, w) -> (3, h, w),
  nearest-upscaled to the image's size. Costs nothing. For SD 1.x/2.x the coefficients A1111 uses (fitted
  by Keturn on SD 1.4's VAE, https://discuss.huggingface.co/t/decoding-latents-to-rgb-without-upscaling/23204);
  a model whose latent space differs (the embedded one) carries its own, fitted by ``fit`` and stored as
  ``defaults.preview`` in its preset or folder's ``latentgen.json``: C rows then a bias row, each (r, g, b).
* ``"tiny"`` (A1111's "TAESD"): the pipeline's ``preview_vae`` (or its ``vae`` when that is tiny), a
  ``latentgen.load_tiny_vae`` autoencoder: blurry, but the picture's colors and shapes, in a few ms per image.
* ``"full"``: the model's own VAE, as the final image (costs a decode each time).

The latents are the sampler's current x_t (noisy until the last step), scaled as the U-Net sees them.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from . import tiny

METHODS = ("cheap", "tiny", "full")
A1111 = {"Approx cheap": "cheap", "Approx NN": "cheap", "TAESD": "tiny", "Full": "full"}  # show_progress_type
# (4, 3): SD 1.x/2.x latent channel -> RGB in [-1, 1], no bias (A1111's ``sd_vae_approx.cheap_approximation``)
SD_RGB = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))


def rgb_map(preview: list | None, channels: int) -> torch.Tensor:
    """(C + 1, 3): the model's fitted map (``defaults.preview``) or SD's for 4 channels, the last row the bias."""
    if preview is not None:
        m = torch.tensor(preview, dtype=torch.float32)
        if m.shape != (channels + 1, 3):
            raise ValueError(f"defaults.preview must be {channels + 1} rows of 3 numbers (one per latent "
                             f"channel, then the bias); it has shape {tuple(m.shape)}: refit it (vae.preview.fit).")
        return m
    if channels != 4:
        raise ValueError(f"the cheap preview has no map for {channels}-channel latents: give the model a "
                         f"defaults.preview (latentgen.vae.preview.fit), or use method 'tiny' or 'full'.")
    return torch.cat([torch.tensor(SD_RGB), torch.zeros(1, 3)])


def cheap(latents: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, h, w) -> RGB (B, 3, h, w) in about [-1, 1], by the (C + 1, 3) map ``rgb``."""
    rgb = rgb.to(latents.device)
    return torch.einsum("bchw,cr->brhw", latents.float(), rgb[:-1]) + rgb[-1][None, :, None, None]


def to_images(x: torch.Tensor, size: tuple[int, int] | None = None) -> list[Image.Image]:
    """RGB (B, 3, h, w) in [-1, 1] -> B PIL images, nearest-upscaled to ``size`` (width, height) if given."""
    a = ((x.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = [Image.fromarray(np.ascontiguousarray(im)) for im in a]
    return [im.resize(size, Image.Resampling.NEAREST) if size and im.size != size else im for im in out]


def fit(latents: torch.Tensor, images: torch.Tensor) -> list[list[float]]:
    """Least-squares map (C + 1, 3) from latents (N, C, h, w) to their images (N, 3, H, W) in [-1, 1],
    each image averaged over the f x f pixels of a latent cell: what ``defaults.preview`` holds."""
    n, c, h, w = latents.shape
    pooled = torch.nn.functional.adaptive_avg_pool2d(images.float(), (h, w))  # (N, 3, h, w)
    x = torch.cat([latents.float().permute(0, 2, 3, 1).reshape(-1, c), torch.ones(n * h * w, 1)], dim=1)
    y = pooled.permute(0, 2, 3, 1).reshape(-1, 3)
    m = torch.linalg.lstsq(x.double(), y.double()).solution  # (C + 1, 3)
    return [[round(float(v), 5) for v in row] for row in m]


@torch.no_grad()
def fit_vae(vae, images: torch.Tensor) -> list[list[float]]:
    """The map of ``vae``'s latent space: its latents of ``images`` (N, 3, H, W) in [-1, 1] (the posterior
    means, scaled as the U-Net sees them) against its own decodes of them (``pipelines/fit_preview.py``)."""
    sf = vae.config.scaling_factor
    z = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mean * sf  # (N, C, h, w)
    return fit(z, vae.decode(z / sf).sample)


def error(latents: torch.Tensor, images: torch.Tensor, rgb: torch.Tensor) -> float:
    """Mean absolute difference (in [0, 2] units) between the map's picture and the images pooled to it."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(images.float(), latents.shape[-2:])
    return float((cheap(latents, rgb) - pooled).abs().mean())


def method(name: str) -> str:
    """A method name (``METHODS`` or A1111's ``show_progress_type`` value) -> one of ``METHODS``."""
    m = A1111.get(name, name)
    if m not in METHODS:
        raise ValueError(f"preview method {name!r} is unknown; use one of {list(METHODS)} "
                         f"(A1111's names: {list(A1111)}).")
    return m


_named = method  # the function, where ``method`` is a parameter


@torch.no_grad()
def of_pipeline(self, latents: torch.Tensor, method: str = "cheap") -> list[Image.Image]:
    """Latents (B, C, h, w), as a ``callback`` gets them (its ``denoised`` gives the clearest picture mid-run; the
    noisy ``latents`` show what the sampler holds) -> B images of the drawing's size, cheaply
    (``latentgen.vae.preview``): "cheap", a linear map (free); "tiny", ``preview_vae`` (or ``vae`` when it is
    tiny); "full", the VAE. A1111's ``show_progress_type`` names work too ("Approx cheap", "TAESD", "Full")."""
    how, f = _named(method), self.vae_scale_factor
    if how == "cheap":
        rgb = rgb_map(self.defaults.preview, latents.shape[1])
        return to_images(cheap(latents, rgb), (latents.shape[-1] * f, latents.shape[-2] * f))
    vae = self.vae if how == "full" else self.preview_vae
    vae = self.vae if vae is None and tiny.is_loaded(self.vae) else vae
    if vae is None:
        raise ValueError("preview method 'tiny' needs a tiny VAE: pipe.preview_vae = "
                         "latentgen.load_tiny_vae('taesd_decoder.safetensors'); or use 'cheap' or 'full'.")
    return self.decode(latents, vae=vae)
