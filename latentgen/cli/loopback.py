"""``latentgen img2img --loopback N``: A1111's Loopback script (``latentgen.canvas.loopback``), the picture redrawn N
times, each loop from the last one's picture, the strength moving from --strength to --final-strength.

    latentgen img2img "a yellow circle" --image in.png --strength 0.6 --loopback 4 --final-strength 0.3 -o out.png
"""

from __future__ import annotations

import argparse

from .args import finite_float


def add_loopback_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Loopback", "redraw the picture again and again, each loop from the last one's picture "
                                         "(A1111's Loopback script); -o gets each picture's last loop")
    g.add_argument("--loopback", type=int, default=None, metavar="LOOPS", help="how many loops (A1111's 4); turns it on")
    g.add_argument("--final-strength", type=finite_float, default=0.5, help="the last loop's strength (A1111's 0.5)")
    g.add_argument("--curve", choices=("Linear", "Aggressive", "Lazy"), default="Linear",
                   help="how the strength moves to --final-strength (A1111's denoising strength curve)")


def loopback_call(args: argparse.Namespace, image):
    """``latentgen img2img --loopback``'s call for ``_render``: each picture's last loop (checked before the model
    loads)."""
    from ..canvas import loopback

    loopback.strengths(args.loopback, args.strength, args.final_strength, args.curve)
    return lambda pipe, **kw: [loops[-1] for loops in loopback.loopback(
        pipe, args.prompt, image, loops=args.loopback, final_strength=args.final_strength, curve=args.curve,
        strength=args.strength, max_pixels=args.max_pixels, width=args.width, height=args.height,
        resize_mode=args.resize_mode, **kw)]
