"""``latentgen`` subcommands that make and measure models: train, finetune-lora, distill-lcm, distill-vae,
train-controlnet, grid, eval, ship, ship-lora, ship-tiny-vae, ship-controlnet, shapes-data.

    latentgen train --out runs/default                  # the embedded model's recipe
    latentgen ship runs/default/model weights/default   # measure it, copy it with its manifest
    latentgen grid "a red circle on a blue background" "a white square on a black background" -o grid.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import add_config_args, add_model_args, add_refiner_args, load_refiner, config_from, load_model, finite_float, lora_spec, positive_int, scheduler_name
from .plot import add_axes, add_matrix, add_picture


def cmd_shapes_data(args: argparse.Namespace) -> int:
    from ..embedded import shapes

    vocab = {k: tuple(v) for k, v in (("colors", args.colors), ("shapes", args.shapes)) if v}
    bad = [w for w in vocab.get("colors", ()) if w not in shapes.PALETTE] + \
        [w for w in vocab.get("shapes", ()) if w not in shapes.ALL_SHAPES]
    if bad:
        raise ValueError(f"unknown color/shape {bad}: colors {list(shapes.PALETTE)}, shapes {list(shapes.ALL_SHAPES)}.")
    if args.radius is not None:
        vocab["radius"] = shapes.radius_range(args.radius)
    scenes = shapes.write_folder(args.folder, args.n, seed=args.seed, size=args.size, **vocab)
    print(f"{len(scenes)} images with captions in {args.folder}")
    return 0


def cmd_ship_lora(args: argparse.Namespace) -> int:
    import json

    from ..embedded import ship

    if not Path(args.lora).is_file():
        raise FileNotFoundError(f"{args.lora} does not exist: give the file finetune-lora wrote (RUN/lora.safetensors).")
    if (args.color is None) == (args.shape is None):
        raise ValueError("give what the LoRA teaches: --color (such as purple) or --shape (such as star).")
    m = ship.ship_lora(Path(args.lora), Path(args.dest), command=args.command, color=args.color, shape=args.shape)
    print(json.dumps(m["quality"]))
    return 0


# command -> (what, the trainer that writes it, its folder in a run, ship's function, where it ships, how measured)
SHIPPED_FOLDERS = {
    "ship-tiny-vae": ("tiny VAE", "distill-vae", "RUN/taesd", "ship_tiny_vae", "weights/default-tiny-vae",
                      "against the embedded model's VAE"),
    "ship-controlnet": ("ControlNet", "train-controlnet", "RUN/controlnet", "ship_controlnet",
                        "weights/controlnets/edges", "on hold-out layouts"),
}


def cmd_ship_folder(args: argparse.Namespace) -> int:
    """ship-tiny-vae, ship-controlnet: measure a trained diffusers folder and copy it with its manifest."""
    import json

    from ..embedded import ship

    what, trainer, where, fn, _, _ = SHIPPED_FOLDERS[args.command_name]
    if not (Path(args.folder) / "config.json").is_file():
        raise FileNotFoundError(f"{args.folder} is not a {what} folder: give the one {trainer} wrote ({where}).")
    print(json.dumps(getattr(ship, fn)(Path(args.folder), Path(args.dest), command=args.command)["quality"]))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..embedded import recipe

    print(recipe.run(config_from(args, recipe.RecipeConfig)))
    return 0


def cmd_finetune_lora(args: argparse.Namespace) -> int:
    from ..training import finetune

    if args.prior_prompts_file is not None:
        if not args.prior_prompts_file.is_file():
            raise FileNotFoundError(f"--prior-prompts-file {args.prior_prompts_file} does not exist: give a text "
                                    f"file with one prompt per line.")
        lines = args.prior_prompts_file.read_text().splitlines()
        args.prior_prompts = args.prior_prompts + [ln.strip() for ln in lines if ln.strip()]
    print(finetune.run(config_from(args, finetune.LoraTrainConfig)))
    return 0


def cmd_distill_lcm(args: argparse.Namespace) -> int:
    from ..training import consistency

    print(consistency.run(config_from(args, consistency.LcmDistillConfig)))
    return 0


def cmd_distill_vae(args: argparse.Namespace) -> int:
    from ..training import tiny_vae

    print(tiny_vae.run(config_from(args, tiny_vae.TinyVaeConfig)))
    return 0


def cmd_train_controlnet(args: argparse.Namespace) -> int:
    from ..training import controlnet

    print(controlnet.run(config_from(args, controlnet.ControlNetTrainConfig)))
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from .. import metadata
    from ..images import grid

    if args.x is not None or args.matrix:  # A1111's X/Y/Z plot, or its prompt matrix
        from .plot import cmd_matrix, cmd_xyz

        return cmd_matrix(args) if args.matrix else cmd_xyz(args)
    prompts = args.prompts
    if args.prompts_file:
        prompts = prompts + [ln.strip() for ln in Path(args.prompts_file).read_text().splitlines() if ln.strip()]
    if not prompts:
        raise ValueError("no prompts: give them as arguments or with --prompts-file FILE (one per line).")
    metadata.check_writable([Path(args.output)], args.force)
    refiner = load_refiner(args)
    pipe = load_model(args)
    images = pipe.generate(prompts, seed=args.seed, steps=args.steps, guidance=args.guidance,
                           scheduler=args.scheduler, refiner=refiner)
    sheet = grid(images, args.cols or min(len(images), 7), labels=None if args.no_labels else prompts)
    text = f"grid of {len(prompts)} prompts\n" + images[0].info["parameters"].splitlines()[-1]
    print(metadata.save_png(sheet, Path(args.output), text, force=args.force))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from ..embedded import quality

    loras = [lora_spec(spec) for spec in args.lora]
    pipe = load_model(args)
    for path, scale in loras:
        pipe.load_lora(path, scale=scale)
    vocab = {k: tuple(v) for k, v in (("colors", args.colors), ("kinds", args.shapes)) if v}
    prompts = quality.adherence_prompts(**vocab, backgrounds=args.backgrounds) if vocab else None
    report = quality.adherence(pipe, prompts=prompts,
                               seeds=tuple(args.seeds), steps=args.steps, guidance=args.guidance)
    print(json.dumps(report.summary()))
    return 0


def cmd_ship(args: argparse.Namespace) -> int:
    import json

    from ..embedded import ship

    if not (Path(args.model) / "recipe.json").is_file():
        raise FileNotFoundError(f"{args.model} has no recipe.json: give the model folder that "
                                f"`latentgen train --out RUN` exported (RUN/model).")
    if args.inpainting is not None and not (Path(args.inpainting) / "inpainting.json").is_file():
        raise FileNotFoundError(f"--inpainting {args.inpainting} has no inpainting.json: give the folder that "
                                f"`latentgen train --out RUN` exported (RUN/inpainting-model).")
    m = ship.ship(Path(args.model), Path(args.dest), command=args.command, inpainting=args.inpainting)
    print(json.dumps({**m["quality"], "inpaint": m["edit_quality"]["inpaint"]}))
    return 0


def add_parsers(sub) -> None:
    from ..embedded.recipe_config import RecipeConfig  # light: no torch while the parser is built

    t = sub.add_parser("train", help="train the embedded model's recipe on the flat-shapes world",
                       description="Train the VAE, then text encoder + U-Net, then the inpainting variant, then "
                                   "the VAE decoder alone (--init: continue a model, stages 3-4 only); "
                                   "resumes from checkpoints in --out.")
    add_config_args(t, RecipeConfig)
    t.set_defaults(func=cmd_train)
    _add_lora_parsers(sub)
    gr = sub.add_parser("grid", help="one image per prompt, tiled into a labelled sheet; with --x: A1111's X/Y/Z "
                                     "plot of one prompt over up to three settings")
    gr.add_argument("prompts", nargs="*")
    gr.add_argument("--prompts-file", default=None, help="more prompts, one per line")
    gr.add_argument("--cols", type=positive_int, default=None)
    gr.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    gr.add_argument("--steps", type=positive_int, default=None)
    gr.add_argument("--guidance", type=finite_float, default=None)
    gr.add_argument("--scheduler", type=scheduler_name, default=None)
    gr.add_argument("--no-labels", action="store_true")
    gr.add_argument("--negative", default=None, help="negative prompt (--x plots)")
    gr.add_argument("--width", type=positive_int, default=None, help="(--x plots)")
    gr.add_argument("--height", type=positive_int, default=None, help="(--x plots)")
    add_axes(gr)
    add_matrix(gr)
    add_picture(gr)
    gr.add_argument("--styles-file", type=Path, default=None, metavar="CSV",
                    help="A1111's styles.csv whose styles a 'Styles' axis names")
    gr.add_argument("-o", "--output", required=True)
    gr.add_argument("--force", action="store_true")
    add_model_args(gr)
    add_refiner_args(gr)  # --x 'Refiner switch at: ...' moves its hand-over
    gr.set_defaults(func=cmd_grid)
    ev = sub.add_parser("eval", help="prompt adherence on the flat-shapes world (42 prompts x seeds)")
    ev.add_argument("--seeds", type=int, nargs="+", default=[0, 1000])
    ev.add_argument("--steps", type=positive_int, default=20)
    ev.add_argument("--guidance", type=finite_float, default=None)
    ev.add_argument("--colors", nargs="+", default=None, help="shape colors of the prompts (default: the base seven)")
    ev.add_argument("--shapes", nargs="+", default=None, help="shapes of the prompts (default: circle square triangle)")
    ev.add_argument("--backgrounds", type=positive_int, default=2, help="backgrounds per color x shape")
    ev.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]")
    add_model_args(ev)
    ev.set_defaults(func=cmd_eval)
    _add_ship_parsers(sub)
    sd = sub.add_parser("shapes-data", help="write procedural flat-shape images with .txt captions (for finetune-lora)")
    sd.add_argument("folder")
    sd.add_argument("-n", type=positive_int, default=200)
    sd.add_argument("--seed", type=int, default=0)
    sd.add_argument("--size", type=positive_int, default=64)
    sd.add_argument("--colors", nargs="+", default=None, help="shape colors (default: the base seven)")
    sd.add_argument("--shapes", nargs="+", default=None, help="circle square triangle star")
    sd.add_argument("--radius", default=None, metavar="LOW-HIGH",
                    help="half the shape's extent, as fractions of the side (default 0.18-0.34, the base data's)")
    sd.set_defaults(func=cmd_shapes_data)


def _add_lora_parsers(sub) -> None:
    from ..training import configs  # light: no torch while the parser is built

    ft = sub.add_parser("finetune-lora", help="fine-tune LoRA adapters on a folder of captioned images",
                        description="LoRA adapters (peft) on the U-Net's attention (and the text encoder's); "
                                    "resumes from checkpoints in --out with --resume.")
    add_config_args(ft, configs.LoraTrainConfig, positional=("data",))
    ft.add_argument("--prior-prompts-file", type=Path, default=None, help="more prior prompts, one per line")
    ft.set_defaults(func=cmd_finetune_lora)
    lc = sub.add_parser("distill-lcm", help="distill the model into an LCM-LoRA that draws in 4 steps (lcm sampler, "
                                            "guidance 1), on a folder of captioned images",
                        description="Latent consistency distillation (LCM-LoRA): the model with its guidance "
                                    "teaches itself plus a LoRA to jump along its sampling path; the LoRA's header "
                                    "recommends the lcm sampler, 4 steps, guidance 1. For the embedded model: "
                                    "latentgen shapes-data DATA -n 1000, then distill-lcm DATA. Resumes from "
                                    "checkpoints in --out with --resume.")
    add_config_args(lc, configs.LcmDistillConfig, positional=("data",))
    lc.set_defaults(func=cmd_distill_lcm)
    tv = sub.add_parser("distill-vae", help="distill the model's VAE into a tiny one (TAESD's architecture) for fast "
                                            "previews and decoding, on a folder of images",
                        description="The full VAE teaches a diffusers AutoencoderTiny: its encoder the posterior "
                                    "means, its decoder what the full decoder draws. Writes <out>/<name>/, a folder "
                                    "that --vae, --preview-vae and latentgen.load_tiny_vae read. Resumes from "
                                    "checkpoints in --out with --resume.")
    add_config_args(tv, configs.TinyVaeConfig, positional=("data",))
    tv.set_defaults(func=cmd_distill_vae)
    cn = sub.add_parser("train-controlnet", help="train a ControlNet for the model on a folder of captioned images, "
                                                 "their control maps made by a preprocessor (canny) or given",
                        description="ControlNet (Zhang et al. 2023): a copy of the U-Net's encoder with zero "
                                    "convolutions learns to steer the frozen model from a control map. Writes "
                                    "<out>/<name>/, a folder --control-model and latentgen.Control read. Resumes "
                                    "from checkpoints in --out with --resume.")
    add_config_args(cn, configs.ControlNetTrainConfig, positional=("data",))
    cn.set_defaults(func=cmd_train_controlnet)


def _add_ship_parsers(sub) -> None:
    sh = sub.add_parser("ship", help="measure a trained model and copy it with its manifest (sha256s, recipe, quality)")
    sh.add_argument("model", help="RUN/model, as exported by latentgen train")
    sh.add_argument("dest", help="e.g. weights/default")
    sh.add_argument("--inpainting", type=Path, default=None,
                    help="RUN/inpainting-model: the inpainting U-Net, shipped to DEST-inpainting")
    sh.add_argument("--command", default="latentgen train --out runs/default",
                    help="the training command recorded in the manifest")
    sh.set_defaults(func=cmd_ship)
    sl = sub.add_parser("ship-lora", help="measure a LoRA that teaches a color or a shape and copy it with its manifest")
    sl.add_argument("lora", help="RUN/lora.safetensors from finetune-lora")
    sl.add_argument("dest", help="e.g. weights/loras/purple (writes .safetensors, .kohya.safetensors, .json)")
    sl.add_argument("--color", default=None, help="the new color it teaches (purple)")
    sl.add_argument("--shape", default=None, help="the new shape it teaches (star)")
    sl.add_argument("--command", required=True, help="the training commands recorded in the manifest")
    sl.set_defaults(func=cmd_ship_lora)
    for name, (what, trainer, where, _, dest, how) in SHIPPED_FOLDERS.items():
        sf = sub.add_parser(name, help=f"measure a {what} {how} and copy it with its manifest")
        sf.add_argument("folder", help=f"{where} from {trainer}")
        sf.add_argument("dest", help=f"e.g. {dest} (a folder, replaced whole)")
        sf.add_argument("--command", required=True, help="the training commands recorded in the manifest")
        sf.set_defaults(func=cmd_ship_folder, command_name=name)
