"""A1111's X/Y/Z plot: the same call drawn over up to three axes of settings, as a labeled grid: txt2img, or img2img
and inpainting when the call gives ``image`` (and ``mask``), as on A1111's img2img tab.

An axis is a setting and its values (``Axis("Steps", [10, 20])``, or parsed from A1111's text: ``"10-30 (+10)"``,
``"1-10 [4]"``, comma-separated values with CSV quoting). The settings, by A1111's labels: Seed, Var. seed,
Var. strength, Steps, Hires steps, CFG Scale, Prompt S/R (the first value is searched in the prompt and the
negative prompt, refused when in neither, and each value put in its place), Prompt order (words of the prompt,
plotted in every order of them), Styles (style names applied after the call's styles, from ``styles=``), Sampler,
Schedule type (Automatic or Karras, on each cell's sampler), VAE (VAE files the cells decode with; "Automatic": the
model's own), Hires sampler, Checkpoint name (each cell drawn by that
model: a loaded pipeline, or a name loaded when its cells draw, one model at a time), Refiner switch at (of the
call's ``refiner``), Clip skip, Denoising (the hires pass's; img2img's and inpainting's own strength on a call with
``image``), Hires upscaler (the Hires axes are txt2img's); and
latentgen's own: Size (``WxH``) and LoRA weight (the weight of every ``<lora:...>`` tag in the prompt). Cell
(x, y, z) is one call with the axes' values over the call's own settings; every cell keeps the call's seed (A1111's
fixed seed) unless the Seed axis varies it. ``plot`` returns the grid (one sub-grid per z value, side by side,
under its title), the cells (each with its PNG parameters) and their labels. With A1111's prompt styles (``style``),
each cell's prompts are styled after its axes, as A1111 does: Prompt S/R searches the prompts as written.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image

from .. import checks
from ..starts import Variation
from ..text import styles as text_styles
from ..upscale import upscalers
from ..upscale.hires import Hires
from ..upscale.hires import check as check_hires
from .cells import OWN_VAE, draw, vae_built
from .draw import annotated
from .values import ONLY, a1111_label, numbers, ordered, sampler, schedule, scheduled, size, style_names

INT_AXES = {"Seed", "Var. seed", "Steps", "Hires steps", "Clip skip"}
FLOAT_AXES = {"Var. strength", "CFG Scale", "Denoising", "LoRA weight", "Refiner switch at"}
TEXT_AXES = {"Nothing", "Prompt S/R", "Prompt order", "Sampler", "Schedule type", "Hires sampler", "Hires upscaler",
             "Size", "Checkpoint name", "Styles", "VAE"}
SETTINGS = ("steps", "guidance", "width", "height", "scheduler", "clip_skip", "variation", "seed", "prompt")  # checked
_TAG_WEIGHT = re.compile(r"<lora:([^:>]+)(?::[^>]*)?>")


@dataclass(frozen=True)
class Axis:
    """One axis: a setting by A1111's label (or latentgen's "Size", "LoRA weight") and its values."""

    label: str
    values: tuple


@dataclass
class Plot:
    grid: Image.Image  # the labeled grid (sub-grids per z value side by side)
    cells: list[Image.Image]  # x fastest, then y, then z; each with its parameters
    labels: list[tuple[str, str, str]]  # (x, y, z) label per cell


def axis(label, text: str = "", mode: str = "txt2img") -> Axis:
    """An ``Axis`` from A1111's label (or its index in ``mode``'s list, ``values.a1111_label``) and values text."""
    if isinstance(label, int) and not isinstance(label, bool):
        label = a1111_label(label, mode)
    if label not in INT_AXES | FLOAT_AXES | TEXT_AXES:
        known = sorted(INT_AXES | FLOAT_AXES | TEXT_AXES)
        raise ValueError(f"axis {label!r} is not one latentgen plots: use one of {', '.join(map(repr, known))}.")
    if label == "Nothing":
        return Axis(label, ("",))
    values = [v.strip() for row in csv.reader(io.StringIO(text), skipinitialspace=True) for v in row if v.strip()]
    if label in INT_AXES | FLOAT_AXES:
        values = numbers(label, values, int if label in INT_AXES else float)
    if not values:
        raise ValueError(f"axis {label!r} has no values: give some, such as '10, 20, 30' or '10-30 (+10)'.")
    if label == "Schedule type":
        values = [schedule(v) for v in values]
    if label == "Prompt order":  # the values are words of the prompt; the axis is every order of them (A1111's)
        return Axis(label, tuple(itertools.permutations(values)))
    return Axis(label, tuple(values))


def from_a1111(args: list, upscalers_dir=None, mode: str = "txt2img") -> list[Axis]:
    """The axes of A1111's X/Y/Z plot ``script_args`` (x_type, x_values, x_values_dropdown, y_..., z_..., ...) on
    its ``mode`` tab; "Hires upscaler" values that name model files become their paths (by stem in ``upscalers_dir``)."""
    args = list(args) + [0, "", None] * 3
    axes = [axis(args[i], _values_text(args[i + 1], args[i + 2]), mode) for i in (0, 3, 6)]
    for a in axes if mode == "img2img" else ():
        if a.label in ONLY["txt2img"]:
            raise ValueError(f"axis {a.label!r} is a txt2img axis: img2img has no hires pass.")
    axes = [replace(a, values=tuple(upscalers.check(v, "Hires upscaler", upscalers_dir) for v in a.values))
            if a.label == "Hires upscaler" else a for a in axes]
    return [a for a in axes if a.label != "Nothing"] or [Axis("Nothing", ("",))]


def _values_text(text, dropdown) -> str:
    if dropdown:  # A1111's dropdown values (a list) stand for the text when given
        return ",".join(f'"{v}"' for v in dropdown)
    return str(text or "")


def apply(label: str, value, call: dict, base_prompt: str, first) -> dict:
    """``call`` (keyword arguments of ``Pipeline.generate``, or of ``img2img`` / ``inpaint`` with ``image``) with the
    axis ``label`` set to ``value``."""
    call = dict(call)
    hires, variation = call.get("hires"), call.get("variation") or Variation()
    if label == "Seed":
        call["seed"] = value
    elif label in ("Var. seed", "Var. strength"):
        field = "seed" if label == "Var. seed" else "strength"
        call["variation"] = replace(variation, **{field: value})
    elif label == "Steps":
        call["steps"] = value
    elif label == "CFG Scale":
        call["guidance"] = value
    elif label == "Clip skip":
        call["clip_skip"] = value
    elif label == "Prompt S/R":  # in both prompts, as A1111's
        call["prompt"] = call["prompt"].replace(first, value)
        if call.get("negative_prompt"):
            call["negative_prompt"] = call["negative_prompt"].replace(first, value)
    elif label == "Prompt order":
        call["prompt"] = ordered(call["prompt"], value)
    elif label == "Sampler":
        call["scheduler"] = sampler(value)
    elif label == "Schedule type":
        call["schedule"] = value  # put on the cell's sampler once all axes are applied (``scheduled``)
    elif label == "Size":
        if "mask" in call:
            raise ValueError("Size: inpainting draws at the picture's own size; plot Size with img2img or txt2img.")
        call["width"], call["height"] = size(value)
    elif label == "Denoising" and "image" in call:  # img2img's and inpainting's own strength (A1111's)
        call["strength"] = checks.number("Denoising", value, minimum=0, maximum=1, fix="use 0 to 1, such as 0.6")
    elif label == "Styles":  # style names, applied after the call's own (A1111's p.styles.extend)
        call["styles"] = style_names(value)
    elif label == "Checkpoint name":
        call["model"] = value  # a loaded pipeline, or a name ``draw`` opens
    elif label == "Refiner switch at":  # the call's refiner hands over there (A1111's refiner_switch_at)
        if call.get("refiner") is None:
            raise ValueError("Refiner switch at: the call has no refiner; give refiner=latentgen.Refiner(model), "
                             "A1111's refiner_checkpoint.")
        checks.number("Refiner switch at", value, minimum=0, maximum=1, fix="use fractions from 0 to 1, such as 0.8")
        call["refiner"] = replace(call["refiner"], switch_at=value)
    elif label == "VAE":
        call["vae"] = value  # a VAE file, swapped in while the cell draws (``draw``)
    elif label == "LoRA weight":
        call["prompt"] = _TAG_WEIGHT.sub(lambda m: f"<lora:{m.group(1)}:{value:g}>", call["prompt"])
    elif label != "Nothing":  # the hires pass's settings (txt2img's)
        if "image" in call:
            raise ValueError(f"{label}: img2img has no hires pass (A1111 plots it on txt2img only).")
        field = {"Hires steps": "steps", "Hires sampler": "scheduler", "Denoising": "strength",
                 "Hires upscaler": "upscaler"}[label]
        value = sampler(value) if field == "scheduler" else upscalers.check(value) if field == "upscaler" else value
        call["hires"] = replace(hires or Hires(), **{field: value})
    return call


def label_of(a: Axis, value) -> str:
    if a.label == "Hires upscaler":
        return upscalers.label(str(value))  # a model file by its stem
    if a.label in ("Checkpoint name", "VAE"):  # a name without its folder, as A1111's
        return Path(value).name if isinstance(value, str) else value.name
    if a.label == "Prompt order":
        return ", ".join(value)
    return "" if a.label == "Nothing" else str(value) if a.label in TEXT_AXES else f"{a.label}: {value}"


def check_replacements(axes: list[Axis], prompt: str, negative_prompt: str | None) -> None:
    """A Prompt S/R axis's first value is in the prompt or the negative prompt (A1111 refuses it otherwise); a Prompt
    order axis's words are all in the prompt."""
    for a in axes:
        missing = [w for w in a.values[0] if w not in prompt] if a.label == "Prompt order" else []
        if missing:
            raise ValueError(f"Prompt order: {missing[0]!r} is not in the prompt: its values are words of the prompt, "
                             f"each plotted in every order, such as 'red, cat' for 'a red cat'.")
        if a.label == "Prompt S/R" and a.values[0] not in prompt and a.values[0] not in (negative_prompt or ""):
            raise ValueError(f"Prompt S/R did not find {a.values[0]!r} in the prompt or the negative prompt: its first "
                             f"value is the text each value replaces, such as 'red' in 'a red cat' for 'red, blue'.")


