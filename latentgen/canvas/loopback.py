"""A1111's "Loopback" (its img2img script): img2img run ``loops`` times, each loop redrawing the last one's picture,
its denoising strength moving from the call's to ``final_strength`` along a curve. With a mask each loop inpaints;
after the first, the masked content is the last picture ("original"), as A1111 sets it.

Facts from A1111's ``scripts/loopback.py``: loop i of ``loops`` (i >= 1) has strength
s0 + (final - s0) * c(i / (loops - 1)), c(p) = p ("Linear"), sin(p pi / 2) ("Aggressive"), 1 - cos(p pi / 2)
("Lazy"); the seed goes on by one each loop, across the pictures too (picture n, loop i: seed + n * loops + i);
each picture starts from the given one at the call's strength.
"""

from __future__ import annotations

import math

from PIL import Image

from .. import checks
from ..request import Watch, overall, strength as checked_strength

CURVES = {"Linear": lambda p: p, "Aggressive": lambda p: math.sin(p * math.pi * 0.5),
          "Lazy": lambda p: 1 - math.cos(p * math.pi * 0.5)}  # A1111's "Denoising strength curve"


def strengths(loops: int, first: float, final: float, curve: str = "Linear") -> list[float]:
    """Each loop's denoising strength: ``first``, then along ``curve`` to ``final`` at the last loop."""
    checks.whole("loops", loops, 1, "use 1 to 32 loops, such as 4 (A1111's slider)")
    checks.choice("curve", curve, tuple(CURVES), "use 'Linear' (A1111's default), 'Aggressive' or 'Lazy'")
    checked_strength(first)
    checks.number("final_strength", final, minimum=0, maximum=1, fix="use 0 to 1, such as 0.5 (A1111's default)")
    if loops == 1:
        return [first]
    return [first] + [first + (final - first) * CURVES[curve](i / (loops - 1)) for i in range(1, loops)]


def loopback(pipe, prompt, image, mask=None, *, loops: int = 4, final_strength: float = 0.5, curve: str = "Linear",
             strength: float = 0.75, seed: int = 0, num_images: int = 1, callback=None,
             **call) -> list[list[Image.Image]]:
    """For each of ``num_images`` pictures, every loop's picture (``loops`` of them, the last the result): ``image``
    redrawn under ``prompt`` by ``pipe.img2img`` (``pipe.inpaint`` with ``mask``), then that picture redrawn, and so
    on, at the strengths ``strengths`` gives. ``call``: the img2img's (inpaint's) other settings (steps, guidance,
    scheduler, fill, ...), the same each loop. Checked before the first loop draws; a ``latentgen.Stop`` from
    ``callback`` ends it there, that loop's picture (from the step's estimate) the last."""
    plan = strengths(loops, strength, final_strength, curve)
    checks.whole("num_images", num_images, 1, "ask for at least one picture, such as num_images=1")
    pipe.settings(seed=seed, num_images=num_images * loops, prompt=prompt,
                  **{k: v for k, v in call.items() if k in ("steps", "guidance", "scheduler", "clip_skip")})
    watch, out = Watch(callback), []
    for n in range(num_images):
        last, pictures = image, []
        for i, s in enumerate(plan):
            given = dict(call, **({"fill": "original"} if i and mask is not None else {}))
            step = overall(watch, n * loops + i, num_images * loops)
            args = (prompt, last) if mask is None else (prompt, last, mask)
            last = (pipe.img2img if mask is None else pipe.inpaint)(*args, strength=s, seed=seed + n * loops + i,
                                                                    callback=step, **given)[0]
            last.info["parameters"] += f", Final denoising strength: {final_strength}, Denoising curve: {curve}"
            pictures.append(last)
            if watch.stopped:
                return out + [pictures]
        out.append(pictures)
    return out
