"""Outpainting's canvas: the picture extended on any side, the new area masked for inpainting (A1111's "Poor
man's outpainting" script): the mask reaches ``overlap`` pixels into the picture on each extended side, so the
seam is redrawn too; what stands in the new area before the model starts is the masked content
(``latentgen.canvas.fill``: by default "fill", the new area painted from the picture's edge).
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from .. import checks


def extend(image: Image.Image, *, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0,
           overlap: int = 0) -> tuple[Image.Image, Image.Image]:
    """(canvas, mask): ``image`` (RGB) on a canvas larger by the given pixels per side, and the mask (L) of the new
    area, white, grown ``overlap`` pixels into the picture on the extended sides."""
    sides = {"left": left, "right": right, "top": top, "bottom": bottom}
    for name, n in sides.items():
        checks.whole(name, n, 0, "use a whole number of pixels >= 0, such as 64")
    if not any(sides.values()):
        raise ValueError("left, right, top and bottom are all 0: nothing to outpaint; extend at least one side, "
                         "such as right=64.")
    checks.whole("overlap", overlap, 0, "use a whole number of pixels >= 0")
    w, h = image.width + left + right, image.height + top + bottom
    canvas = Image.new("RGB", (w, h))
    canvas.paste(image.convert("RGB"), (left, top))
    mask = Image.new("L", (w, h), 255)
    keep = (left + (overlap if left else 0), top + (overlap if top else 0),
            left + image.width - (overlap if right else 0), top + image.height - (overlap if bottom else 0))
    if keep[2] > keep[0] and keep[3] > keep[1]:
        ImageDraw.Draw(mask).rectangle((keep[0], keep[1], keep[2] - 1, keep[3] - 1), fill=0)
    return canvas, mask
