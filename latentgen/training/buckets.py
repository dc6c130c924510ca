"""Aspect-ratio buckets for LoRA training (kohya's ``--enable_bucket``; NovelAI's aspect ratio bucketing,
https://github.com/NovelAI/novelai-aspect-ratio-bucketing): instead of a center square of every image, each image
is drawn at the bucket size whose aspect ratio is nearest its own, and every batch holds one bucket's images.

Facts from sd-scripts' ``library/model_util.make_bucket_resolutions`` and ``train_util.BucketManager``:
* the buckets of a training resolution ``res``: (res', res') with res' = the largest multiple of ``step`` whose
  square is at most res^2, and for widths w = low, low + step, ..., high: h = min(high, the largest multiple of
  ``step`` with w * h <= res^2), kept when h >= low, with (w, h) and (h, w) both;
* an image goes to the bucket of nearest aspect ratio (w / h), is resized to cover it (the side that is short
  against the bucket fits, rounded) and center-cropped to it.
SDXL's size conditioning then reads the image's original size, the crop's top-left in the resized picture and the
bucket as target (Podell et al. 2023, sec. 2.2, https://arxiv.org/abs/2307.01952).
"""

from __future__ import annotations

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


def fit(image: Image.Image, bucket: tuple[int, int], resample=Image.LANCZOS) -> tuple[Image.Image, tuple[int, int]]:
    """(``image`` resized to cover ``bucket`` (w, h) and center-cropped to it, the crop's (top, left) in the
    resized picture)."""
    w, h = image.size
    bw, bh = bucket
    scale = bh / h if w / h > bw / bh else bw / w  # wider than the bucket: fit its height, else its width
    rw, rh = max(bw, int(w * scale + 0.5)), max(bh, int(h * scale + 0.5))
    top, left = (rh - bh) // 2, (rw - bw) // 2
    return image.resize((rw, rh), resample).crop((left, top, left + bw, top + bh)), (top, left)


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
