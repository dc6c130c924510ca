"""The labeled grid of a plot: images in rows and columns, the column labels above, the row labels at the left,
a title on top; PIL's own font, so it needs no font file."""

from __future__ import annotations

import textwrap

from PIL import Image, ImageDraw, ImageFont

LINE = 14  # pixels per text line


def annotated(images: list[Image.Image], cols: list[str], rows: list[str], title: str = "",
              pad: int = 4) -> Image.Image:
    """``images`` (row by row, ``len(cols)`` per row; sizes may differ: cells take the largest) under ``title``,
    ``cols`` above each column and ``rows`` left of each row; empty labels take no room."""
    font = ImageFont.load_default()
    w, h = max(im.width for im in images), max(im.height for im in images)
    wrap = max(8, w // 7)
    col_lines = [textwrap.wrap(t, wrap) for t in cols]
    row_lines = [textwrap.wrap(t, 18) for t in rows]
    top = LINE * max([len(t) for t in col_lines] + [0]) + (LINE if title else 0)
    left = 7 * max([len(line) for t in row_lines for line in t] + [0]) + (pad if any(rows) else 0)
    n_cols, n_rows = len(cols), -(-len(images) // len(cols))
    out = Image.new("RGB", (left + n_cols * (w + pad) + pad, top + n_rows * (h + pad) + pad), "white")
    d = ImageDraw.Draw(out)
    if title:
        d.text((left + pad, 0), title, fill="black", font=font)
    for c, lines in enumerate(col_lines):
        for k, line in enumerate(lines):
            d.text((left + pad + c * (w + pad), top - LINE * (len(lines) - k)), line, fill="black", font=font)
    for r in range(n_rows):
        for k, line in enumerate(row_lines[r] if r < len(row_lines) else []):
            d.text((2, top + pad + r * (h + pad) + LINE * k), line, fill="black", font=font)
    for i, im in enumerate(images):
        out.paste(im.convert("RGB"), (left + pad + (i % n_cols) * (w + pad), top + pad + (i // n_cols) * (h + pad)))
    return out
