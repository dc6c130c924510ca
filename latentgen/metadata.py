"""PNG output: A1111's ``parameters`` text chunk, written atomically, never over a file unasked.

The chunk reads as AUTOMATIC1111's web UI writes it, so its "PNG Info" tab and other tools read
latentgen's images::

    a red circle on a blue background
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: sd15
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image, PngImagePlugin

from . import files


def _value(v) -> str:
    s = str(v)
    if len(s) >= 2 and s[0] == s[-1] == '"' and '"' not in s[1:-1]:
        return s  # already quoted (``LoraAdapters.info``): quoting again would read back with its quotes
    # A1111 quotes a value that would break its "key: value, ..." parsing.
    return json.dumps(s) if any(ch in s for ch in ',:"\n') else s


def text_fields(clip_skip: int, syntax: str, embeddings: dict[str, str]) -> dict:
    """The text-conditioning settings of a call as A1111 writes them: ``Clip skip`` only when not 1,
    ``TI hashes: "name: <sha256[:12]>, ..."`` for the textual-inversion embeddings used (A1111 drops
    ``:`` and ``,`` from the names), and latentgen's ``Prompt syntax: plain`` when A1111's is off."""
    names = {n.replace(":", "").replace(",", ""): h for n, h in embeddings.items()}
    return {"Clip skip": clip_skip if clip_skip != 1 else None,
            "Prompt syntax": syntax if syntax != "a1111" else None,
            "TI hashes": ", ".join(f"{n}: {h}" for n, h in names.items()) or None}


def variation_fields(subseed: int | None, variation) -> dict:
    """A1111's "Variation seed", "Variation seed strength" (when the strength is not 0) and "Seed resize from"."""
    if variation is None:
        return {}
    resize = variation.resize_from
    return {"Variation seed": subseed if variation.strength else None,
            "Variation seed strength": variation.strength or None,
            "Seed resize from": f"{resize[0]}x{resize[1]}" if resize else None}


# The fields A1111's ``create_infotext`` writes first, in its order; the rest (its ``extra_generation_params``: the
# hires fix's, the mask's, ControlNet units, the refiner, Lora hashes, ...) follow in the order they were added.
FIRST = ("Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration", "Size",
         "Model hash", "Model", "VAE hash", "VAE", "Variation seed", "Variation seed strength", "Seed resize from",
         "Denoising strength", "Conditional mask weight", "Clip skip", "ENSD", "Token merging ratio", "RNG", "Tiling")


def parameters_text(prompt: str, settings: dict, negative_prompt: str | None = None) -> str:
    """A1111's parameters text: prompt, optional negative prompt, then ``Key: value, ...`` in A1111's order
    (``FIRST``, then the others as given); fields whose value is None are left out."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    ordered = {**{k: settings[k] for k in FIRST if k in settings}, **settings}  # a key keeps its first place
    lines.append(", ".join(f"{k}: {_value(v)}" for k, v in ordered.items() if v is not None))
    return "\n".join(lines)


def output_paths(out: str | Path, count: int) -> list[Path]:
    """``out.png`` for one image; ``out-0.png``, ``out-1.png``, ... for several."""
    out = Path(out)
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix or '.png'}") for i in range(count)]


def check_writable(paths: list[Path], force: bool) -> None:
    """Fail before any work if an output exists (without force) or its folder is missing."""
    for p in paths:
        files.output_target(p)  # a device, FIFO, socket or folder there: refused, even with force
        if p.exists() and not force:
            raise FileExistsError(f"{p} exists; pass --force to overwrite it, or choose another -o path.")
        if not p.parent.is_dir():
            raise FileNotFoundError(f"folder {p.parent} for output {p.name} does not exist; create it first.")


def save_png(image: Image.Image, path: str | Path, parameters: str | None, *, force: bool = False) -> Path:
    """Write ``image`` with its parameters chunk atomically: a crash leaves no partial file.

    Without ``force`` an existing file is never replaced, even one created while we worked.
    """
    path = Path(path)
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    try:
        with files.atomic_path(path, overwrite=force) as tmp, open(tmp, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
            f.flush()
            os.fsync(f.fileno())
    except FileExistsError:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it.") from None
    return path


def read_parameters(path: str | Path) -> str | None:
    """The ``parameters`` chunk of a PNG, or None if it has none."""
    with open(path, "rb") as f:  # Pillow's PNG reader alone: the chunks before the pixels, no size check, no decode
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            try:
                with Image.open(path) as im:  # another format: what its header holds
                    return im.info.get("parameters")
            except Image.DecompressionBombError as e:
                raise OSError(str(e)) from None
        f.seek(0)
        with PngImagePlugin.PngImageFile(f) as im:
            return im.info.get("parameters")
