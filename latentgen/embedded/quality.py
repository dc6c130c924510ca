"""Prompt adherence of a model on the flat-shapes world, read by ``shapes.read``, and sample grids.

    from latentgen import load
    from latentgen.embedded import quality
    report = quality.adherence(load())        # 42 prompts x 2 seeds, 20 steps, default guidance
    report.summary()                          # {'background': 0.98, 'color': 0.97, 'shape': 0.93, ...}
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
        return {"images": len(self.rows), **{k: round(self.rate(k), 4) for k in ("background", "color", "shape")}}


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
            report.rows.append({"prompt": prompts[i], "seed": seed + i, "want_background": bg,
                                "want_color": color, "want_shape": kind, "background": r.background,
                                "color": r.color, "shape": r.shape})
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


def inpaint_fill(pipe, seeds=range(20), background: str = "green", steps: int = 20) -> dict:
    """Inpainting yardstick: a plain background, a centered square hole of about a third of the
    image, prompted "a red square on a {background} background". Success: the evaluator reads a red
    shape whose centroid is in the hole, and every pixel outside the hole is unchanged."""
    size = pipe.defaults.width
    src = Image.new("RGB", (size, size), shapes.PALETTE[background])
    side = round(size / math.sqrt(3))
    lo = (size - side) // 2
    mask = np.zeros((size, size), np.uint8)
    mask[lo:lo + side, lo:lo + side] = 255
    ok, unchanged = [], []
    for seed in seeds:
        out = pipe.inpaint(f"a red square on a {background} background", src, mask, seed=seed, steps=steps)[0]
        r = shapes.read(out)
        kept = bool(np.array_equal(np.asarray(out)[mask == 0], np.asarray(src)[mask == 0]))
        inside = r.centroid is not None and all(lo <= v < lo + side for v in r.centroid)
        ok.append(r.color == "red" and inside and kept)
        unchanged.append(kept)
    return {"images": len(ok), "success": sum(ok) / len(ok), "outside_unchanged": sum(unchanged) / len(ok),
            "hole_fraction": round(side * side / size**2, 3)}
