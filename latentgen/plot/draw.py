"""The labeled grid of a plot: images in rows and columns, the column labels above, the row labels at the left,
a title on top; PIL's own font, so it needs no font file. A label is a text, or a list of (text, active) lines
(A1111's prompt matrix: the parts a cell leaves out are gray and struck through)."""

from __future__ import annotations

import textwrap

from PIL import Image, ImageDraw, ImageFont

LINE = 14  # pixels per text line
CHAR = 7  # pixels per character, about, of PIL's default font
INACTIVE = (153, 153, 153)  # A1111's color for a prompt matrix's left-out parts


def _lines(label, wrap: int) -> list[tuple[str, bool]]:
    if isinstance(label, str):
        return [(line, True) for line in textwrap.wrap(label, wrap)]
    return [(line, active) for text, active in label for line in textwrap.wrap(text, wrap)]


def _text(d: ImageDraw.ImageDraw, xy: tuple[int, int], line: str, active: bool, font) -> None:
    d.text(xy, line, fill="black" if active else INACTIVE, font=font)
    if not active:  # struck through
        y = xy[1] + LINE // 2 - 1
        d.line((xy[0], y, xy[0] + int(d.textlength(line, font=font)), y), fill=INACTIVE, width=2)


def annotated(images: list[Image.Image], cols: list, rows: list, title: str = "", pad: int = 4) -> Image.Image:
    """``images`` (row by row, ``len(cols)`` per row; sizes may differ: cells take the largest) under ``title``,
    ``cols`` above each column and ``rows`` left of each row; empty labels take no room; ``pad``: pixels between
    the cells (and around them)."""
    font = ImageFont.load_default()
    w, h = max(im.width for im in images), max(im.height for im in images)
    col_lines = [_lines(t, max(8, w // CHAR)) for t in cols]
    row_lines = [_lines(t, 18) for t in rows]
    top = LINE * max([len(t) for t in col_lines] + [0]) + (LINE if title else 0)
    left = CHAR * max([len(line) for t in row_lines for line, _ in t] + [0]) + (4 if any(row_lines) else 0)
    n_cols, n_rows = len(cols), -(-len(images) // len(cols))
    out = Image.new("RGB", (left + n_cols * (w + pad) + pad, top + n_rows * (h + pad) + pad), "white")
    d = ImageDraw.Draw(out)
    if title:
        d.text((left + pad, 0), title, fill="black", font=font)
    for c, lines in enumerate(col_lines):
        for k, (line, active) in enumerate(lines):
            _text(d, (left + pad + c * (w + pad), top - LINE * (len(lines) - k)), line, active, font)
    for r in range(n_rows):
        for k, (line, active) in enumerate(row_lines[r] if r < len(row_lines) else []):
            _text(d, (2, top + pad + r * (h + pad) + LINE * k), line, active, font)
    for i, im in enumerate(images):
        out.paste(im.convert("RGB"), (left + pad + (i % n_cols) * (w + pad), top + pad + (i // n_cols) * (h + pad)))
    return out
