"""Prompt adherence of a model on the flat-shapes world, read by ``shapes.read``, and sample grids.

    from latentgen import load
    from latentgen.embedded import quality
    report = quality.adherence(load())        # 42 prompts x 2 seeds, 20 steps, default guidance
    report.summary()   # {'background': 1.0, 'color': 1.0, 'shape': 1.0, 'off_palette': 0.0004, 'speckled': 0.05, ...}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from . import shapes


def adherence_prompts(colors=shapes.COLORS, kinds=shapes.SHAPES, backgrounds: int = 2,
                      background_colors=shapes.COLORS) -> list[str]:
    """Every color x shape, each on ``backgrounds`` different backgrounds (42 prompts by default).

    Backgrounds rotate through the other colors so that every background appears as often as possible.
    """
    out = []
    for i, color in enumerate(colors):
        others = [b for b in background_colors if b != color]
        backgrounds = min(backgrounds, len(others))
        for j, kind in enumerate(kinds):
            for k in range(backgrounds):
                bg = others[(j + k * (len(others) // backgrounds) + i) % len(others)]
                out.append(f"a {color} {kind} on a {bg} background")
    return out


def parse(prompt: str) -> tuple[str, str, str]:
    """(color, shape, background) of a prompt of the form 'a {color} {shape} on a {bg} background'."""
    words = prompt.split()
    if len(words) != 7 or words[0] != "a" or words[3:5] != ["on", "a"] or words[6] != "background":
        raise ValueError(f"prompt {prompt!r} is not of the form 'a {{color}} {{shape}} on a {{bg}} background'.")
    return words[1], words[2], words[5]


@dataclass
class Report:
    rows: list[dict] = field(default_factory=list)  # prompt, seed, wanted and read values

    def rate(self, key: str) -> float:
        return sum(r[key] == r["want_" + key] for r in self.rows) / max(len(self.rows), 1)

    def summary(self) -> dict:
        """Rates of the wanted background, color and shape; ``off_palette``: the mean fraction of pixels
        that are no blend of the image's two colors; ``speckled``: the fraction of images with a speck
        (2+ such pixels together). See ``shapes.off_palette``."""
        n = max(len(self.rows), 1)
        return {"images": len(self.rows), **{k: round(self.rate(k), 4) for k in ("background", "color", "shape")},
                "off_palette": round(sum(r["off_palette"] for r in self.rows) / n, 6),
                "speckled": round(sum(r["specks"] > 0 for r in self.rows) / n, 4)}


def adherence(pipe, prompts: list[str] | None = None, seeds=(0, 1000), steps: int = 20,
              guidance: float | None = None, **kwargs) -> Report:
    """Generate each prompt with each seed and read the images back with the evaluator.

    Prompts go in one call per seed (image i of a call uses seed + i), so image seeds are
    seed + prompt index; ``kwargs`` pass on to ``Pipeline.generate`` (scheduler, ...).
    """
    prompts = prompts or adherence_prompts()
    wanted = [parse(p) for p in prompts]
    report = Report()
    for seed in seeds:
        images = pipe.generate(prompts, seed=seed, steps=steps, guidance=guidance, **kwargs)
        for i, (image, (color, kind, bg)) in enumerate(zip(images, wanted)):
            r = shapes.read(image)
            off = shapes.off_palette(image, reading=r)
            report.rows.append({"prompt": prompts[i], "seed": seed + i, "want_background": bg,
                                "want_color": color, "want_shape": kind, "background": r.background,
                                "color": r.color, "shape": r.shape, "off_palette": off.fraction,
                                "specks": off.clusters})
    return report


def img2img_recolor(pipe, seeds=range(20), strength: float = 0.6, steps: int = 20) -> dict:
    """img2img yardstick: the dataset's red circle on blue, prompted "a yellow circle on a blue
    background" at ``strength``. Success: read as a yellow circle whose centroid moved <= 4 px."""
    scene = shapes.Scene("red", "circle", "blue", 30.0, 34.0, 14.0)
    src = shapes.draw(scene, pipe.defaults.width)
    x0, y0 = shapes.read(src).centroid
    ok = []
    for seed in seeds:
        r = shapes.read(pipe.img2img("a yellow circle on a blue background", src, strength=strength,
                                     seed=seed, steps=steps)[0])
        ok.append(r.color == "yellow" and r.shape == "circle" and r.centroid is not None
                  and math.dist(r.centroid, (x0, y0)) <= 4)
    return {"images": len(ok), "success": sum(ok) / len(ok)}


