"""Aspect-ratio buckets for LoRA training (kohya's ``--enable_bucket``; NovelAI's aspect ratio bucketing,
https://github.com/NovelAI/novelai-aspect-ratio-bucketing): instead of a center square of every image, each image
is drawn at the bucket size whose aspect ratio is nearest its own, and every batch holds one bucket's images.

Facts from sd-scripts' ``library/model_util.make_bucket_resolutions`` and ``train_util.BucketManager``:
* the buckets of a training resolution ``res``: (res', res') with res' = the largest multiple of ``step`` whose
  square is at most res^2, and for widths w = low, low + step, ..., high: h = min(high, the largest multiple of
  ``step`` with w * h <= res^2), kept when h >= low, with (w, h) and (h, w) both;
* an image goes to the bucket of nearest aspect ratio (w / h), is resized to cover it (the side that is short
  against the bucket fits, rounded) and center-cropped to it;
* with ``--bucket_no_upscale`` there are no predefined buckets: an image is never enlarged, one of more than res^2
  pixels is shrunk to res^2 (aspect kept; the width or the height rounded to ``step``, whichever keeps the aspect
  better), and its bucket is that size rounded down to ``step`` (``no_upscale``).
SDXL's size conditioning then reads the image's original size, the crop's top-left in the resized picture and the
bucket as target (Podell et al. 2023, sec. 2.2, https://arxiv.org/abs/2307.01952).
"""

from __future__ import annotations

import math
import random

from PIL import Image


def resolutions(res: int, low: int, high: int, step: int) -> list[tuple[int, int]]:
    """The buckets (width, height) of training resolution ``res``, sorted."""
    area = res * res
    side = int(area ** 0.5) // step * step
    found = {(side, side)}
    for w in range(low, high + 1, step):
        h = min(high, area // w // step * step)
        if h >= low:
            found |= {(w, h), (h, w)}
    return sorted(found)


def nearest(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the (width, height) ``size``'s (the first of equals)."""
    ratio = size[0] / size[1]
    return min(buckets, key=lambda b: abs(b[0] / b[1] - ratio))


def no_upscale(size: tuple[int, int], area: int, step: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(bucket, resized size) of an image of (width, height) ``size`` under kohya's --bucket_no_upscale."""
    w, h = size
    ratio = w / h

    def rounded(x: float) -> int:
        return int(x + 0.5) // step * step

    if w * h > area:  # shrunk to ``area``, one side rounded to ``step``: the rounding that keeps the aspect better
        rw = math.sqrt(area * ratio)
        by_w, by_h = rounded(rw), rounded(area / rw)
        off_w = abs(by_w / max(step, rounded(by_w / ratio)) - ratio)
        off_h = abs(max(step, rounded(by_h * ratio)) / by_h - ratio)
        w, h = (by_w, int(by_w / ratio + 0.5)) if off_w < off_h else (int(by_h * ratio + 0.5), by_h)
    return (w - w % step, h - h % step), (w, h)


def fit(image: Image.Image, bucket: tuple[int, int], resample=Image.LANCZOS,
        resized: tuple[int, int] | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """(``image`` resized to cover ``bucket`` (w, h), or to ``resized``, and center-cropped to the bucket, the crop's
    (top, left) in the resized picture)."""
    w, h = image.size
    bw, bh = bucket
    scale = bh / h if w / h > bw / bh else bw / w  # wider than the bucket: fit its height, else its width
    rw, rh = resized or (max(bw, int(w * scale + 0.5)), max(bh, int(h * scale + 0.5)))
    top, left = (rh - bh) // 2, (rw - bw) // 2
    image = image if (rw, rh) == (w, h) else image.resize((rw, rh), resample)
    return image.crop((left, top, left + bw, top + bh)), (top, left)


def epoch_batches(bucket_of: list, batch: int, seed: int, epoch: int) -> list[list[int]]:
    """One pass over the data in batches of one bucket each: each bucket's indices shuffled and cut into batches of
    ``batch`` (its last one may be smaller), the batches of all buckets in a shuffled order; a pure function of
    (seed, epoch)."""
    rng = random.Random(f"{seed}:buckets:{epoch}")
    out = []
    for b in sorted(set(bucket_of)):
        members = [i for i, x in enumerate(bucket_of) if x == b]
        rng.shuffle(members)
        out += [members[k:k + batch] for k in range(0, len(members), batch)]
    rng.shuffle(out)
    return out
