"""img2img's resize modes: how an image of another shape is brought to the drawing's width x height
(A1111's ``resize_mode``, its ``images.resize_image``):

* ``"just resize"`` (0): stretched to the size (Lanczos);
* ``"crop and resize"`` (1): scaled to cover the size, keeping its aspect ratio, the overflow cropped evenly;
* ``"resize and fill"`` (2): scaled to fit inside, keeping its aspect ratio, centered, the empty bands filled
  by stretching the image's outer row or column across them;
* ``"latent upscale"`` (3, A1111's "Just resize (latent upscale)"): encoded at its own size, its latents
  resized (bilinear) to the drawing's: ``latentgen.starts.from_image``'s ``latent_size``.
"""

from __future__ import annotations

from PIL import Image

from .. import checks

MODES = ("just resize", "crop and resize", "resize and fill", "latent upscale")  # A1111's 0, 1, 2, 3
LANCZOS = Image.Resampling.LANCZOS


def mode(value) -> str:
    """A resize mode by name or by A1111's number (0-3), checked."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(MODES):
        return MODES[value]
    return checks.choice("resize_mode", value, MODES, "use one of those names, or A1111's number 0-3")


def resize(image: Image.Image, size: tuple[int, int], how: str = "just resize") -> Image.Image:
    """``image`` brought to ``size`` (w, h) by ``how`` (the module docstring); "latent upscale" returns it as is
    (its latents are resized)."""
    w, h = size
    if image.size == size or how == "latent upscale":
        return image
    if how == "just resize":
        return image.resize(size, LANCZOS)
    cover = how == "crop and resize"
    scale = (max if cover else min)(w / image.width, h / image.height)
    sw, sh = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    if cover:  # the side that overflows keeps exactly the target length
        sw, sh = (w, max(h, sh)) if w / h > image.width / image.height else (max(w, sw), h)
    else:
        sw, sh = (min(w, sw), h) if w / h > image.width / image.height else (w, min(h, sh))
    scaled = image.resize((sw, sh), LANCZOS)
    out = Image.new("RGB", size)
    x, y = (w - sw) // 2, (h - sh) // 2
    out.paste(scaled, (x, y))
    if not cover:  # the bands: the outer rows (or columns) stretched over them
        if y > 0:
            out.paste(scaled.crop((0, 0, sw, 1)).resize((w, y)), (0, 0))
            out.paste(scaled.crop((0, sh - 1, sw, sh)).resize((w, h - y - sh)), (0, y + sh))
        if x > 0:
            out.paste(scaled.crop((0, 0, 1, sh)).resize((x, h)), (0, 0))
            out.paste(scaled.crop((sw - 1, 0, sw, sh)).resize((w - x - sw, h)), (x + sw, 0))
    return out
