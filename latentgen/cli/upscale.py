"""``latentgen upscale`` (a picture to a larger size with a pixel upscaler or an ESRGAN-family model file, A1111's
Extras tab), the hires-fix flags of ``latentgen generate`` (``--hires``, ``--hires-*``: ``latentgen.Hires``) and
``latentgen img2img --sd-upscale`` (A1111's SD upscale script: ``latentgen.upscale.sd_upscale``).
Model files are given by path, or by stem from the folder in $LATENTGEN_UPSCALERS.

    latentgen upscale photo.png --scale 2 --upscaler Lanczos -o big.png
    latentgen upscale photo.png --scale 4 --upscaler models/ESRGAN/4x-UltraSharp.pth -o big.png
    latentgen generate "a red circle" --width 64 --height 64 --hires-scale 2 --hires-strength 0.55 -o hr.png
    latentgen img2img "a red circle" --image small.png --sd-upscale 2 --strength 0.3 -o big.png   # A1111's SD upscale
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import finite_float, positive_int, scheduler_name

HIRES_FLAGS = ("hires_scale", "hires_width", "hires_height", "hires_upscaler", "hires_strength", "hires_steps",
               "hires_sampler", "hires_prompt", "hires_negative")


def add_hires_args(p: argparse.ArgumentParser) -> None:
    h = p.add_argument_group("hires fix", "draw at the base size, upscale, redraw at the larger size (A1111's hires "
                                          "fix); any --hires-* flag turns it on")
    h.add_argument("--hires", action="store_true", help="turn it on with its defaults: 2x, Latent, strength 0.7")
    h.add_argument("--hires-scale", type=finite_float, default=None, help="times the base size (default 2)")
    h.add_argument("--hires-width", type=positive_int, default=None, help="final width (instead of --hires-scale)")
    h.add_argument("--hires-height", type=positive_int, default=None, help="final height")
    h.add_argument("--hires-upscaler", default=None, help="Latent (default), Latent (bicubic), ..., Lanczos, Nearest, "
                                                          "or an upscaler model file (path, or stem in "
                                                          "$LATENTGEN_UPSCALERS)")
    h.add_argument("--hires-strength", type=finite_float, default=None, help="denoising of the second pass (0.7)")
    h.add_argument("--hires-steps", type=positive_int, default=None, help="steps of the second pass (the first's)")
    h.add_argument("--hires-sampler", type=scheduler_name, default=None, help="sampler of the second pass")
    h.add_argument("--hires-prompt", default=None, help="prompt of the second pass (the first's)")
    h.add_argument("--hires-negative", default=None, help="negative prompt of the second pass")
    h.add_argument("--hires-model", default=None, metavar="FOLDER|FILE",
                   help="another model of the same family draws the second pass (A1111's hr_checkpoint_name); "
                        "--lora, --embedding and --vae apply to it too")


def add_sd_upscale_args(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("SD upscale", "upscale the picture, then redraw it in overlapping tiles of --width x "
                                           "--height (the model's size by default): A1111's SD upscale script")
    s.add_argument("--sd-upscale", type=finite_float, default=None, metavar="SCALE",
                   help="times the picture's size (A1111's Scale Factor); turns it on")
    s.add_argument("--sd-upscaler", default="Lanczos", help="Lanczos (default), Nearest, None (no upscale), or an "
                                                            "upscaler model file (path, or stem in $LATENTGEN_UPSCALERS)")
    s.add_argument("--tile-overlap", type=int, default=64, help="pixels neighbouring tiles share (A1111's 64)")


def sd_upscale_call(args: argparse.Namespace, image):
    """``latentgen img2img --sd-upscale``'s call for ``_render`` (its upscaler checked now, before the model loads)."""
    from ..upscale import sd_upscale, upscalers

    upscalers.check(args.sd_upscaler, "--sd-upscaler")
    return lambda pipe, **kw: sd_upscale.sd_upscale(
        pipe, args.prompt, image, scale=args.sd_upscale, upscaler=args.sd_upscaler, overlap=args.tile_overlap,
        width=args.width, height=args.height, strength=args.strength, max_pixels=args.max_pixels, **kw)


def hires_from(args: argparse.Namespace):
    """The ``latentgen.Hires`` the flags ask for, or None."""
    given = {k: getattr(args, k) for k in HIRES_FLAGS if getattr(args, k, None) is not None}
    if not given and not getattr(args, "hires", False) and not getattr(args, "hires_model", None):
        return None
    from ..upscale.hires import Hires

    names = {"hires_width": "width", "hires_height": "height", "hires_sampler": "scheduler",
             "hires_negative": "negative_prompt"}
    return Hires(**{names.get(k, k.removeprefix("hires_")): v for k, v in given.items()})


def cmd_upscale(args: argparse.Namespace) -> int:
    from .. import metadata
    from ..images import load_rgb
    from ..upscale import upscalers

    name = upscalers.check(args.upscaler, "--upscaler")
    upscalers.check_tile(args.tile, "--tile")
    if upscalers.is_latent(name):
        raise ValueError(f"--upscaler {name!r} works on latents, inside a hires fix (latentgen generate "
                         f"--hires-upscaler); for a picture use one of {', '.join(upscalers.PIXEL)} or a model file.")
    output = Path(args.output)
    metadata.check_writable([output], args.force)
    image, _ = load_rgb(args.image, "image")
    size = (args.width or round(image.width * args.scale), args.height or round(image.height * args.scale))
    out = upscalers.pixels(image, size, name, tile=args.tile)
    text = metadata.read_parameters(args.image)
    info = f"Postprocess upscale to: {size[0]}x{size[1]}, Postprocess upscaler: {upscalers.label(name)}"
    print(metadata.save_png(out, output, f"{text}\n{info}" if text else info, force=args.force))
    return 0


def add_parser(sub) -> None:
    u = sub.add_parser("upscale", help="a picture to a larger size (A1111's Extras: upscale)")
    u.add_argument("image")
    u.add_argument("--scale", type=finite_float, default=2.0, help="times the size (default 2)")
    u.add_argument("--width", type=positive_int, default=None, help="final width (instead of --scale)")
    u.add_argument("--height", type=positive_int, default=None, help="final height (instead of --scale)")
    u.add_argument("--upscaler", default="Lanczos", help="Lanczos (default), Nearest, None, or an ESRGAN, Real-ESRGAN "
                                                         "or Compact model file (path, or stem in $LATENTGEN_UPSCALERS)")
    u.add_argument("--tile", type=int, default=192, help="a model runs on tiles of this many pixels, blended (A1111's "
                                                         "default 192); 0: the whole picture at once")
    u.add_argument("-o", "--output", required=True)
    u.add_argument("--force", action="store_true", help="overwrite an existing output file")
    u.set_defaults(func=cmd_upscale)
