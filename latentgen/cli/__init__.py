"""The ``latentgen`` command line.

    latentgen generate "a red circle on a blue background" --seed 1 -o out.png
    latentgen img2img "a yellow circle on a blue background" --image out.png --strength 0.6 -o edit.png
    latentgen inpaint "a red square on a green background" --image in.png --mask mask.png -o out.png
    latentgen info out.png
    latentgen cache                # converted U-Nets on disk (--clear to empty)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..canvas.resize import MODES as RESIZE_MODES  # light (PIL): the flags' choices
from .args import (add_model_args, add_refiner_args, finite_float, load_model, load_refiner, lora_spec, positive_int,
                   scheduler_name, size_spec, styled_prompts)
from .control import add_control_args, controls_from
from .loopback import add_loopback_args, loopback_call
from .upscale import add_hires_args, add_sd_upscale_args, sd_upscale_call

FILLS = ("fill", "original", "latent noise", "latent nothing")  # latentgen.canvas.fill


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt")
    p.add_argument("--negative", default=None, help="negative prompt")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed + i")
    p.add_argument("--steps", type=positive_int, default=None, help="denoising steps (model default)")
    p.add_argument("--guidance", type=finite_float, default=None, help="CFG scale (model default)")
    p.add_argument("--guidance-rescale", type=finite_float, default=0.0,
                   help="CFG rescale phi from 0 (off) to 1, e.g. 0.7 for zero-terminal-SNR models")
    p.add_argument("--scheduler", type=scheduler_name, default=None, help="sampler name (model default)")
    p.add_argument("-n", "--num-images", type=positive_int, default=1)
    p.add_argument("-o", "--output", required=True, help="out.png; several images: out-0.png, out-1.png, ...")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="apply a LoRA (diffusers, kohya or LyCORIS file, or a shipped one's name such as 'purple') "
                        "at SCALE (default 1; PATH:TE:UNET per part, as A1111's tags); repeatable")
    p.add_argument("--clip-skip", type=positive_int, default=1,
                   help="A1111's clip skip: 2 = the text encoder's penultimate layer (default 1)")
    p.add_argument("--prompt-syntax", choices=["a1111", "plain"], default="a1111",
                   help="a1111: (word:1.3), [word], BREAK, <lora:NAME:W>, long prompts; plain: literal text")
    p.add_argument("--embedding", action="append", default=[], metavar="PATH[:TOKEN]",
                   help="textual-inversion embedding (A1111 .pt/.safetensors or diffusers learned_embeds), "
                        "used by its TOKEN (default: the file name) in prompts; repeatable")
    p.add_argument("--subseed", type=int, default=0, help="A1111's variation seed; image i uses subseed + i")
    p.add_argument("--subseed-strength", type=finite_float, default=0.0,
                   help="how far toward the variation seed's noise: 0 (the seed's image, default) to 1")
    p.add_argument("--seed-resize-from", type=size_spec, default=None, metavar="WxH",
                   help="draw the noise at this size and paste it in the middle (a seed's look at another size)")
    p.add_argument("--style", action="append", default=[], metavar="NAME",
                   help="apply this prompt style of --styles-file to the prompt and negative prompt; repeatable")
    p.add_argument("--styles-file", type=Path, default=None, metavar="CSV",
                   help="A1111's styles.csv (name, prompt, negative_prompt) that --style names")
    p.add_argument("--tiling", action="store_true",
                   help="A1111's Tiling: pictures that tile seamlessly (textures), every convolution padding around")
    add_control_args(p)
    add_refiner_args(p)


def _render(args: argparse.Namespace, call) -> int:
    """Check outputs, load the model, run ``call(pipe, **sampling)`` with a progress bar, save PNGs."""
    from tqdm import tqdm

    from .. import metadata
    from ..request import check_variation
    from ..starts import Variation
    from ..text.embeddings import parse_spec

    paths = metadata.output_paths(args.output, args.num_images)
    metadata.check_writable(paths, args.force)  # before loading anything
    styled_prompts(args)
    control = controls_from(args)  # each image with its ControlNet, before any model loads
    variation = None
    if args.subseed_strength or args.seed_resize_from:
        variation = check_variation(Variation(args.subseed, args.subseed_strength, args.seed_resize_from),
                                    args.num_images)
    loras = [lora_spec(spec) for spec in getattr(args, "lora", None) or []]
    embeddings = [parse_spec(spec) for spec in getattr(args, "embedding", None) or []]
    refiner = load_refiner(args)  # its switch checked before any model loads
    hires_path = getattr(args, "hires_model", None)  # the hires pass's model, unless it is --model again
    second = load_model(args, hires_path, prediction_type=None) if hires_path and hires_path != args.model else None
    pipe = load_model(args)
    for model in filter(None, (pipe, second)):  # the hires pass's model (--hires-model) as the model
        for path, scale in loras:
            model.load_lora(path, scale=scale)
        for path, token in embeddings:
            model.load_embedding(path, token=token)
    bar = tqdm(desc="denoising", unit="step", leave=False)

    def progress(done: int, total: int, _latents) -> None:
        bar.total = total
        bar.update(done - bar.n)

    with bar:  # closed (its line cleared) before an error is printed
        images = call(pipe, seed=args.seed, steps=args.steps, guidance=args.guidance,
                      negative_prompt=args.negative, num_images=args.num_images, scheduler=args.scheduler,
                      clip_skip=args.clip_skip, prompt_syntax=args.prompt_syntax, callback=progress,
                      guidance_rescale=args.guidance_rescale,
                      variation=variation, tiling=args.tiling, **({"control": control} if control else {}),
                      **({"refiner": refiner} if refiner else {}), **({"hires_model": second} if second else {}))
    for image, path in zip(images, paths):
        print(metadata.save_png(image, path, image.info.get("parameters"), force=args.force))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .upscale import hires_from

    styled_prompts(args)  # before the hires pass's prompts are read
    hires = hires_from(args)  # with --hires-model: that model, loaded by _render
    return _render(args, lambda pipe, hires_model=None, **kw: pipe.generate(
        args.prompt, width=args.width, height=args.height,
        hires=hires if hires_model is None else replace(hires, model=hires_model), **kw))


def cmd_img2img(args: argparse.Namespace) -> int:
    from ..request import strength
    from ..images import open_image

    image = open_image(args.image, "--image")  # a missing or unreadable file fails before the model loads
    strength(args.strength)
    if args.sd_upscale is not None or args.loopback is not None:  # A1111's SD upscale, Loopback
        if args.sd_upscale is not None and args.loopback is not None:
            raise ValueError("--sd-upscale and --loopback are two scripts: give one.")
        return _render(args, sd_upscale_call(args, image) if args.sd_upscale is not None else loopback_call(args, image))
    return _render(args, lambda pipe, **kw: pipe.img2img(args.prompt, image, strength=args.strength,
                                                         max_pixels=args.max_pixels, width=args.width,
                                                         height=args.height, resize_mode=args.resize_mode, **kw))


def cmd_inpaint(args: argparse.Namespace) -> int:
    from ..request import strength
    from ..images import open_image

    image = open_image(args.image, "--image")
    mask = open_image(args.mask, "--mask") if args.mask else None
    strength(args.strength)
    return _render(args, lambda pipe, **kw: pipe.inpaint(
        args.prompt, image, mask, strength=args.strength, mask_blur=args.mask_blur,
        only_masked=args.only_masked, padding=args.padding, max_pixels=args.max_pixels, variant=args.variant,
        fill=args.fill, **kw))


def cmd_outpaint(args: argparse.Namespace) -> int:
    from ..images import open_image
    from ..request import strength

    image = open_image(args.image, "--image")
    strength(args.strength)
    return _render(args, lambda pipe, **kw: pipe.outpaint(
        args.prompt, image, left=args.left, right=args.right, top=args.top, bottom=args.bottom, fill=args.fill,
        strength=args.strength, mask_blur=args.mask_blur, max_pixels=args.max_pixels, **kw))


def cmd_info(args: argparse.Namespace) -> int:
    from .. import metadata

    path = Path(args.png)
    if not path.is_file():
        print(f"error: {path} {'is a folder, not an image' if path.is_dir() else 'does not exist'}", file=sys.stderr)
        return 2
    try:
        text = metadata.read_parameters(path)
    except OSError as e:  # PIL's UnidentifiedImageError among them
        print(f"error: {path} is not an image Pillow can read ({e})", file=sys.stderr)
        return 2
    if text is None:
        print(f"{args.png} has no 'parameters' chunk (not written by latentgen or A1111)", file=sys.stderr)
        return 1
    print(text)
    return 0


def _add_outpaint(sub) -> None:
    op = sub.add_parser("outpaint", help="extend an image on its sides and draw the new area")
    add_sampling_args(op)
    op.add_argument("--image", required=True)
    for side in ("left", "right", "top", "bottom"):
        op.add_argument(f"--{side}", type=int, default=0, help=f"pixels added on the {side}")
    op.add_argument("--fill", choices=FILLS, default="fill", help="what stands in the new area before drawing")
    op.add_argument("--strength", type=float, default=0.8)
    op.add_argument("--mask-blur", type=float, default=None, help="feather radius; the seam is twice as wide")
    op.add_argument("--max-pixels", type=positive_int, default=None, help="memory bound (default 2048x2048)")
    add_model_args(op)
    op.set_defaults(func=cmd_outpaint)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="latentgen", description="Latent text-to-image diffusion, offline.")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="text to image")
    add_sampling_args(g)
    g.add_argument("--width", type=positive_int, default=None)
    g.add_argument("--height", type=positive_int, default=None)
    add_hires_args(g)
    add_model_args(g)
    g.set_defaults(func=cmd_generate)
    ii = sub.add_parser("img2img", help="redraw an image under a prompt")
    add_sampling_args(ii)
    ii.add_argument("--image", required=True, help="input image (any size; resized to a multiple of 8 and back)")
    ii.add_argument("--strength", type=float, default=0.75, help="0 keeps the image, 1 repaints it (default 0.75)")
    ii.add_argument("--max-pixels", type=positive_int, default=None, help="memory bound (default 2048x2048)")
    ii.add_argument("--width", type=positive_int, default=None, help="draw at this width (default: the image's)")
    ii.add_argument("--height", type=positive_int, default=None, help="draw at this height (default: the image's)")
    ii.add_argument("--resize-mode", choices=RESIZE_MODES, default="just resize",
                    help="how an image of another shape fits --width x --height (A1111's resize modes)")
    add_sd_upscale_args(ii)
    add_loopback_args(ii)
    add_model_args(ii)
    ii.set_defaults(func=cmd_img2img)
    ip = sub.add_parser("inpaint", help="repaint the white part of a mask")
    add_sampling_args(ip)
    ip.add_argument("--image", required=True)
    ip.add_argument("--mask", default=None, help="white repaints, black keeps (default: the image's alpha)")
    ip.add_argument("--strength", type=float, default=1.0)
    ip.add_argument("--mask-blur", type=float, default=None,
                    help="feather radius in pixels, inside the mask (default: the model's, 4 as A1111)")
    ip.add_argument("--only-masked", action="store_true", help="work on the mask's box at native size")
    ip.add_argument("--padding", type=int, default=32, help="pixels around the mask's box (--only-masked)")
    ip.add_argument("--max-pixels", type=positive_int, default=None, help="memory bound (default 2048x2048)")
    ip.add_argument("--variant", choices=("auto", "blend"), default="auto",
                    help="auto: the model's 9-channel inpainting U-Net when it has one (the default model ships "
                         "one); blend: latent blending with its own U-Net")
    ip.add_argument("--fill", choices=FILLS, default="original",
                    help="masked content where the image is kept (--strength < 1), as A1111's")
    add_model_args(ip)
    ip.set_defaults(func=cmd_inpaint)
    _add_outpaint(sub)
    from . import batch, cache, checkpoints, models, serve, upscale

    models.add_parsers(sub)
    upscale.add_parser(sub)
    batch.add_parser(sub)
    serve.add_parser(sub)
    checkpoints.add_parser(sub)
    cache.add_parser(sub)
    i = sub.add_parser("info", help="print the generation parameters stored in a PNG")
    i.add_argument("png")
    i.set_defaults(func=cmd_info)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run a command; bad input (2), a run that cannot finish (1: disk, memory, NaNs) and Ctrl-C (130) print one
    line starting "error:", not a traceback. A Ctrl-C that a library turned into an error of its own (diffusers
    reports one during a weights read as "Unable to load weights") is still reported as the interruption."""
    import signal
    import threading

    ctrl_c: list[int] = []

    def on_sigint(signum, frame):  # Python's own handler (KeyboardInterrupt), remembering that it ran
        ctrl_c.append(signum)
        signal.default_int_handler(signum, frame)

    ours = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is \
        signal.default_int_handler
    previous = signal.signal(signal.SIGINT, on_sigint) if ours else None
    try:
        args = build_parser().parse_args(argv)  # inside: building the parser imports, and may meet a Ctrl-C too
        return args.func(args)
    except KeyboardInterrupt as e:  # Ctrl-C: every file written is whole (atomic writes), none is half-written
        return _interrupted(str(e))
    except Exception as e:  # noqa: BLE001 - the codes below, or raised again
        if ctrl_c:
            return _interrupted("")
        known = _failure(e)
        if known is None:
            raise
        print(f"error: {known[1]}", file=sys.stderr)
        return known[0]
    finally:
        if ours:
            signal.signal(signal.SIGINT, previous)


def _interrupted(why: str) -> int:
    print(f"\nerror: interrupted; {why or 'no file was left half-written'}", file=sys.stderr)
    return 130


def _failure(e: Exception) -> tuple[int, str] | None:
    """(exit code, message): 2 for bad input; 1 for a run that cannot finish (a full disk, a folder not writable,
    NaNs from the model, memory). None: a bug, whose traceback is shown."""
    from ..guard import NonFiniteError

    if isinstance(e, (ValueError, TypeError, FileNotFoundError, FileExistsError)):
        return 2, str(e)
    if isinstance(e, MemoryError):
        return 1, "out of memory; ask for fewer or smaller images (-n, --width, --height)"
    return (1, str(e)) if isinstance(e, (NonFiniteError, OSError)) else None


if __name__ == "__main__":
    sys.exit(main())
