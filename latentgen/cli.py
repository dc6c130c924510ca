"""The ``latentgen`` command line.

    latentgen generate "a red circle on a blue background" --seed 1 -o out.png
    latentgen img2img "a yellow circle on a blue background" --image out.png --strength 0.6 -o edit.png
    latentgen inpaint "a red square on a green background" --image in.png --mask mask.png -o out.png
    latentgen info out.png
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"{s} is not >= 1")
    return v


def _finite_float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{s} is not a finite number")
    return v


def _scheduler_name(s: str) -> str:
    from .schedulers import SAMPLERS  # light: names only, checked before any model loads

    if s not in SAMPLERS:
        raise argparse.ArgumentTypeError(f"unknown scheduler {s!r}; use one of: {', '.join(SAMPLERS)}")
    return s


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="diffusers folder or preset name (default: the embedded model)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                   help="default: fp16 on CUDA, fp32 on CPU")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt")
    p.add_argument("--negative", default=None, help="negative prompt")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed + i")
    p.add_argument("--steps", type=_positive_int, default=None, help="denoising steps (model default)")
    p.add_argument("--guidance", type=_finite_float, default=None, help="CFG scale (model default)")
    p.add_argument("--scheduler", type=_scheduler_name, default=None, help="sampler name (model default)")
    p.add_argument("-n", "--num-images", type=_positive_int, default=1)
    p.add_argument("-o", "--output", required=True, help="out.png; several images: out-0.png, out-1.png, ...")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]",
                   help="apply a LoRA (diffusers or kohya layout) at SCALE (default 1); repeatable")


def _lora_spec(spec: str) -> tuple[str, float]:
    """'path[:scale]' -> (path, scale), the file checked before any model loads."""
    path, _, scale = spec.rpartition(":")
    try:
        path, scale = (path, float(scale)) if path else (spec, 1.0)
    except ValueError:
        path, scale = spec, 1.0
    if not Path(path).is_file():
        raise FileNotFoundError(f"--lora {spec}: no file at {path!r}; use --lora path/to/lora.safetensors[:scale].")
    return path, scale


def _render(args: argparse.Namespace, call) -> int:
    """Check outputs, load the model, run ``call(pipe, **sampling)`` with a progress bar, save PNGs."""
    from tqdm import tqdm

    import latentgen
    from . import metadata

    paths = metadata.output_paths(args.output, args.num_images)
    metadata.check_writable(paths, args.force)  # before loading anything
    loras = [_lora_spec(spec) for spec in getattr(args, "lora", None) or []]
    pipe = latentgen.load(args.model, device=args.device, dtype=args.dtype)
    for path, scale in loras:
        pipe.load_lora(path, scale=scale)
    bar = tqdm(desc="denoising", unit="step", leave=False)

    def progress(done: int, total: int, _latents) -> None:
        bar.total = total
        bar.update(done - bar.n)

    images = call(pipe, seed=args.seed, steps=args.steps, guidance=args.guidance,
                  negative_prompt=args.negative, num_images=args.num_images, scheduler=args.scheduler,
                  callback=progress)
    bar.close()
    for image, path in zip(images, paths):
        print(metadata.save_png(image, path, image.info.get("parameters"), force=args.force))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    return _render(args, lambda pipe, **kw: pipe.generate(args.prompt, width=args.width, height=args.height, **kw))


def cmd_img2img(args: argparse.Namespace) -> int:
    from .edit import _check_strength
    from .images import open_image

    image = open_image(args.image, "--image")  # a missing or unreadable file fails before the model loads
    _check_strength(args.strength)
    return _render(args, lambda pipe, **kw: pipe.img2img(args.prompt, image, strength=args.strength,
                                                         max_pixels=args.max_pixels, **kw))


def cmd_inpaint(args: argparse.Namespace) -> int:
    from .edit import _check_strength
    from .images import open_image

    image = open_image(args.image, "--image")
    mask = open_image(args.mask, "--mask") if args.mask else None
    _check_strength(args.strength)
    return _render(args, lambda pipe, **kw: pipe.inpaint(
        args.prompt, image, mask, strength=args.strength, mask_blur=args.mask_blur,
        only_masked=args.only_masked, padding=args.padding, max_pixels=args.max_pixels, **kw))


def cmd_shapes_data(args: argparse.Namespace) -> int:
    from . import shapes

    vocab = {k: tuple(v) for k, v in (("colors", args.colors), ("shapes", args.shapes)) if v}
    bad = [w for w in vocab.get("colors", ()) if w not in shapes.PALETTE] + \
        [w for w in vocab.get("shapes", ()) if w not in shapes.ALL_SHAPES]
    if bad:
        raise ValueError(f"unknown color/shape {bad}: colors {list(shapes.PALETTE)}, shapes {list(shapes.ALL_SHAPES)}.")
    scenes = shapes.write_folder(args.folder, args.n, seed=args.seed, size=args.size, **vocab)
    print(f"{len(scenes)} images with captions in {args.folder}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from . import metadata

    if not Path(args.png).is_file():
        print(f"error: {args.png} does not exist", file=sys.stderr)
        return 2
    text = metadata.read_parameters(args.png)
    if text is None:
        print(f"{args.png} has no 'parameters' chunk (not written by latentgen or A1111)", file=sys.stderr)
        return 1
    print(text)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from . import recipe

    given = {f.name: getattr(args, f.name) for f in fields(recipe.RecipeConfig)
             if getattr(args, f.name, None) is not None}
    cfg = recipe.RecipeConfig(**{**given, "out": Path(args.out)})
    cfg.check()
    print(recipe.run(cfg))
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    import latentgen
    from . import metadata, quality

    prompts = args.prompts
    if args.prompts_file:
        prompts = prompts + [ln.strip() for ln in Path(args.prompts_file).read_text().splitlines() if ln.strip()]
    if not prompts:
        raise ValueError("no prompts: give them as arguments or with --prompts-file FILE (one per line).")
    metadata.check_writable([Path(args.output)], args.force)
    pipe = latentgen.load(args.model, device=args.device, dtype=args.dtype)
    images = pipe.generate(prompts, seed=args.seed, steps=args.steps, guidance=args.guidance,
                           scheduler=args.scheduler)
    sheet = quality.grid(images, args.cols or min(len(images), 7), labels=None if args.no_labels else prompts)
    text = f"grid of {len(prompts)} prompts\n" + images[0].info["parameters"].splitlines()[-1]
    print(metadata.save_png(sheet, Path(args.output), text, force=args.force))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    import latentgen
    from . import quality

    pipe = latentgen.load(args.model, device=args.device, dtype=args.dtype)
    report = quality.adherence(pipe, seeds=tuple(args.seeds), steps=args.steps, guidance=args.guidance)
    print(json.dumps(report.summary()))
    return 0


def cmd_ship(args: argparse.Namespace) -> int:
    import json

    from . import recipe

    if not (Path(args.model) / "recipe.json").is_file():
        raise FileNotFoundError(f"{args.model} has no recipe.json: give the model folder that "
                                f"`latentgen train --out RUN` exported (RUN/model).")
    m = recipe.ship(Path(args.model), Path(args.dest), command=args.command)
    print(json.dumps(m["quality"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="latentgen", description="Latent text-to-image diffusion, offline.")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="text to image")
    add_sampling_args(g)
    g.add_argument("--width", type=_positive_int, default=None)
    g.add_argument("--height", type=_positive_int, default=None)
    add_model_args(g)
    g.set_defaults(func=cmd_generate)
    t = sub.add_parser("train", help="train the embedded model's recipe on the flat-shapes world",
                       description="Train VAE, then text encoder + U-Net; resumes from checkpoints in --out.")
    t.add_argument("--out", required=True, help="run folder; the model is exported to OUT/model")
    t.add_argument("--preset", default=None, help="architecture preset (default: 'default')")
    t.add_argument("--seed", type=int, default=None)
    for name in ("vae_steps", "vae_batch", "steps", "batch", "save_every", "threads"):
        t.add_argument("--" + name.replace("_", "-"), dest=name, type=_positive_int, default=None)
    for name in ("lr", "vae_lr"):
        t.add_argument("--" + name.replace("_", "-"), dest=name, type=_finite_float, default=None)
    t.set_defaults(func=cmd_train)
    gr = sub.add_parser("grid", help="one image per prompt, tiled into a labelled sheet")
    gr.add_argument("prompts", nargs="*")
    gr.add_argument("--prompts-file", default=None, help="more prompts, one per line")
    gr.add_argument("--cols", type=_positive_int, default=None)
    gr.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    gr.add_argument("--steps", type=_positive_int, default=None)
    gr.add_argument("--guidance", type=_finite_float, default=None)
    gr.add_argument("--scheduler", type=_scheduler_name, default=None)
    gr.add_argument("--no-labels", action="store_true")
    gr.add_argument("-o", "--output", required=True)
    gr.add_argument("--force", action="store_true")
    add_model_args(gr)
    gr.set_defaults(func=cmd_grid)
    ev = sub.add_parser("eval", help="prompt adherence on the flat-shapes world (42 prompts x seeds)")
    ev.add_argument("--seeds", type=int, nargs="+", default=[0, 1000])
    ev.add_argument("--steps", type=_positive_int, default=20)
    ev.add_argument("--guidance", type=_finite_float, default=None)
    add_model_args(ev)
    ev.set_defaults(func=cmd_eval)
    sh = sub.add_parser("ship", help="measure a trained model and copy it with its manifest (sha256s, recipe, quality)")
    sh.add_argument("model", help="RUN/model, as exported by latentgen train")
    sh.add_argument("dest", help="e.g. weights/default")
    sh.add_argument("--command", default="latentgen train --out runs/default",
                    help="the training command recorded in the manifest")
    sh.set_defaults(func=cmd_ship)
    ii = sub.add_parser("img2img", help="redraw an image under a prompt")
    add_sampling_args(ii)
    ii.add_argument("--image", required=True, help="input image (any size; resized to a multiple of 8 and back)")
    ii.add_argument("--strength", type=float, default=0.75, help="0 keeps the image, 1 repaints it (default 0.75)")
    ii.add_argument("--max-pixels", type=_positive_int, default=None, help="memory bound (default 2048x2048)")
    add_model_args(ii)
    ii.set_defaults(func=cmd_img2img)
    ip = sub.add_parser("inpaint", help="repaint the white part of a mask")
    add_sampling_args(ip)
    ip.add_argument("--image", required=True)
    ip.add_argument("--mask", default=None, help="white repaints, black keeps (default: the image's alpha)")
    ip.add_argument("--strength", type=float, default=1.0)
    ip.add_argument("--mask-blur", type=float, default=4, help="feather radius in pixels, inside the mask")
    ip.add_argument("--only-masked", action="store_true", help="work on the mask's box at native size")
    ip.add_argument("--padding", type=int, default=32, help="pixels around the mask's box (--only-masked)")
    ip.add_argument("--max-pixels", type=_positive_int, default=None, help="memory bound (default 2048x2048)")
    add_model_args(ip)
    ip.set_defaults(func=cmd_inpaint)
    sd = sub.add_parser("shapes-data", help="write procedural flat-shape images with .txt captions (for finetune-lora)")
    sd.add_argument("folder")
    sd.add_argument("-n", type=_positive_int, default=200)
    sd.add_argument("--seed", type=int, default=0)
    sd.add_argument("--size", type=_positive_int, default=64)
    sd.add_argument("--colors", nargs="+", default=None, help="shape colors (default: the base seven)")
    sd.add_argument("--shapes", nargs="+", default=None, help="circle square triangle star")
    sd.set_defaults(func=cmd_shapes_data)
    from .finetune import add_parser as add_finetune

    add_finetune(sub)
    i = sub.add_parser("info", help="print the generation parameters stored in a PNG")
    i.add_argument("png")
    i.set_defaults(func=cmd_info)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