def plot(pipe, prompt: str, axes: list[Axis], style=None, models=None, styles=None, vaes=None, **call) -> Plot:
    """Draw ``prompt`` over ``axes`` (x, y, z; up to three) with ``call`` (``Pipeline.generate``'s keyword
    arguments, or with ``image`` ``img2img``'s, and with ``mask`` too ``inpaint``'s) under them: every cell is checked
    before the first is drawn. ``style``: a function (prompt, negative
    prompt) -> both styled, applied to each cell's prompts after its axes (A1111's styles). ``models``: name -> a
    context manager giving the loaded pipeline, for "Checkpoint name" values given by name (``opened``).
    ``styles``: the table a Styles axis names (``latentgen.text.styles.read("styles.csv")``); ``vaes``: (pipeline,
    name) -> the VAE for a VAE axis that names files otherwise than by path (the server's ``--vae-dir``)."""
    if not 1 <= len(axes) <= 3:
        raise ValueError(f"{len(axes)} axes: give one to three (x, y, z).")
    check_replacements(axes, prompt, call.get("negative_prompt"))
    xs, ys, zs = (list(axes) + [Axis("Nothing", ("",))] * 2)[:3]
    cells = [(x, y, z) for z in zs.values for y in ys.values for x in xs.values]
    calls, vae_of = [], vae_built(vaes)
    for vals in cells:
        c = {"prompt": prompt, **call}
        for a, v in zip((xs, ys, zs), vals):
            c = apply(a.label, v, c, prompt, a.values[0])
        if style is not None:
            c["prompt"], negative = style(c["prompt"], c.get("negative_prompt"))
            c["negative_prompt"] = negative or None
        if "styles" in c:  # a Styles axis: its styles after the call's
            c["prompt"], negative = text_styles.apply(c["prompt"], c.get("negative_prompt"), c.pop("styles"),
                                                      styles or {}, "the Styles axis (plot's styles= table)")
            c["negative_prompt"] = negative or None
        calls.append(c)
    for c in calls:  # every cell's settings checked before any model runs (on the model when loaded already)
        m = pipe if c.get("model") is None or isinstance(c["model"], str) else c["model"]
        if "schedule" in c:
            c["scheduler"] = scheduled(c.get("scheduler") or m.defaults.scheduler, c.pop("schedule"))
        m.settings(**{k: c[k] for k in SETTINGS if k in c})
        if c.get("hires") is not None:
            check_hires(c["hires"], m.vae_scale_factor)
        if c.get("vae") not in (None, *OWN_VAE):  # a path checked, read and fitted before the first cell draws
            if vaes is None and not Path(c["vae"]).is_file():
                raise FileNotFoundError(f"VAE axis value {c['vae']!r} is not a file: give VAE files (.safetensors, "
                                        f".pt, .ckpt), or 'Automatic' for the model's own.")
            if not isinstance(c.get("model"), str):  # a model given by name is loaded when its cells draw
                vae_of(m, c["vae"])
    images = draw(pipe, calls, models, vae_of)
    labels = [tuple(label_of(a, v) for a, v in zip((xs, ys, zs), vals)) for vals in cells]
    n = len(xs.values) * len(ys.values)
    grids = [annotated(images[i:i + n], [label_of(xs, v) for v in xs.values], [label_of(ys, v) for v in ys.values],
                       label_of(zs, zs.values[k])) for k, i in enumerate(range(0, len(images), n))]
    return Plot(annotated(grids, [""] * len(grids), [""], "") if len(grids) > 1 else grids[0], images, labels)
