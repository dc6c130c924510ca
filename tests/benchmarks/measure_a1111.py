"""Figures of A1111's everyday workflow on the embedded model (docs/a1111.md), and the hires-fix picture.

    python tests/benchmarks/measure_a1111.py [docs/hires.png] [--hires-only]
    python tests/benchmarks/measure_a1111.py --tiling [docs/tiling.png]

1. Hires fix: the 42 adherence prompts x 2 seeds drawn at 64 px, then a hires pass to 128 px ("Latent", denoising
   0.3, 0.45, 0.55, and "Lanczos" 0.55), read by the evaluator (``latentgen.embedded.quality``) after a Lanczos
   downscale to 64 px, and counted for "one shape" (one region of the asked color of >= 2% of the image: the
   evaluator reads the largest); against drawing 128 px directly (the model was trained at 64 px), downscaled alike.
2. Masked content: the inpainting hold-out (``quality.inpaint_fill``: 4 colors x 20 seeds) per fill mode, at
   strength 0.8 and 1.0, with the shipped 9-channel variant and with latent blending.
3. Tiling: the 42 prompts x 2 seeds with and without ``tiling=True``: the step across the picture's wrap-around
   edges (its last column to its first, its last row to its first) over the median step between neighbouring
   columns and rows inside it (1: the edges join as the inside does), the colors read, and the seconds per image.
"""

import sys
import time

import numpy as np
from PIL import Image
from scipy import ndimage

import latentgen
from latentgen.canvas import fill
from latentgen.embedded import quality, shapes
from latentgen.plot.draw import annotated


def blobs(image: Image.Image, color: str) -> int:
    """Connected regions of ``color`` (nearest palette color) covering at least 2% of the image each."""
    a = np.asarray(image, np.float32)
    ref = np.array([shapes.PALETTE[n] for n in shapes.PALETTE], np.float32)
    nearest = np.argmin(((a[:, :, None] - ref) ** 2).sum(-1), axis=-1)
    labels, n = ndimage.label(nearest == list(shapes.PALETTE).index(color), np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())[1:]
    return int((sizes >= 0.02 * nearest.size).sum())


def read(images, prompts, seed):
    rows = []
    for i, (im, p) in enumerate(zip(images, prompts)):
        small = im.resize((64, 64), Image.Resampling.LANCZOS)
        r = shapes.read(small)
        color, kind, bg = quality.parse(p)
        rows.append({"prompt": p, "seed": seed + i, "want_background": bg, "want_color": color, "want_shape": kind,
                     "background": r.background, "color": r.color, "shape": r.shape, "off_palette": 0, "specks": 0,
                     "one": blobs(small, color) == 1})
    return rows


def hires(pipe, picture: str | None) -> None:
    prompts = quality.adherence_prompts()
    runs = {"64 px (base)": dict(width=64, height=64),
            "hires Latent 0.3 -> 128": dict(width=64, height=64, hires=latentgen.Hires(scale=2, strength=0.3)),
            "hires Latent 0.45 -> 128": dict(width=64, height=64, hires=latentgen.Hires(scale=2, strength=0.45)),
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
        one = sum(r["one"] for r in report.rows) / len(report.rows)
        print(f"{name:28s} color {s['color']:.3f}  shape {s['shape']:.3f}  background {s['background']:.3f}  "
              f"all three {all_three:.3f}  one shape {one:.3f}  ({time.perf_counter() - t:.1f} s, "
              f"{len(report.rows)} images)")
    if picture:
        names = ["64 px (base)", "hires Latent 0.3 -> 128", "hires Latent 0.55 -> 128", "hires Lanczos 0.55 -> 128",
                 "direct 128 px"]
        cells = [shown[n][i].resize((128, 128), Image.Resampling.NEAREST) for i in range(4) for n in names]
        annotated(cells, names, [p[2:-11] for p in prompts[:4]]).save(picture)
        print(picture)


def seam(image: Image.Image, period: int) -> float:
    """The mean step across the wrap-around edges (last column to first, last row to first) over the mean step
    across the lines inside the picture that sit where they do on the U-Net's grid (every ``period`` pixels)."""
    a = np.asarray(image, np.float32)
    wrap = (np.abs(a[:, 0] - a[:, -1]).mean() + np.abs(a[0] - a[-1]).mean()) / 2
    inside = np.mean([np.abs(a[:, i] - a[:, i - 1]).mean() for i in range(period, a.shape[1], period)]
                     + [np.abs(a[i] - a[i - 1]).mean() for i in range(period, a.shape[0], period)])
    return float(wrap / max(inside, 1e-3))


def tiling(pipe, picture: str | None) -> None:
    prompts, shown = quality.adherence_prompts(), {}
    period = 2 ** (len(pipe.unet.config.block_out_channels) - 1) * pipe.vae_scale_factor
    for on in (False, True):
        pipe.generate(prompts[0], tiling=on)  # its conversion, outside the timing
        seams, reads, t = [], [], time.perf_counter()
        for seed in (0, 1000):
            images = pipe.generate(prompts, seed=seed, tiling=on)
            seams += [seam(im, period) for im in images]
            for im, p in zip(images, prompts):  # read as it is, or rolled by half (a shape over the edges in one piece)
                r = [shapes.read(Image.fromarray(np.roll(np.asarray(im), (k, k), (0, 1)))) for k in (0, im.width // 2)]
                want = quality.parse(p)
                reads.append(any((x.color, x.background) == (want[0], want[2]) for x in r))
            shown.setdefault(on, images[:4])
        print(f"tiling={on!s:5s}  wrap-around step / inside step: median {np.median(seams):.2f}, 90th percentile "
              f"{np.percentile(seams, 90):.2f}  color and background read {np.mean(reads):.3f}  "
              f"({(time.perf_counter() - t) / len(seams) * 1000:.0f} ms per image, {len(seams)} images)")
    if picture:
        def repeated(im):  # 2 x 2 copies, side by side as a tiled floor would lay them
            out = Image.new("RGB", (2 * im.width, 2 * im.height))
            for x in (0, im.width):
                for y in (0, im.height):
                    out.paste(im, (x, y))
            return out.resize((256, 256), Image.Resampling.NEAREST)
        cells = [repeated(shown[on][i]) for i in range(4) for on in (False, True)]
        annotated(cells, ["2 x 2 copies, plain", "2 x 2 copies, tiling=True"], [p[2:-11] for p in prompts[:4]]
                  ).save(picture)
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
    if "--tiling" in sys.argv:
        tiling(pipe, next((a for a in sys.argv[1:] if not a.startswith("--")), None))
        sys.exit()
    hires(pipe, sys.argv[1] if len(sys.argv) > 1 else None)
    if "--hires-only" not in sys.argv:
        masked_content(pipe)
