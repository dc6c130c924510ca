"""A1111's X/Y/Z plot axes (``latentgen.plot.xyz``) by their index on its txt2img and img2img tabs, and their
values: its number syntax (``"1-5"``, ``"10-30 (+10)"``, ``"1-10 [4]"``), and what a text value means: a sampler by
name or A1111 label and its schedule type, a size ``WxH``, a prompt's words in another order."""

from __future__ import annotations

import re

import numpy as np

from .. import schedulers

# A1111 1.10's X/Y/Z axis list (scripts/xyz_grid.py's axis_options); its x_type indices count the axes its tab
# shows: txt2img hides the img2img-only ones, img2img the txt2img-only ones. (1.9 had no Skip Early CFG or Beta
# schedule axes, so from there on it numbers three lower; an axis sent by label works with both.)
A1111_AXES = ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale", "Image CFG Scale",
              "Prompt S/R", "Prompt order", "Sampler", "Hires sampler", "Checkpoint name",
              "Negative Guidance minimum sigma", "Sigma Churn", "Sigma min", "Sigma max", "Sigma noise",
              "Schedule type", "Schedule min sigma", "Schedule max sigma", "Schedule rho", "Skip Early CFG",
              "Beta schedule alpha", "Beta schedule beta", "Eta", "Clip skip", "Denoising", "Initial noise multiplier",
              "Extra noise", "Hires upscaler", "Cond. Image Mask Weight", "VAE", "Styles", "UniPC Order", "Face restore",
              "Token merging ratio", "Token merging ratio high-res", "Always discard next-to-last sigma",
              "SGM noise multiplier", "Refiner checkpoint", "Refiner switch at", "RNG source", "FP8 mode", "Size"]
ONLY = {"txt2img": ("Hires steps", "Hires sampler", "Hires upscaler"),
        "img2img": ("Image CFG Scale", "Cond. Image Mask Weight")}
A1111_TXT2IMG = [a for a in A1111_AXES if a not in ONLY["img2img"]]
A1111_IMG2IMG = [a for a in A1111_AXES if a not in ONLY["txt2img"]]
SCHEDULES = ("Automatic", "Karras")  # A1111's schedule types that latentgen's samplers have (the sampler's own; Karras)

_RANGE = re.compile(r"\s*([+-]?\s*\d+(?:\.\d*)?)\s*-\s*([+-]?\s*\d+(?:\.\d*)?)"
                    r"(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\)|\s*\[(\d+)\s*\])?\s*")


def numbers(label: str, texts: list[str], kind) -> list:
    """Axis ``label``'s values of ``kind`` (int or float) from A1111's texts: numbers and ranges, as they come."""
    out = []
    for t in texts:
        m = _RANGE.fullmatch(t)
        if m:
            start, end = kind(m.group(1).replace(" ", "")), kind(m.group(2).replace(" ", ""))
            if m.group(4):  # 'a-b [n]': n values from a to b
                out += [kind(v) for v in np.linspace(start, end, int(m.group(4)))]
            else:  # 'a-b (+s)': a, a + s, ... up to b
                step = kind(m.group(3)) if m.group(3) else kind(1)
                out += [kind(v) for v in np.arange(start, end + (1 if kind is int else step * 1e-6), step)]
            continue
        try:
            out.append(kind(t))
        except ValueError:
            raise ValueError(f"axis {label!r} value {t!r} is not a {'whole ' if kind is int else ''}number.") from None
    return out


def schedule(name: str) -> str:
    """An A1111 schedule type latentgen's samplers have (``SCHEDULES``), by its name in any case."""
    by_name = {s.lower(): s for s in SCHEDULES}
    if name.lower() not in by_name:
        raise ValueError(f"Schedule type {name!r} is not one latentgen's samplers have: use {' or '.join(SCHEDULES)}.")
    return by_name[name.lower()]


def ordered(prompt: str, words: tuple[str, ...]) -> str:
    """``prompt`` with ``words`` put in its places of them in this order (A1111's Prompt order): "a red cat, dark"
    with ("dark", "red") -> "a dark cat, red"."""
    spots = sorted((prompt.find(w), w) for w in words)  # where each word stands, first to last
    parts, rest = [], prompt
    for _, w in spots:
        n = rest.find(w)
        parts.append(rest[:n])
        rest = rest[n + len(w):]
    return "".join(part + w for part, w in zip(parts, words)) + rest


def scheduled(key: str, schedule: str) -> str:
    """Sampler ``key`` with A1111's schedule type: "Automatic", its own; "Karras", its Karras variant."""
    if not isinstance(key, str):
        raise ValueError(f"Schedule type {schedule}: the cell's sampler is a {type(key).__name__}; give it by name.")
    if schedule == "Automatic" or key.endswith("_karras"):
        return key
    if key + "_karras" not in schedulers.SAMPLERS:
        raise ValueError(f"Schedule type Karras: sampler {schedulers.SAMPLERS[key].label!r} has no Karras schedule here; "
                         f"use one of {', '.join(s.label.removesuffix(' Karras') for k, s in schedulers.SAMPLERS.items() if k.endswith('_karras'))}.")
    return key + "_karras"


def sampler(name: str) -> str:
    """A sampler by latentgen's name or A1111's label."""
    by_label = {s.label.lower(): k for k, s in schedulers.SAMPLERS.items()}
    key = name if name in schedulers.SAMPLERS else by_label.get(name.lower())
    if key is None:
        raise ValueError(f"sampler {name!r} is unknown: use one of {', '.join(s.label for s in schedulers.SAMPLERS.values())}.")
    return key


def size(text: str) -> tuple[int, int]:
    w, _, h = str(text).lower().partition("x")
    if not (w.strip().isdigit() and h.strip().isdigit()):
        raise ValueError(f"Size value {text!r} is not WIDTHxHEIGHT, such as 512x768.")
    return int(w), int(h)


def style_names(value: str) -> list[str]:
    """A Styles axis value's style names: one name, or several separated by commas (A1111's ``x.split(",")``)."""
    return [n.strip() for n in value.split(",") if n.strip()]


def a1111_label(index: int, mode: str = "txt2img") -> str:
    """The label of A1111's axis ``index`` (x_type) on its ``mode`` tab ("txt2img" or "img2img")."""
    shown = A1111_TXT2IMG if mode == "txt2img" else A1111_IMG2IMG
    if not 0 <= index < len(shown):
        raise ValueError(f"axis type {index} is not an A1111 {mode} axis index (0-{len(shown) - 1}).")
    return shown[index]