def inpaint_hole(rng, size: int, on_grid: bool, low: float = 0.15, high: float = 0.45) -> tuple[int, int, int, int]:
    """A rectangular hole (x0, y0, x1, y1), exclusive ends, covering low..high of the image, aspect 3:4..4:3;
    ``on_grid``: its edges on the 8-pixel latent grid."""
    while True:
        area, aspect = rng.uniform(low, high) * size * size, rng.uniform(0.75, 4 / 3)
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if on_grid:
            w, h = 8 * max(1, round(w / 8)), 8 * max(1, round(h / 8))
        if w < size and h < size and low <= w * h / size**2 <= high:
            x0, y0 = rng.randrange(size - w + 1), rng.randrange(size - h + 1)
            if on_grid:
                x0, y0 = 8 * (x0 // 8), 8 * (y0 // 8)
            return x0, y0, x0 + w, y0 + h


CLEAN_RGB = shapes.OFF_PALETTE_RGB  # a hole pixel this close to the asked color is clean shape color
SEAM_RGB = 24.0  # the hole's background (its median) must be this close to the surroundings
EDGE_PX = 2  # the shape's soft edge: hole pixels this near the shape are neither shape nor background


def inpaint_cases(colors, seeds, size: int):
    """The inpainting yardstick's cases, (color, seed, shape, background, hole): shapes and backgrounds
    rotate with the seed, even seeds put the hole on the 8-pixel grid, odd seeds off it."""
    import random

    for color in colors:
        for seed in seeds:
            rng = random.Random(f"inpaint:{color}:{seed}")
            kind = shapes.SHAPES[seed % len(shapes.SHAPES)]
            bg = [b for b in shapes.COLORS if b != color][seed % (len(shapes.COLORS) - 1)]
            yield color, seed, kind, bg, inpaint_hole(rng, size, on_grid=seed % 2 == 0)


def clean_fraction(hole: np.ndarray, color: str) -> float:
    """The fraction of a hole's pixels (h, w, 3) within ``CLEAN_RGB`` of ``color``: clean shape color."""
    return float((np.linalg.norm(hole - np.float32(shapes.PALETTE[color]), axis=-1) <= CLEAN_RGB).mean())


def hole_background(hole: np.ndarray, shape_rgb, background_rgb) -> np.ndarray:
    """The background pixels (N, 3) of a hole (h, w, 3): those nearer the background color than the shape's,
    at least ``EDGE_PX`` + 1 pixels from any pixel nearer the shape's (the blend of a soft edge is no
    background). Empty when the shape and its edge fill the hole."""
    from scipy import ndimage

    to_shape, to_bg = (np.linalg.norm(hole - np.float32(c), axis=-1) for c in (shape_rgb, background_rgb))
    near = ndimage.binary_dilation(to_shape <= to_bg, np.ones((3, 3), bool), iterations=EDGE_PX)  # square reach
    return hole[~near]


def inpaint_fill(pipe, colors=("red", "blue", "yellow", "white"), seeds=range(20), steps: int = 20,
                 **kwargs) -> dict:
    """Inpainting yardstick: a plain background with a rectangular hole of 15-45% of the image (even seeds
    on the 8-pixel grid, odd seeds off it), prompted "a {color} {shape} on a {background} background"
    (shapes and backgrounds rotate with the seed). Success: the evaluator reads the asked color and
    shape, centered in the hole; at least 35% of the hole's pixels are clean shape color (within
    ``CLEAN_RGB``); the median of the hole's background pixels (``hole_background``: nearer the background
    color than the shape's, off the shape's soft edge) is within ``SEAM_RGB`` of the surroundings (no
    seam); every pixel outside the hole is unchanged. ``kwargs`` pass on to ``Pipeline.inpaint``."""
    size = pipe.defaults.width
    ok, unchanged, fractions, parts = {c: [] for c in colors}, [], [], {"shape": [], "filled": [], "no_seam": []}
    for color, seed, kind, bg, (x0, y0, x1, y1) in inpaint_cases(colors, seeds, size):
        src = Image.new("RGB", (size, size), shapes.PALETTE[bg])
        mask = np.zeros((size, size), np.uint8)
        mask[y0:y1, x0:x1] = 255
        out = pipe.inpaint(f"a {color} {kind} on a {bg} background", src, mask, seed=seed, steps=steps, **kwargs)[0]
        kept = bool(np.array_equal(np.asarray(out)[mask == 0], np.asarray(src)[mask == 0]))
        hole = np.asarray(out, np.float32)[y0:y1, x0:x1]  # (h, w, 3)
        back = hole_background(hole, shapes.PALETTE[color], shapes.PALETTE[bg])
        seam = len(back) > 0 and np.linalg.norm(np.median(back, 0) - np.float32(shapes.PALETTE[bg])) > SEAM_RGB
        r = shapes.read(out)
        inside = r.centroid is not None and x0 <= r.centroid[0] < x1 and y0 <= r.centroid[1] < y1
        checks = {"shape": (r.color, r.shape) == (color, kind) and inside,
                  "filled": clean_fraction(hole, color) >= 0.35, "no_seam": not seam}
        for k, v in checks.items():
            parts[k].append(v)
        ok[color].append(all(checks.values()) and kept)
        unchanged.append(kept)
        fractions.append((x1 - x0) * (y1 - y0) / size**2)
    rates = {c: sum(v) / len(v) for c, v in ok.items()}
    return {"images": len(unchanged), "success": {c: round(v, 4) for c, v in rates.items()},
            "worst": round(min(rates.values()), 4), "outside_unchanged": sum(unchanged) / len(unchanged),
            "criteria": {k: round(sum(v) / len(v), 4) for k, v in parts.items()},
            "hole_fraction": [round(min(fractions), 3), round(max(fractions), 3)]}


def through(vae, images):
    """Images through a VAE in one batch, encoded and decoded (the posterior mean): the (N, 3, H, W) inputs and
    outputs, fp32 in [-1, 1] on the CPU."""
    import torch

    from .autoencoder import to_pixels

    x = to_pixels(images)
    with torch.no_grad():
        y = vae.decode(vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mean).sample
    return x, y.float().clamp(-1, 1).cpu()


def inpaint_ceiling(vae, colors=("red", "blue", "yellow", "white"), seeds=range(20), size: int = 64) -> dict:
    """The most ``inpaint_fill`` can give through this VAE: in each of its holes the largest shape of the
    asked kind (as ``shapes.draw`` draws it) centered, encoded and decoded (the posterior mean). Returns
    per shape the fraction of cases whose hole is >= 35% clean shape color, drawn (``drawn``) and after the
    round trip (``decoded``), and per color the success rate of a model perfect in everything else."""
    from .autoencoder import from_pixels

    cases = list(inpaint_cases(colors, seeds, size))
    images = []
    for color, _, kind, bg, (x0, y0, x1, y1) in cases:
        r = min(min(x1 - x0, y1 - y0) / 2 - 0.5, 0.34 * size)  # the data's largest radius is 0.34 of the side
        images.append(shapes.draw(shapes.Scene(color, kind, bg, (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2, r), size))
    decoded = from_pixels(through(vae, images)[1])  # (N, H, W, 3) in 0..255
    filled = {c: [] for c in colors}
    per_shape = {k: {"drawn": [], "decoded": []} for k in shapes.SHAPES}
    for (color, _, kind, _, (x0, y0, x1, y1)), image, out in zip(cases, images, decoded):
        for name, a in (("drawn", np.asarray(image, np.float32)), ("decoded", out)):
            per_shape[kind][name].append(clean_fraction(a[y0:y1, x0:x1], color) >= 0.35)
        filled[color].append(per_shape[kind]["decoded"][-1])
    return {"shapes": {k: {n: round(sum(v) / len(v), 4) for n, v in d.items()} for k, d in per_shape.items()},
            "success": {c: round(sum(v) / len(v), 4) for c, v in filled.items()}}


def round_trip(vae, n: int = 200, size: int = 64, kinds=shapes.ALL_SHAPES) -> dict:
    """A VAE alone, before any U-Net is trained on it: ``n`` drawn scenes per shape kind (seeded, the star
    included), encoded and decoded (the posterior mean). Per kind: the reconstruction MSE (in [-1, 1]), the
    fraction read back as that kind, the mean off-palette fraction and the fraction of speckled images
    (``shapes.off_palette``; a U-Net's samples carry the same specks when the VAE's round trip has them)."""
    import random

    from .autoencoder import from_pixels

    out = {}
    for kind in kinds:
        scenes = [shapes.random_scene(random.Random(f"round-trip:{kind}:{i}"), size, shapes=(kind,)) for i in range(n)]
        x, y = through(vae, [shapes.draw(s, size) for s in scenes])
        images = [Image.fromarray(a) for a in from_pixels(y).astype(np.uint8)]
        offs = [shapes.off_palette(im) for im in images]
        out[kind] = {"mse": round(float(((y - x) ** 2).mean()), 5),
                     "read": round(sum(shapes.read(im).shape == kind for im in images) / n, 4),
                     "off_palette": round(sum(o.fraction for o in offs) / n, 6),
                     "speckled": round(sum(o.clusters > 0 for o in offs) / n, 4)}
    return out


def shape_mask(image, shape_color: str, background: str) -> np.ndarray:
    """(H, W) bool: the pixels nearer to ``shape_color``'s palette RGB than to ``background``'s."""
    a = np.asarray(image.convert("RGB"), np.float32)
    near = [np.linalg.norm(a - np.array(shapes.PALETTE[c], np.float32), axis=2) for c in (shape_color, background)]
    return near[0] < near[1]


def control_fit(pipe, model, seeds=range(40), preprocessor: str | None = None, steps: int = 20) -> dict:
    """ControlNet yardstick: per seed a hold-out layout (a scene from ``random.Random(f"control:{seed}")``: a base
    color, shape and background, at a position and size its caption does not say), its caption as the prompt and,
    as the control, its Canny edge map (``preprocessor=None``) or the filled picture through ``preprocessor``
    ("canny"). Success: read as the asked color and shape, and its shape's pixels overlap the layout's with
    IoU >= 0.7. ``model=None`` draws without control (the baseline)."""
    import random

    from ..control import preprocess
    from ..control.units import Control

    size, rows = pipe.defaults.width, []
    for seed in seeds:
        scene = shapes.random_scene(random.Random(f"control:{seed}"), size)
        picture = shapes.draw(scene, size)
        image = picture if preprocessor else preprocess.run("canny", picture)
        control = None if model is None else Control(image, model, preprocessor=preprocessor, resize_mode="just resize")
        out = pipe.generate(scene.caption, seed=seed, steps=steps, control=control)[0]
        r = shapes.read(out)
        want, got = shape_mask(picture, scene.color, scene.background), shape_mask(out, scene.color, scene.background)
        iou = float((want & got).sum() / max((want | got).sum(), 1))
        rows.append({"color": r.color == scene.color, "shape": r.shape == scene.shape, "iou": iou})
    n = len(rows)
    return {"images": n, "color": sum(r["color"] for r in rows) / n, "shape": sum(r["shape"] for r in rows) / n,
            "iou_0.7": sum(r["iou"] >= 0.7 for r in rows) / n, "mean_iou": round(sum(r["iou"] for r in rows) / n, 4),
            "success": sum(r["color"] and r["shape"] and r["iou"] >= 0.7 for r in rows) / n}
