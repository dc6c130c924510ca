"""``--outdir``: every image the server makes is also saved there, as A1111 saves its samples:
``OUTDIR/txt2img-images/00012-1234.png`` (a running number, then the seed), PNG with its parameters.
Written atomically (a crash leaves no partial file) and never over an existing file: when a name is
taken, even by another process meanwhile, the next number is used. Names come from numbers and seeds
only, so no request can choose where a file goes."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from latentgen import metadata

_NUMBERED = re.compile(r"^(\d{5,})-")


class Outputs:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.next: dict[str, int] = {}

    def _first_free(self, sub: Path) -> int:
        numbers = [int(m.group(1)) for p in sub.glob("*.png") if (m := _NUMBERED.match(p.name))]
        return max(numbers, default=-1) + 1

    def save(self, images: list[Image.Image], mode: str) -> list[Path]:
        """Save ``images`` (from the worker thread: one writer) under ``<mode>-images/``."""
        sub = self.folder / f"{mode}-images"
        sub.mkdir(exist_ok=True)
        if mode not in self.next:
            self.next[mode] = self._first_free(sub)
        paths = []
        for image in images:
            seed = _seed_of(image.info.get("parameters", ""))
            for _ in range(10_000):
                path = sub / f"{self.next[mode]:05d}-{seed}.png"
                self.next[mode] += 1
                try:
                    paths.append(metadata.save_png(image, path, image.info.get("parameters"), force=False))
                    break
                except FileExistsError:
                    continue
        return paths


def _seed_of(parameters: str) -> str:
    m = re.search(r"Seed: (\d+)", parameters)
    return m.group(1) if m else "x"
