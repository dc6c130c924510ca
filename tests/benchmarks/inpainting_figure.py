"""The README's inpainting figure: for four colors, the input (hole in gray), latent blending with the base
U-Net (variant="blend") and the shipped 9-channel variant (variant="auto"), same seed.

    python tests/benchmarks/inpainting_figure.py weights/inpainting.png
"""

import random
import sys

import numpy as np
from PIL import Image

import latentgen
from latentgen.embedded import quality, shapes
from latentgen.images import grid


def main(out: str) -> None:
    pipe = latentgen.load()
    tiles, labels = [], []
    for i, (color, kind, bg) in enumerate([("red", "square", "green"), ("blue", "circle", "yellow"),
                                           ("yellow", "triangle", "black"), ("white", "circle", "orange")]):
        x0, y0, x1, y1 = quality.inpaint_hole(random.Random(f"figure:{i}"), 64, on_grid=i % 2 == 0)
        src = Image.new("RGB", (64, 64), shapes.PALETTE[bg])
        mask = np.zeros((64, 64), np.uint8)
        mask[y0:y1, x0:x1] = 255
        shown = np.asarray(src).copy()
        shown[y0:y1, x0:x1] = 128
        prompt = f"a {color} {kind} on a {bg} background"
        tiles += [Image.fromarray(shown)] + [pipe.inpaint(prompt, src, mask, seed=i, variant=v)[0] for v in ("blend", "auto")]
        labels += [f'"{prompt[2:-11]}"', "blend (base U-Net)", "9-channel variant"]
    grid(tiles, 6, labels=labels).save(out)
    print(out)


if __name__ == "__main__":
    main(sys.argv[1])
