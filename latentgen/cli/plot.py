"""``latentgen grid PROMPT --x ...``: A1111's X/Y/Z plot (``latentgen.plot.xyz``): one picture per combination of up
to three axes, as a labeled grid (OUT.png, with the first cell's parameters) and the cells (OUT-1.png, ...);
``latentgen grid "BASE|PART|PART" --matrix``: A1111's Prompt matrix (``latentgen.plot.matrix``), saved the same way.
Both draw from a picture with ``--image`` (img2img; ``--mask``: inpainting), as on A1111's img2img tab.

    latentgen grid "a red circle" --x "Steps: 10-30 (+10)" --y "CFG Scale: 4, 7" -o grid.png
    latentgen grid "a circle|red|on a blue background" --matrix -o matrix.png
    latentgen grid "a yellow circle" --image in.png --x "Denoising: 0.3, 0.5, 0.7" -o denoising.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import load_model, load_refiner


def axis_spec(s: str):
    """'LABEL: VALUES' -> ``latentgen.plot.xyz.Axis`` (checked before any model loads)."""
    from ..plot import xyz

    label, sep, values = s.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"{s!r} is not an axis: write 'LABEL: VALUES', such as 'Steps: 10, 20'")
    try:
        return xyz.axis(label.strip(), values)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def picture(args: argparse.Namespace) -> dict:
    """The plot's calls from a picture (A1111's img2img tab): ``--image`` (img2img), with ``--mask`` (inpainting), at
    ``--strength``; opened and checked before any model loads. Nothing without ``--image``."""
    from ..images import open_image
    from ..request import strength

    if args.image is None:
        if args.mask is not None or args.strength is not None:
            raise ValueError("--mask and --strength draw from a picture: give it with --image IN.png.")
        return {}
    call = {"image": open_image(args.image, "--image"), "strength": strength(
        args.strength if args.strength is not None else 1.0 if args.mask else 0.75)}
    if args.mask is not None:
        if args.width or args.height:
            raise ValueError("--width/--height: inpainting (--mask) draws at the picture's own size; leave them out.")
        call["mask"] = open_image(args.mask, "--mask")
    return call


def cmd_xyz(args: argparse.Namespace) -> int:
    """``latentgen grid PROMPT --x ...``: the plot, the grid at OUT.png and the cells beside it."""
    from .. import metadata
    from ..plot import xyz

    if len(args.prompts) != 1 or args.prompts_file:
        raise ValueError("an X/Y/Z plot (--x) draws one prompt: give exactly one, and vary it with "
                         "--x 'Prompt S/R: red, blue'.")
    axes = [a for a in (args.x, args.y, args.z) if a is not None]
    count = 1 + len(axes[0].values) * (len(axes[1].values) if len(axes) > 1 else 1) * \
        (len(axes[2].values) if len(axes) > 2 else 1)
    paths = metadata.output_paths(args.output, count)
    paths[0] = Path(args.output)
    metadata.check_writable(paths, args.force)
    from ..text import styles

    table = styles.read(args.styles_file) if args.styles_file else None  # a bad file fails before the model loads
    refiner, start = load_refiner(args), picture(args)  # the refiner's switch, the picture: before --model loads
    pipe = load_model(args)
    call = {k: v for k, v in dict(seed=args.seed, steps=args.steps, guidance=args.guidance, width=args.width,
                                  height=args.height, scheduler=args.scheduler, negative_prompt=args.negative,
                                  refiner=refiner).items()
            if v is not None} | start
    from contextlib import nullcontext

    # "Checkpoint name" values: loaded with this command's --vae, --backend, --dtype, when their cells draw
    p = xyz.plot(pipe, args.prompts[0], axes, models=lambda path: nullcontext(load_model(args, path, prediction_type=None)),
                 styles=table, **call)
    return _saved(p, paths, args.force)


def _saved(p, paths: list[Path], force: bool) -> int:
    """A plot's grid at ``paths[0]`` (with its first cell's parameters), its cells at the rest; each path printed."""
    from .. import metadata

    print(metadata.save_png(p.grid, paths[0], p.cells[0].info.get("parameters"), force=force))
    for image, path in zip(p.cells, paths[1:]):
        print(metadata.save_png(image, path, image.info.get("parameters"), force=force))
    return 0


def cmd_matrix(args: argparse.Namespace) -> int:
    """``latentgen grid "BASE|PART|..." --matrix``: the prompt matrix, the grid at OUT.png and the cells beside it."""
    from .. import metadata
    from ..plot import matrix

    if len(args.prompts) != 1 or args.prompts_file or args.x is not None:
        raise ValueError("a prompt matrix (--matrix) draws one prompt, without --x: give exactly one, such as "
                         "'a cat|smiling|wearing a hat'.")
    options = dict(at_start=args.matrix_at_start, different_seeds=args.matrix_random_seeds,
                   negative=args.matrix_negative, joiner=args.matrix_joiner)
    count = len(matrix.prompts(args.negative or "" if args.matrix_negative else args.prompts[0], options["at_start"],
                               options["joiner"], "--negative" if args.matrix_negative else "prompt"))  # before loading
    paths = metadata.output_paths(args.output, 1 + count)
    paths[0] = Path(args.output)
    metadata.check_writable(paths, args.force)
    refiner, start = load_refiner(args), picture(args)
    pipe = load_model(args)
    call = {k: v for k, v in dict(steps=args.steps, guidance=args.guidance, width=args.width, height=args.height,
                                  scheduler=args.scheduler, negative_prompt=args.negative, refiner=refiner).items()
            if v is not None} | start
    return _saved(matrix.matrix(pipe, args.prompts[0], seed=args.seed, **options, **call), paths, args.force)


def add_matrix(g: argparse.ArgumentParser) -> None:
    """The --matrix options of ``latentgen grid``."""
    g.add_argument("--matrix", action="store_true", help="A1111's Prompt matrix: the prompt 'BASE|PART|PART...' drawn "
                                                        "with every combination of its parts, as a labeled grid")
    g.add_argument("--matrix-at-start", action="store_true", help="the parts before the base (Set at prompt start)")
    g.add_argument("--matrix-random-seeds", action="store_true", help="cell k with seed + k (Random seeds)")
    g.add_argument("--matrix-negative", action="store_true", help="vary the negative prompt (--negative) instead")
    g.add_argument("--matrix-joiner", choices=("comma", "space"), default="comma", help="how the parts are joined")


def add_picture(g: argparse.ArgumentParser) -> None:
    """The --image, --mask, --strength options of ``latentgen grid``'s plots (A1111's img2img tab)."""
    g.add_argument("--image", default=None, help="(--x plots, --matrix) draw every cell from this picture (img2img; "
                                                 "'Denoising' axis: its strength)")
    g.add_argument("--mask", default=None, help="(with --image) inpaint the white part of this mask in every cell")
    g.add_argument("--strength", type=float, default=None, help="(with --image) 0 keeps the picture, 1 repaints it "
                                                                "(default 0.75; 1 with --mask)")


def add_axes(g: argparse.ArgumentParser) -> None:
    """The --x, --y, --z axes of ``latentgen grid``."""
    for name in ("x", "y", "z"):
        g.add_argument(f"--{name}", type=axis_spec, default=None, metavar="'LABEL: VALUES'",
                       help=f"an X/Y/Z plot's {name} axis: Seed, Var. seed, Var. strength, Steps, Hires steps, CFG "
                            f"Scale, Prompt S/R, Prompt order, Sampler, Schedule type, Hires sampler, Checkpoint name, "
                            f"VAE, Styles, Clip skip, Denoising, Hires upscaler, Size, LoRA weight; values as A1111's "
                            f"('10-30 (+10)', '4, 7')" if name == "x"
                       else f"an X/Y/Z plot's {name} axis")
