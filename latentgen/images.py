"""Image inputs of img2img and inpainting, and the pixel-space steps around the latent loop.

Inputs: PIL images of any mode (RGB, RGBA, L, LA, P, 1, I;16, I, CMYK, ...), numpy arrays ((H, W), (H, W, 1),
(H, W, 3) or (H, W, 4); uint8 0-255, uint16 0-65535, bool, or float 0-1) and paths to image files (their size
checked from the header before decoding). 16-bit data is scaled to 8 bits (x / 257), never clipped. Images with
transparency are flattened onto white (A1111's default img2img background), not reduced to the RGB hidden under
their transparent pixels (often black).

Masks: white (>= 0.5 after conversion to gray) means repaint, black means keep, as in diffusers and A1111. A mask
with transparency (an alpha channel not fully opaque) is its alpha channel, as A1111's ``create_binary_mask``
reads it: opaque strokes of any color repaint, transparent keeps; a fully opaque one is read by its gray. Without
a mask, an image's alpha channel is the mask: its transparent pixels are repainted (image editors' erasers).

Sizes: the VAE works on multiples of its scale factor f (8 for SD). Any other size is resized down to the nearest
multiple of f for the model (as diffusers does) and the result is resized back, so the output keeps the input's.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, UnidentifiedImageError

from . import checks

LANCZOS = Image.Resampling.LANCZOS
MAX_INPUT_PIXELS = 2048 * 2048  # width * height of an img2img/inpaint input (``memory.Limits.max_input_pixels``)


def _u16_to_u8(a: np.ndarray) -> np.ndarray:  # 65535 -> 255
    return ((np.clip(a, 0, 65535).astype(np.uint32) + 128) // 257).astype(np.uint8)


def _from_array(a: np.ndarray, name: str) -> Image.Image:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or 0 in a.shape:
        raise ValueError(f"{name}: a numpy array of shape {a.shape} is not an image; "
                         f"use shape (H, W), (H, W, 3) or (H, W, 4).")
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = _u16_to_u8(a)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or a.min() < -1e-3 or a.max() > 1 + 1e-3:
            raise ValueError(f"{name}: float arrays must hold values in [0, 1] (got "
                             f"{np.nanmin(a):.3g}..{np.nanmax(a):.3g}); scale the array to [0, 1] first.")
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError(f"{name}: numpy arrays of dtype {a.dtype} are not supported; "
                         f"use uint8 (0-255), uint16 (0-65535), bool, or float in [0, 1].")
    return Image.fromarray(np.ascontiguousarray(a))


def open_image(x, name: str, max_pixels: int = MAX_INPUT_PIXELS) -> Image.Image:
    """A PIL image from a PIL image, a numpy array or a file path (checked, not yet converted). A file's size
    is read from its header and checked against ``max_pixels`` before any pixel is decoded: a small file that
    claims to be huge (a decompression bomb) is refused at once."""
    if isinstance(x, Image.Image):
        return x
    if isinstance(x, np.ndarray):
        return _from_array(x, name)
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: no file at {str(path)!r}; pass the path of an existing image file.")
        try:
            with warnings.catch_warnings():  # Pillow's bomb warning: refused below, by name
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(path)
            with im:
                w, h = im.size  # from the header; each side as the model would work at it (64 covers every f)
                if max(64, w // 64 * 64) * max(64, h // 64 * 64) > max_pixels:
                    raise ValueError(f"{name} is {w}x{h} ({w * h / 1e6:.1f} MP), above max_pixels={max_pixels} "
                                     f"(a memory bound), read from its header before decoding: downscale the "
                                     f"image, or raise the bound with max_pixels.")
                im.load()
                return im.copy()
        except Image.DecompressionBombError as e:  # a header past Pillow's own bound (~179 MP)
            raise ValueError(f"{name}: {str(path)!r} claims a size far above max_pixels={max_pixels} ({e}); "
                             f"latentgen decodes no such image: pass a smaller one.") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise ValueError(f"{name}: {str(path)!r} is not an image Pillow can read ({e}); "
                             f"pass a PNG, JPEG or WebP file.") from None
    raise TypeError(f"{name} must be a PIL image, a numpy array or a path to an image file, "
                    f"got {type(x).__name__}.")


def _eight_bit(im: Image.Image) -> Image.Image:
    """16/32-bit integer modes (I;16, I) -> L by scaling, where Pillow's convert would clip."""
    if im.mode.startswith("I;16") or im.mode == "I":
        return Image.fromarray(_u16_to_u8(np.asarray(im)))
    return im


def _has_alpha(im: Image.Image) -> bool:
    return "A" in im.getbands() or (im.mode in ("P", "L", "RGB") and "transparency" in im.info)


