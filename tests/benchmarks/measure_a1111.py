"""Figures of A1111's everyday workflow on the embedded model (docs/a1111.md), and the hires-fix picture.

    python tests/benchmarks/measure_a1111.py [docs/hires.png]

1. Hires fix: the 42 adherence prompts x 2 seeds drawn at 64 px, then a hires pass to 128 px ("Latent", denoising
   0.55, and "Lanczos"), read by the evaluator (``latentgen.embedded.quality``) after a Lanczos downscale to 64 px;
   against drawing 128 px directly (the model was trained at 64 px), downscaled alike.
2. Masked content: the inpainting hold-out (``quality.inpaint_fill``: 4 colors x 20 seeds) per fill mode, at
   strength 0.8 and 1.0, with the shipped 9-channel variant and with latent blending.
"""

import sys
import time

from PIL import Image

import latentgen
from latentgen.canvas import fill
from latentgen.embedded import quality, shapes
from latentgen.plot.draw import annotated


def read(images, prompts, seed):
    rows = []
    for i, (im, p) in enumerate(zip(images, prompts)):
        r = shapes.read(im.resize((64, 64), Image.Resampling.LANCZOS))
        color, kind, bg = quality.parse(p)
        rows.append({"prompt": p, "seed": seed + i, "want_background": bg, "want_color": color, "want_shape": kind,
                     "background": r.background, "color": r.color, "shape": r.shape, "off_palette": 0, "specks": 0})
    return rows


def hires(pipe, picture: str | None) -> None:
    prompts = quality.adherence_prompts()
    runs = {"64 px (base)": dict(width=64, height=64),
            "hires Latent 0.55 -> 128": dict(width=64, height=64, hires=latentgen.Hires(scale=2, strength=0.55)),
            "hires Lanczos 0.55 -> 128": dict(width=64, height=64,
                                              hires=latentgen.Hires(scale=2, strength=0.55, upscaler="Lanczos")),
            "direct 128 px": dict(width=128, height=128)}
    shown = {}
    for name, kw in runs.items():
        report, t = quality.Report(), time.perf_counter()
        for seed in (0, 1000):
            images = pipe.generate(prompts, seed=seed, **kw)
            report.rows += read(images, prompts, seed)
            shown.setdefault(name, images[:4:1] if seed == 0 else [])
        s = report.summary()
        all_three = sum(r["color"] == r["want_color"] and r["shape"] == r["want_shape"]
                        and r["background"] == r["want_background"] for r in report.rows) / len(report.rows)
        print(f"{name:28s} color {s['color']:.3f}  shape {s['shape']:.3f}  background {s['background']:.3f}  "
              f"all three {all_three:.3f}  ({time.perf_counter() - t:.1f} s for {len(report.rows)} images)")
    if picture:
        cells = [im.resize((128, 128), Image.Resampling.NEAREST) for i in range(4) for im in
                 [shown[n][i] for n in runs]]
        annotated(cells, list(runs), [p[2:-11] for p in prompts[:4]]).save(picture)
        print(picture)


def masked_content(pipe) -> None:
    for variant in ("auto", "blend"):
        for strength in (0.8, 1.0):
            for mode in fill.MODES:
                r = quality.inpaint_fill(pipe, fill=mode, strength=strength, variant=variant)
                print(f"{variant:5s} strength {strength}  {mode:15s} success {r['worst']:.3f} (worst color)  "
                      f"criteria {r['criteria']}  outside unchanged {r['outside_unchanged']:.2f}")


if __name__ == "__main__":
    pipe = latentgen.load()
    print(pipe)
    hires(pipe, sys.argv[1] if len(sys.argv) > 1 else None)
    masked_content(pipe)
