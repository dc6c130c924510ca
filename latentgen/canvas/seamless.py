"""A1111's "Tiling" (``tiling=True``): pictures that tile seamlessly, their left edge running on into their right
and their top into their bottom, for textures and wallpapers. While the call runs, every convolution of its networks
(the U-Net, the VAE, ControlNets, a refiner, a tiny VAE) pads circularly (``padding_mode="circular"``) instead of with
zeros, as A1111 switches every ``Conv2d`` of its model; the U-Net and the VAE's decoder then compute on a torus
(attention and GroupNorm see all positions alike), so the latents and the decoded picture wrap around (the VAE
encoder's downsampling pads explicitly, as A1111's). The convolutions that padded with zeros before get zeros again
when the call ends, whatever it raised. While a tiling call runs, the pipeline's networks wrap for every thread
using them (as LoRAs change the pipeline for every thread): threads that draw plain and tiling pictures need a
pipeline each.

A picture drawn so is a torus picture: drawn from its start noise rolled by k latent cells (k a multiple of the
U-Net's downsampling), it is the same picture rolled by k * f pixels (tests/canvas/test_seamless.py), and the
compiled backends key their converted graphs by the padding (``latentgen.backends.weights.padding``).

A tiled VAE decode (``memory.Limits.vae_tiling``) would wrap each tile onto itself: a tiling call decodes each
picture whole, and one too large for that is refused before drawing.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch


def networks(pipe, unet=None, refiner=None, controls=(), second=None) -> list[torch.nn.Module]:
    """The networks a call of ``pipe`` runs: its U-Net (``unet``, the inpainting one, when given), its VAE and tiny
    preview VAE, ``refiner``'s U-Net, the ControlNets of ``controls`` (``latentgen.control.units.Prepared``
    or None each: the first pass's, the hires pass's) and the hires pass's own model (``second``, a
    ``latentgen.upscale.hires.SecondPass``: its U-Net and VAE)."""
    nets = [unet if unet is not None else pipe.unet, pipe.vae, pipe.preview_vae]
    nets += [refiner.model.unet] if refiner is not None else []
    nets += [second.model.unet, second.model.vae] if second is not None and second.other else []
    nets += [m for c in controls if c is not None for m in c.models]
    return [n for n in nets if isinstance(n, torch.nn.Module)]


_WRAPPED: dict[int, list] = {}  # id(conv) -> [conv, calls that wrap it]: overlapping tiling calls (threads)
_LOCK = threading.Lock()


@contextmanager
def circular(modules: list[torch.nn.Module]):
    """While open, every zero-padded ``Conv2d`` in ``modules`` pads circularly (none given: nothing changes). Calls
    that overlap (threads on one pipeline) count: the last one out pads with zeros again. One padded otherwise by its
    owner (circular already, reflect) is left as it is."""
    mine, convs = [], {id(c): c for m in modules for c in m.modules() if isinstance(c, torch.nn.Conv2d)}
    try:
        with _LOCK:
            for c in convs.values():
                if id(c) in _WRAPPED:
                    _WRAPPED[id(c)][1] += 1
                elif c.padding_mode == "zeros" and any(c._reversed_padding_repeated_twice):
                    c.padding_mode, _WRAPPED[id(c)] = "circular", [c, 1]
                else:
                    continue
                mine.append(c)
        yield
    finally:
        with _LOCK:
            for c in mine:
                held = _WRAPPED[id(c)]
                held[1] -= 1
                if not held[1]:
                    c.padding_mode = "zeros"
                    del _WRAPPED[id(c)]


def wraps(module: torch.nn.Module) -> bool:
    """Whether a tiling call wraps ``module`` now (one of its convolutions pads circularly for a call)."""
    with _LOCK:
        return any(id(c) in _WRAPPED for c in module.modules() if isinstance(c, torch.nn.Conv2d))


def check_decode(plan, tiling: bool, limits, vae=None) -> None:
    """A tiling call's picture is decoded whole: refuse a ``plan`` that tiles the decode, before drawing (a tiny VAE,
    which decodes whole anyway, passes)."""
    if tiling and plan.vae_tiling and (vae is None or hasattr(vae, "tiled_decode")):
        why = "vae_tiling=True is set in pipe.limits" if limits.vae_tiling else \
            "the whole picture's VAE decode does not fit in the free memory"
        raise ValueError(f"tiling=True decodes each picture whole (a tiled decode would wrap each tile onto itself), "
                         f"and {why}: draw a smaller picture, or set pipe.limits.vae_tiling = False.")
