"""Upscalers by A1111's names. Latent ones resize the latents (B, C, h, w) themselves, with
``torch.nn.functional.interpolate`` as A1111 configures it (its ``shared.latent_upscale_modes``); pixel ones
resize the decoded picture (PIL), which is then encoded again.

Super-resolution model files (ESRGAN and kin) are not among them yet: the architecture library for them,
spandrel, imports torchvision, which a CPU-only torch install here cannot take.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

LATENT = {  # name -> (interpolate mode, antialias)
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
PIXEL = {"None": Image.Resampling.LANCZOS, "Lanczos": Image.Resampling.LANCZOS,
         "Nearest": Image.Resampling.NEAREST}  # "None": A1111's plain resize, Lanczos
NAMES = (*LATENT, *PIXEL)


def check(name: str, field: str = "upscaler") -> str:
    """``name`` when it is an upscaler here, else a ValueError naming ``field`` and the choices."""
    if name not in NAMES:
        raise ValueError(f"{field}={name!r} is not an upscaler here: use one of {', '.join(map(repr, NAMES))} (model "
                         f"files such as ESRGAN are not supported yet).")
    return name


def is_latent(name: str) -> bool:
    return name in LATENT


def latent(z: torch.Tensor, size: tuple[int, int], name: str = "Latent") -> torch.Tensor:
    """Latents (B, C, h, w) -> (B, C, *size), ``size`` = (h', w') latent cells, by the latent upscaler ``name``."""
    mode, antialias = LATENT[check(name)]
    return F.interpolate(z, size=size, mode=mode, **({"antialias": True} if antialias else {}))


def pixels(image: Image.Image, size: tuple[int, int], name: str = "Lanczos") -> Image.Image:
    """``image`` resized to ``size`` (w, h) by the pixel upscaler ``name``."""
    return image.resize(size, PIXEL[check(name)])
