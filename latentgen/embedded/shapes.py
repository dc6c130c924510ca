"""The procedural world of flat shapes that the embedded model learns, and the evaluator that reads it.

Each image is one flat shape on a flat background, captioned "a {color} {shape} on a {bg}
background". Everything is a function of a seed, so the data is endless and reproducible:
``sample(seed)`` always draws the same picture.

The evaluator reads an image back with no neural network: background color from the border
pixels, shape color from the dominant non-background pixels, shape from its mask's geometry: the
largest connected part of the mask is compared with an ideal circle, square, triangle and star
drawn in its bounding box, and the best overlap (IoU) wins.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Saturated, well-separated colors; "purple" and "star" are left out of the base vocabulary on
# purpose: the LoRA example teaches them.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 60, 220), "yellow": (240, 220, 30),
    "orange": (245, 140, 20), "white": (245, 245, 245), "black": (15, 15, 15), "purple": (140, 40, 190),
}
COLORS = ("red", "green", "blue", "yellow", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle")
ALL_SHAPES = SHAPES + ("star",)


@dataclass(frozen=True)
class Scene:
    color: str
    shape: str
    background: str
    cx: float  # center, in pixels
    cy: float
    r: float  # half the shape's extent, in pixels

    @property
    def caption(self) -> str:
        return f"a {self.color} {self.shape} on a {self.background} background"


RADIUS = (0.18, 0.34)  # half the shape's extent, as a fraction of the image side


def radius_range(text: str) -> tuple[float, float]:
    """``"0.27-0.34"`` -> (0.27, 0.34): a radius range for ``random_scene``, checked (the shape and a margin of
    0.04 of the side must fit, so high < 0.46)."""
    try:
        low, high = (float(v) for v in text.split("-"))
    except ValueError:
        low = high = float("nan")
    if not 0 < low <= high < 0.46:
        raise ValueError(f"radius={text!r}: give LOW-HIGH fractions of the image side with 0 < LOW <= HIGH < 0.46, "
                         f"such as 0.27-0.34 (the base data's is {RADIUS[0]}-{RADIUS[1]}).")
    return low, high


def random_scene(rng: random.Random, size: int, colors=COLORS, shapes=SHAPES, backgrounds=COLORS,
                 radius: tuple[float, float] = RADIUS) -> Scene:
    """One seeded scene; ``radius`` = (low, high) fractions of the side (the base data's is ``RADIUS``)."""
    color = rng.choice(colors)
    background = rng.choice([b for b in backgrounds if b != color])
    r = rng.uniform(*radius) * size
    margin = r + 0.04 * size
    return Scene(color, rng.choice(shapes), background,
                 rng.uniform(margin, size - margin), rng.uniform(margin, size - margin), r)


def _polygon(scene: Scene) -> list[tuple[float, float]]:
    cx, cy, r = scene.cx, scene.cy, scene.r
    if scene.shape == "triangle":  # upright, fills half of its bounding box
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if scene.shape == "star":  # five points, inner radius 0.4 r
        return [(cx + (r if k % 2 == 0 else 0.4 * r) * math.sin(k * math.pi / 5),
                 cy - (r if k % 2 == 0 else 0.4 * r) * math.cos(k * math.pi / 5)) for k in range(10)]
    raise ValueError(scene.shape)


def draw(scene: Scene, size: int = 64, rgb: tuple[tuple, tuple] | None = None) -> Image.Image:
    """Render a scene as an RGB image of size x size pixels; ``rgb`` = (shape, background) colors
    overrides the palette (the VAE may see any color, the captions name only the palette's)."""
    fill, background = rgb or (PALETTE[scene.color], PALETTE[scene.background])
    im = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(im)
    box = (scene.cx - scene.r, scene.cy - scene.r, scene.cx + scene.r, scene.cy + scene.r)
    if scene.shape == "circle":
        d.ellipse(box, fill=fill)
    elif scene.shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon(_polygon(scene), fill=fill)
    return im


def sample(seed: int, size: int = 64, **vocab) -> tuple[Image.Image, Scene]:
    """The picture and scene for one seed (``vocab``: colors=, shapes=, backgrounds= to narrow or widen)."""
    scene = random_scene(random.Random(seed), size, **vocab)
    return draw(scene, size), scene


# -- the evaluator ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reading:
    background: str
    color: str | None  # None: no shape found
    shape: str | None
    centroid: tuple[float, float] | None  # (x, y) of the shape's mask, in pixels
    area: float  # fraction of the image the shape covers


def _nearest(rgb: np.ndarray, names) -> np.ndarray:
    """Index into ``names`` of the nearest palette color for each row of rgb (N, 3)."""
    ref = np.array([PALETTE[n] for n in names], np.float32)  # (K, 3)
    return np.argmin(((rgb[:, None, :] - ref[None]) ** 2).sum(-1), axis=1)


def _template(kind: str, x0: int, y0: int, x1: int, y1: int, shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of an ideal ``kind`` filling the pixel box x0..x1, y0..y1 (inclusive)."""
    im = Image.new("1", (shape[1], shape[0]), 0)
    d = ImageDraw.Draw(im)
    if kind == "circle":
        d.ellipse((x0, y0, x1, y1), fill=1)
    elif kind == "square":
        d.rectangle((x0, y0, x1, y1), fill=1)
    elif kind == "triangle":
        d.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=1)
    else:  # star: its box is 1.902 r wide, from cy - r to cy + 0.809 r high
        r = (y1 - y0 + 1) / 1.809
        d.polygon(_polygon(Scene("", "star", "", (x0 + x1) / 2, y0 + r, r)), fill=1)
    return np.asarray(im, bool)


def classify_mask(mask: np.ndarray) -> str:
    """circle, square, triangle or star, from a boolean (H, W) mask of one flat shape: the ideal
    shape drawn in the mask's bounding box that overlaps it best (intersection over union)."""
    ys, xs = np.nonzero(mask)
    box = (xs.min(), ys.min(), xs.max(), ys.max())

    def iou(kind):
        t = _template(kind, *box, mask.shape)
        return (t & mask).sum() / max((t | mask).sum(), 1)

    return max(ALL_SHAPES, key=iou)


def _main_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected part of a mask, holes filled: drops specks and stray artifacts."""
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n > 1:
        mask = labels == (np.bincount(labels.ravel())[1:].argmax() + 1)
    return ndimage.binary_fill_holes(mask)


def read(image: Image.Image, colors=tuple(PALETTE)) -> Reading:
    """Read background color, shape color, shape and centroid from an RGB image."""
    a = np.asarray(image.convert("RGB"), np.float32)  # (H, W, 3)
    h, w, _ = a.shape
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])  # (2W + 2H, 3)
    counts = np.bincount(_nearest(border, colors), minlength=len(colors))
    bg = int(counts.argmax())
    labels = _nearest(a.reshape(-1, 3), colors).reshape(h, w)
    fg = labels != bg
    if fg.sum() < 0.01 * h * w:
        return Reading(colors[bg], None, None, None, float(fg.mean()))
    color = int(np.bincount(labels[fg], minlength=len(colors)).argmax())
    mask = _main_blob(labels == color)
    ys, xs = np.nonzero(mask)
    return Reading(colors[bg], colors[color], classify_mask(mask), (float(xs.mean()), float(ys.mean())),
                   float(mask.mean()))


OFF_PALETTE_RGB = 60.0  # a pixel this far (RGB, Euclidean) from every blend of the two colors is off-palette


@dataclass(frozen=True)
class OffPalette:
    fraction: float  # of the image's pixels
    clusters: int  # 8-connected groups of 2+ off-palette pixels: the visible specks
    mask: np.ndarray  # (H, W) bool


def off_palette(image: Image.Image, threshold: float = OFF_PALETTE_RGB, reading: Reading | None = None) -> OffPalette:
    """The pixels of a flat-shape image that are no blend of its background and shape colors.

    Every pixel of a drawn scene is either color or a mix t * shape + (1 - t) * background (soft
    edges); a pixel farther than ``threshold`` from that segment in RGB is a color the scene does not
    have (a rainbow speck). Colors are the palette's, as ``read`` names them (``reading``: reuse one).
    The procedural data scores 0.
    """
    from scipy import ndimage

    r = reading or read(image)
    a = np.asarray(image.convert("RGB"), np.float32)  # (H, W, 3)
    bg = np.array(PALETTE[r.background], np.float32)
    d = (np.array(PALETTE[r.color], np.float32) if r.color else bg) - bg  # (3,) the segment's direction
    t = np.clip((a - bg) @ d / max(float(d @ d), 1e-6), 0.0, 1.0)  # (H, W) nearest blend
    mask = np.linalg.norm(a - bg - t[..., None] * d, axis=-1) > threshold
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    return OffPalette(float(mask.mean()), int((sizes >= 2).sum()), mask)


def write_folder(folder, n: int, seed: int = 0, size: int = 64, **vocab) -> list[Scene]:
    """Write n scenes as a fine-tuning folder: 00000.png + 00000.txt (its caption), ... (kohya's layout)."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        scene = random_scene(rng, size, **vocab)
        draw(scene, size).save(folder / f"{i:05d}.png")
        (folder / f"{i:05d}.txt").write_text(scene.caption + "\n")
        out.append(scene)
    return out
