"""The ControlNet flags of ``latentgen generate``, ``img2img`` and ``inpaint`` (``latentgen.Control``), repeatable
for several units: the i-th ``--control-*`` belongs to the i-th ``--control``.

    latentgen generate "a red circle" --control edges.png --control-model runs/controlnet --control-weight 0.8 -o o.png
    latentgen generate "a red circle" --control photo.png --preprocessor canny --control-model edges -o o.png
"""

from __future__ import annotations

import argparse

from ..control.units import MODES  # light: no torch at parse time
from .args import finite_float


def add_control_args(p: argparse.ArgumentParser) -> None:
    c = p.add_argument_group("ControlNet", "spatial control from an image; repeat the flags for several units")
    c.add_argument("--control", action="append", default=[], metavar="IMAGE", help="a control map")
    c.add_argument("--control-model", action="append", default=[], metavar="FOLDER|FILE",
                   help="its ControlNet: a diffusers ControlNetModel folder, a single file (control_v11p_sd15_canny"
                        ".pth, A1111's .safetensors) or a shipped name (edges)")
    c.add_argument("--control-weight", action="append", type=finite_float, default=[], help="default 1")
    c.add_argument("--control-start", action="append", type=finite_float, default=[], help="fraction of the steps")
    c.add_argument("--control-end", action="append", type=finite_float, default=[], help="fraction of the steps")
    c.add_argument("--control-mode", action="append", choices=MODES, default=[],
                   help="balanced (default), prompt (my prompt is more important), controlnet (it is)")
    c.add_argument("--preprocessor", action="append", default=[], metavar="NAME",
                   help="makes the map from the image: none (default), canny, invert, threshold, scribble_xdog, "
                        "tile_resample")
    c.add_argument("--control-threshold-a", action="append", type=finite_float, default=[],
                   help="the preprocessor's first threshold (canny's low, 100)")
    c.add_argument("--control-threshold-b", action="append", type=finite_float, default=[],
                   help="the preprocessor's second threshold (canny's high, 200)")


def controls_from(args: argparse.Namespace):
    """The units the flags ask for (checked: each --control has its --control-model), or None."""
    images = getattr(args, "control", None) or []
    if not images:
        return None
    from ..control.units import Control

    if len(args.control_model) != len(images):
        raise ValueError(f"{len(images)} --control image(s) and {len(args.control_model)} --control-model(s): give "
                         f"each control image its ControlNet.")
    per = {"weight": args.control_weight, "start": args.control_start, "end": args.control_end,
           "mode": args.control_mode, "preprocessor": args.preprocessor, "threshold_a": args.control_threshold_a,
           "threshold_b": args.control_threshold_b}
    for name, values in per.items():
        if len(values) > len(images):
            flag = "--preprocessor" if name == "preprocessor" else f"--control-{name.replace('_', '-')}"
            raise ValueError(f"{len(values)} {flag} for {len(images)} --control image(s).")
    return [Control(image, model, **{k: v[i] for k, v in per.items() if i < len(v)})
            for i, (image, model) in enumerate(zip(images, args.control_model))]
