"""A call's ControlNet units, as ``Pipeline.generate``, ``img2img`` and ``inpaint`` take them (``control=``).

``Control(image, model, weight=1.0, start=0.0, end=1.0, mode="balanced", resize_mode="crop and resize")``:

* ``image``: the control map (an edge map, a depth map, a pose drawing: white on black as the ControlNet was
  trained), a PIL image, numpy array or path; brought to the drawing's size by ``resize_mode`` (img2img's modes:
  ``latentgen.canvas.resize``; A1111's default is "crop and resize", diffusers' is "just resize").
* ``model``: a diffusers ``ControlNetModel``, its folder (``ControlNetModel.from_pretrained``, offline), a single
  file as lllyasviel and A1111 share them (``control_v11p_sd15_canny.pth``, ``control_sd15_canny.safetensors``:
  ``latentgen.control.ldm_file``), or the name of one shipped in ``weights/controlnets`` (``"edges"``, for the
  embedded model).
* ``weight`` scales its residuals; ``start`` / ``end``: the fractions of the steps where it acts (diffusers'
  ``control_guidance_start/end``, A1111's ``guidance_start/end``): step i of n acts when
  ``start <= i / n`` and ``(i + 1) / n <= end``.
* ``preprocessor``: makes the map from ``image`` after it is fitted to the drawing (A1111's "pixel perfect"):
  "canny", "invert", "threshold", "scribble_xdog", "tile_resample" (``latentgen.control.preprocess``; None or
  "none": the image is the map), with ``threshold_a``/``threshold_b`` (None: A1111's defaults) and
  ``processor_res`` (None: the drawing's size).
* ``mode``: A1111's control mode. "balanced": on both halves of CFG at ``weight``. "prompt" (My prompt is more
  important): on both halves, residual k of n scaled by ``weight * 0.825 ** (n - 1 - k)`` (the deep ones
  strongest). "controlnet" (ControlNet is more important): on the conditional half only, the unconditional half
  without it, scaled as diffusers' guess mode (``logspace(-1, 0, n)``, A1111's 0.825 steps to within 0.05%).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .. import checks
from ..canvas import resize
from . import preprocess

MODES = ("balanced", "prompt", "controlnet")


@dataclass(frozen=True)
class Control:
    """One ControlNet unit of a call (the module docstring)."""

    image: object
    model: object
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mode: str = "balanced"
    resize_mode: str | int = "crop and resize"
    preprocessor: str | None = None
    threshold_a: float | None = None
    threshold_b: float | None = None
    processor_res: int | None = None


def as_list(control) -> list[Control]:
    """``control=`` as a list of units: None, one ``Control``, or a list of them."""
    if control is None:
        return []
    units = [control] if isinstance(control, Control) else control
    if not isinstance(units, (list, tuple)) or not all(isinstance(u, Control) for u in units):
        raise TypeError(f"control must be a latentgen.Control or a list of them, got {type(control).__name__}; such "
                        f"as control=latentgen.Control('edges.png', model='controlnet-folder').")
    return list(units)


def check(unit: Control, index: int) -> None:
    """A unit's numbers and names, before any model runs."""
    name = f"control[{index}]"
    checks.number(f"{name}.weight", unit.weight, minimum=0, maximum=2, fix="use 0 to 2, such as 1.0")
    checks.number(f"{name}.start", unit.start, minimum=0, maximum=1, fix="use a fraction of the steps, 0 to 1")
    checks.number(f"{name}.end", unit.end, minimum=0, maximum=1, fix="use a fraction of the steps, 0 to 1")
    if unit.start >= unit.end:
        raise ValueError(f"{name}.start={unit.start} is not before {name}.end={unit.end}: the unit would act on no "
                         f"step; use start < end, such as start=0.0, end=1.0.")
    checks.choice(f"{name}.mode", unit.mode, MODES, "use 'balanced', 'prompt' (My prompt is more important) or "
                                                   "'controlnet' (ControlNet is more important)")
    resize.mode(unit.resize_mode)
    try:
        preprocess.thresholds(unit.preprocessor, unit.threshold_a, unit.threshold_b)
        if unit.processor_res is not None:
            checks.whole("processor_res", unit.processor_res, 64, "use a whole number >= 64, such as 512")
    except ValueError as e:
        raise ValueError(f"{name}.{e}") from None


def shipped() -> dict[str, Path]:
    """The ControlNets shipped in weights/controlnets, by name (``"edges"``)."""
    from ..models.presets import data_dir

    folder = data_dir("weights") / "controlnets"
    return {p.name: p for p in sorted(folder.iterdir()) if (p / "config.json").is_file()} if folder.is_dir() else {}


def resolve(model: str | Path) -> Path:
    """A ControlNet folder's or file's path, or a shipped ControlNet's name as its folder (A1111's "name [hash]"
    read as the name)."""
    p = Path(model)
    return p if p.is_dir() or p.is_file() else shipped().get(bare_name(str(model)), p)


def bare_name(name: str) -> str:
    """A ControlNet's name without A1111's " [hash]" suffix."""
    return re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", name)


_READ: dict[tuple, object] = {}  # (path, its weights' stamp, dtype, U-Net) -> ControlNetModel: the last few read


