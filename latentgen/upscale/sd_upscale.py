"""A1111's "SD upscale" (its img2img script): a picture upscaled by an upscaler, then redrawn by img2img in
overlapping tiles of the drawing size, which are blended back together with linear ramps over the overlap. The
model adds detail at its own scale to a picture larger than it could draw whole, at the cost of one img2img per tile.

The tiles are A1111's (``modules/images.py``: ``split_grid``): as few as cover the picture with at least
``overlap`` pixels shared between neighbours, spread evenly, the last flush with the edge; ``combine_grid`` pastes
each row over the one before with a ramp across the first ``overlap`` pixels, and each tile over the one to its
left the same way. Upscale n of ``num_images`` starts from ``seed + n``; with A1111's batch size b its tile k has
seed start + k // b + k % b (A1111 draws b tiles per call and starts each call one seed after the last call's first:
with b = 1, start + k).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from .. import checks
from ..request import Watch, overall
from . import upscalers


def upscaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """A1111's upscaler size for ``scale``: each side times ``scale``, down to a multiple of 8."""
    return int(size[0] * scale) // 8 * 8, int(size[1] * scale) // 8 * 8


def fitted(picture: tuple[int, int], scale: float, upscaler: str, tile: tuple[int, int], overlap: int,
           max_pixels: int) -> tuple[int, int]:
    """The upscaled picture's size ("None": the picture's own), once the tiles fit it and it fits ``max_pixels``."""
    size = picture if upscaler == "None" else upscaled_size(picture, scale)
    if min(tile) <= overlap or tile[0] > size[0] or tile[1] > size[1]:
        raise ValueError(f"tiles of {tile[0]}x{tile[1]} with overlap={overlap} do not fit the upscaled picture "
                         f"{size[0]}x{size[1]}: give width and height (the tile) larger than the overlap and at most "
                         f"the picture's size.")
    if size[0] * size[1] > max_pixels:
        raise ValueError(f"scale={scale} makes a {size[0]}x{size[1]} picture, more than the {max_pixels} pixels "
                         f"allowed (max_pixels): use a smaller scale or picture.")
    return size


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where A1111's tiles of ``tile`` pixels start along a side of ``length`` (``split_grid``)."""
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1) if count > 1 else 0
    return [min(int(i * step), length - tile) for i in range(count)]


def combine(tiles: list[list[Image.Image]], xs: list[int], ys: list[int], size: tuple[int, int],
            overlap: int) -> Image.Image:
    """Rows of tiles (at ``xs`` across, ``ys`` down) as one picture of ``size``: each tile over the one to its left,
    each row over the one above, through a linear ramp 0 -> 1 across the ``overlap`` pixels (A1111's ``combine_grid``)."""
    ramp = (np.arange(overlap, dtype=np.float32) * 255 / max(overlap, 1)).astype(np.uint8)  # (overlap,)
    out = Image.new("RGB", size)
    for y, row in zip(ys, tiles):
        h = row[0].height
        line = Image.new("RGB", (size[0], h))
        for x, tile in zip(xs, row):
            if x == 0 or not overlap:
                line.paste(tile, (x, 0))
                continue
            line.paste(tile.crop((0, 0, overlap, h)), (x, 0), Image.fromarray(np.tile(ramp, (h, 1)), "L"))
            line.paste(tile.crop((overlap, 0, tile.width, h)), (x + overlap, 0))
        if y == 0 or not overlap:
            out.paste(line, (0, y))
            continue
        out.paste(line.crop((0, 0, size[0], overlap)), (0, y), Image.fromarray(np.tile(ramp[:, None], (1, size[0])), "L"))
        out.paste(line.crop((0, overlap, size[0], h)), (0, y + overlap))
    return out


def sd_upscale(pipe, prompt: str, image, *, scale: float = 2.0, upscaler: str = "Lanczos", overlap: int = 64,
               width: int | None = None, height: int | None = None, strength: float = 0.75, seed: int = 0,
               num_images: int = 1, batch: int = 1, callback=None, max_pixels: int | None = None,
               upscalers_dir=None, **call) -> list[Image.Image]:
    """``num_images`` pictures of ``image`` upscaled ``scale`` times by ``upscaler`` (A1111's names, or a model
    file; "None": not upscaled) and redrawn under ``prompt`` by ``pipe.img2img`` at ``strength`` in tiles of
    ``width`` x ``height`` (the model's size by default) that share ``overlap`` pixels. ``call``: img2img's other
    settings (steps, guidance, negative_prompt, scheduler, ...), the same for every tile. ``batch``: A1111's batch
    size, which only sets the tiles' seeds (module docstring). Everything is checked before the first tile draws;
    a ``latentgen.Stop`` from ``callback`` ends it, the tiles not drawn left as upscaled."""
    from ..images import load_rgb

    if "control" in call or "mask" in call:
        raise ValueError("SD upscale redraws tiles of the whole picture: it takes no control= or mask= (ControlNet "
                         "units and masks are the whole picture's).")
    checks.number("scale", scale, minimum=1, maximum=8, fix="use 1 to 8, such as 2")
    checks.whole("overlap", overlap, 0, "use a whole number of pixels >= 0, such as 64")
    checks.whole("batch", batch, 1, "use A1111's batch size, 1 or more")
    name = upscalers.check(upscaler, "upscaler", upscalers_dir)
    if upscalers.is_latent(name):
        raise ValueError(f"upscaler={upscaler!r} works on latents; SD upscale upscales the picture: use "
                         f"{', '.join(map(repr, upscalers.PIXEL))} or a model file.")
    src = load_rgb(image, "image", max_pixels or pipe.limits.max_input_pixels)[0]
    tile = (width or pipe.defaults.width, height or pipe.defaults.height)
    size = fitted(src.size, scale, name, tile, overlap, max_pixels or pipe.limits.max_input_pixels)
    pipe.settings(width=tile[0], height=tile[1], seed=seed, num_images=num_images, prompt=prompt,
                  **{k: v for k, v in call.items() if k in ("steps", "guidance", "scheduler", "clip_skip")})
    big = src if name == "None" else upscalers.pixels(src, size, name)
    xs, ys = tile_starts(size[0], tile[0], overlap), tile_starts(size[1], tile[1], overlap)
    n_tiles, watch = len(xs) * len(ys), Watch(callback)
    out = []
    for n in range(num_images):
        drawn, first = [], None
        for k in range(n_tiles):  # row by row, as A1111's work list
            x, y = xs[k % len(xs)], ys[k // len(xs)]
            piece = big.crop((x, y, x + tile[0], y + tile[1]))
            if not watch.stopped:
                piece = pipe.img2img(prompt, piece, strength=strength, seed=seed + n + k // batch + k % batch,
                                     callback=overall(watch, n * n_tiles + k, num_images * n_tiles), **call)[0]
                first = piece.info.get("parameters", "") if first is None else first
            drawn.append(piece)
        picture = combine([drawn[r * len(xs):(r + 1) * len(xs)] for r in range(len(ys))], xs, ys, size, overlap)
        picture.info["parameters"] = f"{first}, SD upscale overlap: {overlap}, SD upscale upscaler: " \
                                     f"{upscalers.label(name)}"
        out.append(picture)
        if watch.stopped:
            break
    return out

