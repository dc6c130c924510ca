"""Inpainting's masked content (A1111's ``inpainting_fill``): what stands in the hole when the model starts
from the image (strength < 1; at strength 1 the hole starts from pure noise whatever the mode, and only "fill",
which changes what the VAE encodes, still shows near the hole's edge on 4-channel U-Nets).

* ``"fill"`` (0): the hole painted from its surroundings before encoding (``paint_hole``);
* ``"original"`` (1, the default): the image as it is;
* ``"latent noise"`` (2): the hole's latents replaced by the image's start noise;
* ``"latent nothing"`` (3): the hole's latents set to zero.

The latent modes act in ``latentgen.starts`` (``hole_latents``); the pixels outside the hole are kept
exactly by the composite whatever the mode.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageFilter

from .. import checks
from ..images import to_tensor

MODES = ("fill", "original", "latent noise", "latent nothing")  # A1111's 0, 1, 2, 3
RADII = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))  # blur radius, layers: coarse to fine (A1111's)


def mode(value) -> str:
    """A masked-content mode by name or by A1111's number (0-3), checked."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(MODES):
        return MODES[value]
    return checks.choice("fill", value, MODES, "use one of those names, or A1111's number 0-3")


def paint_hole(image: Image.Image, hole: np.ndarray) -> Image.Image:
    """``image`` (RGB) with the pixels where ``hole`` (H, W) >= 0.5 painted from the colours around them: the
    known pixels, premultiplied by their alpha, blurred at falling radii and laid over each other coarse to
    fine, so far from the edge the hole takes the mean colour near it and at the edge the nearest colour."""
    known = Image.fromarray(((hole < 0.5) * 255).astype(np.uint8), "L")
    rgba = image.convert("RGB").convert("RGBA")
    rgba.putalpha(known)
    premultiplied = rgba.convert("RGBa")
    out = Image.new("RGBA", image.size)
    for radius, layers in RADII:
        layer = premultiplied.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(layers):
            out.alpha_composite(layer)
    painted = out.convert("RGB")
    return Image.composite(image.convert("RGB"), painted, known)  # the known pixels exactly as they were


def paint_pixels(pixels: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """``paint_hole`` on a model input: pixels (1, 3, H, W) in [-1, 1] (from 8-bit values), hole (1, 1, H, W)."""
    rgb = ((pixels[0].permute(1, 2, 0).float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    return to_tensor(paint_hole(Image.fromarray(rgb), hole[0, 0].cpu().numpy())).to(pixels)


def hole_latents(z0: torch.Tensor, hole: torch.Tensor, noise: torch.Tensor, how: str) -> torch.Tensor:
    """The image's latents z0 (B, C, h, w) with the hole (B, 1, h, w; 1 = repaint) as ``how`` says: "latent noise"
    puts the start noise there, "latent nothing" zeros; other modes leave z0 as it is."""
    if how == "latent noise":
        return z0 * (1 - hole) + noise * hole
    if how == "latent nothing":
        return z0 * (1 - hole)
    return z0
