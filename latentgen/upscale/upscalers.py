"""Upscalers by A1111's names. Latent ones resize the latents (B, C, h, w) themselves, with
``torch.nn.functional.interpolate`` as A1111 configures it (its ``shared.latent_upscale_modes``); pixel ones
resize the decoded picture (PIL), which is then encoded again.

Model upscalers are super-resolution model files of the ESRGAN family (``latentgen.upscale.esrgan``), named as
A1111 names them, by file stem, from a folder (``$LATENTGEN_UPSCALERS``, or the server's ``--upscalers-dir``), or
given as a path. They run on the picture in tiles (A1111's ESRGAN defaults: 192 pixels, 8 overlapping, blended
here with linear ramps) as many times as the size asks (at most 3, as A1111), then Lanczos gives the exact size.
A1111 hands these models the channels in BGR order (an OpenCV legacy); their authors trained them on RGB, which
is what they get here, as in ComfyUI and chaiNNer.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import esrgan

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
ENV = "LATENTGEN_UPSCALERS"  # a folder of upscaler model files, named by stem
TILE, OVERLAP = 192, 8  # A1111's ESRGAN_tile and ESRGAN_tile_overlap defaults, in input pixels


def model_files(folder: str | Path | None = None) -> dict[str, Path]:
    """{stem: path} of the model files in ``folder`` (default ``$LATENTGEN_UPSCALERS``; none when unset)."""
    folder = folder or os.environ.get(ENV)
    if not folder or not Path(folder).is_dir():
        return {}
    return {p.stem: p for p in sorted(Path(folder).iterdir()) if p.suffix.lower() in esrgan.SUFFIXES}


def check(name: str, field: str = "upscaler", folder: str | Path | None = None) -> str:
    """``name`` when it is a built-in upscaler; the path of the model file it names (a path, or a stem in
    ``folder`` / ``$LATENTGEN_UPSCALERS``); else a ValueError naming ``field`` and the choices."""
    if not isinstance(name, str):
        raise TypeError(f"{field} must be an upscaler's name, got {type(name).__name__}.")
    if name in NAMES:
        return name
    files = model_files(folder)
    path = files.get(name) or Path(name)
    if path.suffix.lower() in esrgan.SUFFIXES and path.is_file():
        return str(path)
    where = f"model files in {folder or os.environ.get(ENV)}: {', '.join(map(repr, files)) or 'none'}" \
        if folder or os.environ.get(ENV) else f"or a model file's path, or set ${ENV} to a folder of them"
    raise ValueError(f"{field}={name!r} is not an upscaler here: use one of {', '.join(map(repr, NAMES))}, {where} "
                     f"(ESRGAN, Real-ESRGAN and Compact .pth/.safetensors files).")


def label(name: str) -> str:
    """A1111's name of an upscaler: a model file's stem."""
    return name if name in NAMES else Path(name).stem


def is_latent(name: str) -> bool:
    return name in LATENT


def latent(z: torch.Tensor, size: tuple[int, int], name: str = "Latent") -> torch.Tensor:
    """Latents (B, C, h, w) -> (B, C, *size), ``size`` = (h', w') latent cells, by the latent upscaler ``name``."""
    mode, antialias = LATENT[check(name)]
    return F.interpolate(z, size=size, mode=mode, **({"antialias": True} if antialias else {}))


def pixels(image: Image.Image, size: tuple[int, int], name: str = "Lanczos", *, tile: int = TILE,
           device=None) -> Image.Image:
    """``image`` resized to ``size`` (w, h) by the pixel upscaler ``name``: a resampler, or a model file run
    ``tile`` pixels at a time (0: whole) on ``device`` (default CPU) until the size is reached, then Lanczos."""
    name = check(name)
    if name in PIXEL:
        return image.resize(size, PIXEL[name])
    check_tile(tile)
    net = model(name)
    for i in range(3):  # as A1111's Upscaler.upscale: at most three passes, one at least when the size stays
        if image.width >= size[0] and image.height >= size[1] and (i > 0 or image.size != tuple(size)):
            break
        before, image = image.size, run(net, image, tile=tile, device=device)
        if image.size == before:  # a 1x (restoration) model
            break
    return image if image.size == tuple(size) else image.resize(size, Image.Resampling.LANCZOS)


def model(path: str | Path) -> torch.nn.Module:
    """The network of a model file, read once per file version (the last four kept)."""
    path = Path(path).resolve()
    return _read(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read(path: Path, mtime: int) -> torch.nn.Module:
    return esrgan.read(path)


def describe(path: str | Path) -> tuple[str, int]:
    """(architecture, scale) of a model file, read once per file version (listings ask again and again)."""
    path = Path(path).resolve()
    return _describe(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _describe(path: Path, mtime: int) -> tuple[str, int]:
    net = _read(path, mtime)
    return net.arch, net.scale


def check_tile(tile: int, field: str = "tile") -> int:
    """``tile`` when it is 0 (the whole picture) or wider than two overlaps, else a ValueError naming ``field``."""
    if isinstance(tile, bool) or not isinstance(tile, int) or (tile != 0 and tile <= 2 * OVERLAP):
        raise ValueError(f"{field}={tile!r} is invalid: use 0 (the whole picture at once) or a tile of more than "
                         f"{2 * OVERLAP} pixels, such as {TILE}.")
    return tile


def _ramp(n: int, ramp: int, device) -> torch.Tensor:
    """(n,) weights rising linearly over ``ramp`` cells at both ends: overlapping tiles blend without seams."""
    i = torch.arange(n, device=device, dtype=torch.float32)
    return torch.minimum(i + 1, n - i).clamp(max=ramp + 1) / (ramp + 1)


def _starts(n: int, tile: int) -> list[int]:
    return [0] if n <= tile else [*range(0, n - tile, tile - OVERLAP), n - tile]


@torch.no_grad()
def run(net: torch.nn.Module, image: Image.Image, *, tile: int = TILE, device=None) -> Image.Image:
    """One pass of a model: (w, h) -> (w * net.scale, h * net.scale), in overlapping tiles of ``tile`` pixels."""
    check_tile(tile)
    device = torch.device(device or "cpu")
    net = net.to(device)
    x = torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 255).permute(2, 0, 1)[None].to(device)
    s, (h, w) = net.scale, x.shape[-2:]
    if tile == 0 or (h <= tile and w <= tile):
        out = net(x)
    else:
        out, weight = x.new_zeros(1, 3, h * s, w * s), x.new_zeros(1, 1, h * s, w * s)
        th, tw = min(tile, h), min(tile, w)
        for top in _starts(h, th):
            for left in _starts(w, tw):
                ramp = _ramp(th * s, OVERLAP * s, device)[:, None] * _ramp(tw * s, OVERLAP * s, device)
                out[..., top * s:(top + th) * s, left * s:(left + tw) * s] += \
                    net(x[..., top:top + th, left:left + tw]) * ramp
                weight[..., top * s:(top + th) * s, left * s:(left + tw) * s] += ramp
        out = out / weight
    out = (out[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)  # (h*s, w*s, 3)
    return Image.fromarray(out.cpu().numpy())