def _read(source: Path, like, name: str):
    """A ControlNet folder or file read once while its weights are unchanged (a server's requests name the same
    few); a file's architecture comes from the U-Net it serves, so that is part of the key."""
    from diffusers import ControlNetModel

    from . import ldm_file

    folder = source.is_dir()
    weights = sorted(source.glob("diffusion_pytorch_model*")) if folder else [
        source, *(y for y in (source.with_suffix(".yaml"),) if y.is_file())]  # v1.1's yaml beside it counts
    unet = None if folder else json.dumps(ldm_file.base_config(like.config), sort_keys=True)
    key = (str(source.resolve()), tuple((w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights),
           like.dtype, unet)
    if key not in _READ:
        while len(_READ) >= 4:
            _READ.pop(next(iter(_READ)))
        if folder:
            _READ[key] = ControlNetModel.from_pretrained(source, local_files_only=True, torch_dtype=like.dtype)
        else:
            _READ[key] = ldm_file.read(source, like, name)
    return _READ[key]


def load_model(model, like, name: str):
    """A ControlNet for the U-Net ``like``: a ``ControlNetModel`` as it is, a diffusers folder (offline) or a single
    file (``latentgen.control.ldm_file``), on the U-Net's device and dtype; one made for another architecture is
    refused, naming what does not fit."""
    from diffusers import ControlNetModel

    from . import ldm_file

    if isinstance(model, (str, Path)):
        source = resolve(model)
        if not (source / "config.json").is_file() and not ldm_file.is_file(source):
            raise FileNotFoundError(f"{name}.model={str(model)!r} is no ControlNet folder (no config.json there) nor "
                                    f"a ControlNet file ({', '.join(ldm_file.SUFFIXES)}): pass a diffusers "
                                    f"ControlNetModel folder, a file such as control_v11p_sd15_canny.pth, a shipped "
                                    f"ControlNet's name ({', '.join(shipped()) or 'none'}) or the model itself.")
        model = _read(source, like, name)
    if not isinstance(model, ControlNetModel):
        raise TypeError(f"{name}.model must be a diffusers ControlNetModel, its folder or its file, got "
                        f"{type(model).__name__}.")
    cfg, unet = model.config, like.config
    for key in ("block_out_channels", "cross_attention_dim", "addition_embed_type"):  # the last: SDXL's
        if tuple(_as_tuple(cfg.get(key))) != tuple(_as_tuple(unet.get(key))):
            raise ValueError(f"{name}.model was made for another U-Net: its {key} is {cfg.get(key)}, this model's "
                             f"{unet.get(key)}; use a ControlNet trained for this model's family.")
    if model.dtype != like.dtype:  # (a folder or file is read in the U-Net's dtype already)
        model = model.to(dtype=like.dtype)
    return model.to(device=like.device).eval()


def _as_tuple(v):
    return v if isinstance(v, (list, tuple)) else (v,)


MODE_LABELS = {"balanced": "Balanced", "prompt": "My prompt is more important",
               "controlnet": "ControlNet is more important"}  # A1111's
RESIZE_LABELS = {"just resize": "Just Resize", "crop and resize": "Crop and Resize", "resize and fill": "Resize and Fill"}


@dataclass
class Prepared:
    """A call's units, checked, their ControlNets loaded and their images at the drawing's size."""

    units: list[Control]
    models: list
    images: list  # (1, 3, h, w) float32 in [0, 1] each, as diffusers' control image processor makes them
    size: tuple[int, int] = (0, 0)  # (w, h) of the drawing


def prepare(control, like, size: tuple[int, int], *, max_pixels: int, box=None, source=None) -> Prepared | None:
    """``control=`` of a call drawing ``size`` (w, h) with the U-Net ``like``: every unit checked, then its image
    read and brought to ``size`` (``box``: inpainting's only-masked crop of a ``source`` (w, h) picture: the image
    is brought to the source's size, cropped to the box, then resized), then its ControlNet loaded. None: none."""
    import numpy as np
    import torch

    from ..images import load_rgb

    units = as_list(control)
    if not units:
        return None
    for i, unit in enumerate(units):
        check(unit, i)
        if resize.mode(unit.resize_mode) == "latent upscale":
            raise ValueError(f"control[{i}].resize_mode='latent upscale' is img2img's: use 'just resize', 'crop and "
                             f"resize' or 'resize and fill'.")
    images = []
    for i, unit in enumerate(units):
        image, _ = load_rgb(unit.image, f"control[{i}].image", max_pixels)
        how = resize.mode(unit.resize_mode)
        if box is not None:
            image = resize.resize(image, source, how).crop(box)
            how = "just resize"
        image = resize.resize(image, size, how)
        image = preprocess.run(unit.preprocessor, image, unit.threshold_a, unit.threshold_b, unit.processor_res)
        images.append(torch.from_numpy(np.asarray(image, np.float32) / 255.0).permute(2, 0, 1)[None])
    models = [load_model(u.model, like, f"control[{i}]") for i, u in enumerate(units)]
    return Prepared(units, models, images, size)


def info(control: Prepared | None) -> dict:
    """The PNG lines sd-webui-controlnet writes, one per unit: ``ControlNet 0: "Module: none, Model: ..., ..."``."""
    if control is None:
        return {}
    out = {}
    for i, (unit, model) in enumerate(zip(control.units, control.models)):
        path = Path(unit.model) if isinstance(unit.model, (str, Path)) else None
        name = (path.stem if path.is_file() else path.name) if path is not None else \
            Path(model.config.get("_name_or_path") or "ControlNetModel").name
        module = preprocess.name_of(unit.preprocessor)
        a, b = preprocess.thresholds(module, unit.threshold_a, unit.threshold_b)
        tuning = "" if module == "none" else (f", Processor Res: {unit.processor_res or min(control.size)}"
                                               + "".join(f", Threshold {k}: {v:g}" for k, v in (("A", a), ("B", b))
                                                         if v is not None))
        out[f"ControlNet {i}"] = (f"Module: {module}, Model: {name}, Weight: {unit.weight:g}, Resize Mode: "
                                  f"{RESIZE_LABELS[resize.mode(unit.resize_mode)]}{tuning}, Guidance Start: "
                                  f"{unit.start:g}, Guidance End: {unit.end:g}, Control Mode: {MODE_LABELS[unit.mode]}")
    return out