def load_rgb(x, name: str = "image", max_pixels: int = MAX_INPUT_PIXELS) -> tuple[Image.Image, np.ndarray | None]:
    """-> (RGB image, alpha (H, W) uint8 or None when the image has no transparency). Transparent
    pixels are composited onto white (A1111's ``flatten``), opaque ones kept as they are."""
    im = _eight_bit(open_image(x, name, max_pixels))
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB"), np.asarray(rgba)[..., 3].copy()
    return im.convert("RGB"), None


def load_mask(x, name: str = "mask", max_pixels: int = MAX_INPUT_PIXELS) -> np.ndarray:
    """-> mask (H, W) float32 in [0, 1], 1 = repaint: the alpha channel of a mask with transparency
    (opaque repaints, as A1111), else the gray (white repaints)."""
    im = _eight_bit(open_image(x, name, max_pixels))
    if _has_alpha(im):
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
        if alpha.min() < 255:
            return alpha.astype(np.float32) / 255.0
    return np.asarray(im.convert("L"), np.float32) / 255.0


def work_size(size: tuple[int, int], f: int, max_pixels: int, name: str = "image") -> tuple[int, int]:
    """The size the model works at: each side rounded down to a multiple of f (at least f)."""
    w, h = max(f, size[0] // f * f), max(f, size[1] // f * f)
    if w * h > max_pixels:
        raise ValueError(f"{name} is {size[0]}x{size[1]}, {w * h / 1e6:.1f} MP for the model, above "
                         f"max_pixels={max_pixels} ({max_pixels / 1e6:.1f} MP, a memory bound): downscale "
                         f"the image, or raise the bound with max_pixels={w * h}.")
    return w, h


def to_tensor(im: Image.Image) -> torch.Tensor:
    """RGB image -> (1, 3, H, W) float32 in [-1, 1], as diffusers' VaeImageProcessor does."""
    a = np.asarray(im, np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1)[None] * 2.0 - 1.0


def mask_tensor(mask: np.ndarray) -> torch.Tensor:
    """Mask (H, W) in [0, 1] -> binarized (1, 1, H, W): 1 repaint, 0 keep (diffusers' threshold 0.5)."""
    return torch.from_numpy((mask >= 0.5).astype(np.float32))[None, None]


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (mask.shape[1], mask.shape[0]) == tuple(size):
        return mask
    im = Image.fromarray(mask.astype(np.float32)).resize(size, Image.Resampling.BILINEAR)  # mode F
    return np.asarray(im, np.float32)


def crop_box(hole: np.ndarray, padding: int, aspect: float) -> tuple[int, int, int, int]:
    """A1111's "inpaint only masked" region: the mask's bounding box plus ``padding`` pixels,
    grown to the model's aspect ratio (width / height) and kept inside the image. (x0, y0, x1, y1)."""
    H, W = hole.shape
    ys, xs = np.nonzero(hole)
    x0, x1 = max(0, xs.min() - padding), min(W, xs.max() + 1 + padding)
    y0, y1 = max(0, ys.min() - padding), min(H, ys.max() + 1 + padding)

    def grow(lo, hi, want, limit):
        extra = min(want, limit) - (hi - lo)
        if extra <= 0:
            return lo, hi
        lo, hi = lo - extra // 2, hi + extra - extra // 2
        if lo < 0:
            lo, hi = 0, hi - lo
        if hi > limit:
            lo, hi = max(0, lo - (hi - limit)), limit
        return lo, hi

    if (x1 - x0) / (y1 - y0) < aspect:
        x0, x1 = grow(x0, x1, round((y1 - y0) * aspect), W)
    else:
        y0, y1 = grow(y0, y1, round((x1 - x0) / aspect), H)
    return int(x0), int(y0), int(x1), int(y1)


def composite(original: Image.Image, generated: Image.Image, mask: np.ndarray, blur: float) -> Image.Image:
    """Paste ``generated`` over ``original`` through the mask, feathered by a Gaussian blur of
    radius ``blur`` inward only: pixels outside the mask (< 0.5) stay the original's, bit for bit."""
    hole = mask >= 0.5
    alpha = hole.astype(np.float32)
    if blur > 0:
        soft = Image.fromarray((alpha * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(blur))
        alpha = np.asarray(soft, np.float32) / 255.0 * hole  # feather inside the mask only
    a = alpha[..., None]
    o, g = np.asarray(original, np.float32), np.asarray(generated, np.float32)
    out = np.where(a > 0, (o * (1 - a) + g * a).round(), o).astype(np.uint8)
    image = Image.fromarray(out)
    image.info.update(generated.info)
    return image


@dataclass
class InpaintInput:
    """An inpainting call's image and mask, prepared for the model."""

    source: Image.Image  # the input, RGB, full size
    mask: np.ndarray  # (H, W) in [0, 1] at full size; >= 0.5 repaints
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) the model works on: the whole image unless only_masked
    size: tuple[int, int]  # (w, h) the model works at, multiples of the VAE factor
    pixels: torch.Tensor  # (1, 3, h, w) the box at that size, in [-1, 1]
    mask_px: torch.Tensor  # (1, 1, h, w) binarized mask at that size, 1 = repaint

    @property
    def empty(self) -> bool:
        return not (self.mask >= 0.5).any()

    @property
    def masked(self) -> torch.Tensor:
        """The pixels with the hole blanked (0 = mid-gray): (1, 3, h, w)."""
        return self.pixels * (self.mask_px < 0.5)


def inpaint_input(image, mask, *, only_masked: bool, padding: int, native: tuple[int, int], f: int,
                  max_pixels: int) -> InpaintInput:
    """Load, check and size an inpainting image and mask (None: the image's alpha, transparent = repaint).

    ``native``: the model's default (w, h); with ``only_masked`` the mask's box plus ``padding``
    pixels, grown to that aspect ratio, is worked on at that size."""
    src, alpha = load_rgb(image, "image", max_pixels)
    if mask is None:
        if alpha is None:
            raise ValueError("mask is missing and the image has no alpha channel: pass mask=... "
                             "(white repaints, black keeps), or an image whose transparent pixels "
                             "mark what to repaint.")
        m = 1.0 - alpha.astype(np.float32) / 255.0
    else:
        m = load_mask(mask, "mask", max_pixels)
        if (m.shape[1], m.shape[0]) != src.size:
            raise ValueError(f"mask is {m.shape[1]}x{m.shape[0]} but image is {src.width}x{src.height}: "
                             f"pass a mask of the image's size, e.g. mask.resize(image.size).")
    checks.whole("padding", padding, 0, "use a whole number of pixels >= 0, such as 32")
    hole, box = m >= 0.5, (0, 0, *src.size)
    if only_masked and hole.any():
        box = crop_box(hole, int(padding), native[0] / native[1])
        size = work_size(native, f, max_pixels)
    else:
        size = work_size(src.size, f, max_pixels)
    region = src.crop(box)
    pixels = to_tensor(region if region.size == size else region.resize(size, LANCZOS))
    mask_px = mask_tensor(resize_mask(m[box[1]:box[3], box[0]:box[2]], size))
    return InpaintInput(src, m, box, size, pixels, mask_px)


def paste_back(out: list[Image.Image], inp: InpaintInput, mask_blur: float, composite_: bool) -> list[Image.Image]:
    """The model's images (of ``inp.size``) back at the box's size and place in the input, and
    composited over it through the mask (feathered inward by ``mask_blur``) unless ``composite_`` is False."""
    results = []
    x0, y0, x1, y1 = inp.box
    for o in out:
        crop = o if o.size == (x1 - x0, y1 - y0) else resized(o, (x1 - x0, y1 - y0))
        full = inp.source.copy()
        full.paste(crop, (x0, y0))
        full.info.update(o.info)
        results.append(composite(inp.source, full, inp.mask, mask_blur) if composite_ else full)
    return results


def resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` resized (Lanczos) to ``size``, keeping its info (PNG parameters)."""
    out = image.resize(size, LANCZOS)
    out.info.update(image.info)
    return out


def grid(images: list[Image.Image], cols: int, labels: list[str] | None = None, scale: int = 2,
         pad: int = 2) -> Image.Image:
    """Tile images in rows of ``cols``, upscaled ``scale`` x, optional captions: each in a cell of the largest
    width and height (top left), so images of several sizes tile too."""
    if not images:
        raise ValueError("images is empty: give at least one image to tile.")
    if cols < 1:
        raise ValueError(f"cols={cols} is invalid: use a whole number >= 1.")
    w, h = max(im.width for im in images) * scale, max(im.height for im in images) * scale
    label_h = 12 * (max(len(_wrap(t)) for t in labels) if labels else 0)
    rows = -(-len(images) // cols)
    out = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + label_h + pad) + pad), "white")
    d = ImageDraw.Draw(out)
    for i, im in enumerate(images):
        x, y = pad + (i % cols) * (w + pad), pad + (i // cols) * (h + label_h + pad)
        out.paste(im.convert("RGB").resize((im.width * scale, im.height * scale), Image.NEAREST), (x, y))
        if labels:
            for k, line in enumerate(_wrap(labels[i])):
                d.text((x + 1, y + h + 12 * k), line, fill="black")
    return out


def _wrap(text: str, width: int = 22) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])
