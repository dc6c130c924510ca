"""The ControlNet units of a chunk as the loop's ``unet_inputs`` hook: at step i each active unit runs its
ControlNet on the U-Net's input (the latent channels: a 9-channel inpainting U-Net's mask and masked image stay
the U-Net's), the text context and its control image, and the residuals of all units are summed into the U-Net's
skip connections (diffusers' ``MultiControlNetModel``). Under CFG the rows are [uncond; cond] (B each, K cond
rows per image with AND): "controlnet" mode, and a ControlNet that pools its residuals (``global_pool_conditions``:
the shuffle model), run the conditional rows only and leave the unconditional rows without control, as diffusers'
guess mode and A1111."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch

from ..backends.control_graph import run_torch
from .units import Control, Prepared

SOFT = 0.825  # A1111's soft injection: residual k of n scaled SOFT ** (n - 1 - k) ("My prompt is more important")


class Residuals:
    """``unet_inputs(i, x, t, context, added)`` for a call's ``Prepared`` units over a loop of ``steps`` steps; ``b``: the
    images of the chunk, ``latent_channels``: the VAE's; ``runtime``: the pipeline's (``Runtime.for_controlnet``:
    each ControlNet compiled where the U-Net is), None: torch."""

    def __init__(self, control: Prepared, *, steps: int, b: int, cfg: bool, latent_channels: int, runtime=None):
        self.units, self.models, self.images = control.units, control.models, control.images
        self.steps, self.b, self.cfg, self.c = steps, b, cfg, latent_channels
        # what runs each ControlNet, decided once per chunk (its weights' state is checked then, not at every step)
        self.runs = [runtime.for_controlnet(m) if runtime is not None else partial(run_torch, m) for m in self.models]

    def active(self, unit: Control, i: int) -> bool:
        """diffusers' ``controlnet_keep``: step i of n acts when start <= i / n and (i + 1) / n <= end."""
        return not (i / self.steps < unit.start or (i + 1) / self.steps > unit.end)

    def __call__(self, i: int, x: torch.Tensor, t, context: torch.Tensor, added: dict | None = None) -> dict:
        down, mid = None, None
        x = x[:, :self.c]  # (rows, C, h, w)
        for unit, model, image, run in zip(self.units, self.models, self.images, self.runs):
            if not self.active(unit, i):
                continue
            d, m = self._one(unit, model, image, run, x, t, context, added)
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        if down is None:
            return {}
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    def _one(self, unit, model, image, run, x, t, context, added=None):
        pooled = bool(model.config.get("global_pool_conditions"))  # the shuffle model: diffusers' and A1111's guess mode
        guess = (unit.mode == "controlnet" or pooled) and self.cfg
        rows = slice(self.b, None) if guess else slice(None)  # guess mode: the conditional rows only
        xs, ctx = x[rows], context[rows]
        hint = image.to(xs.device, xs.dtype).expand(len(xs), -1, -1, -1)
        # at weight 1, scaled here as diffusers scales them; an SDXL ControlNet takes the pooled text and sizes too
        extra = () if added is None else ({k: v[rows] for k, v in added.items()},)
        down, mid = run(xs, t, ctx, hint, *extra)
        n = len(down) + 1
        if unit.mode == "controlnet" and not pooled:  # diffusers' guess mode: 0.1 for the shallowest to 1 for the middle block
            scales = torch.logspace(-1, 0, n, device=mid.device) * unit.weight
        elif unit.mode == "prompt":  # soft injection, the deep residuals strongest
            scales = [unit.weight * SOFT ** (n - 1 - k) for k in range(n)]
        else:
            scales = [unit.weight] * n
        down, mid = [d * s for d, s in zip(down, scales)], mid * scales[-1]
        if guess:  # the unconditional rows get no control
            down = [torch.cat([torch.zeros_like(d[:self.b]), d]) for d in down]
            mid = torch.cat([torch.zeros_like(mid[:self.b]), mid])
        return down, mid


def hooked(start, control: Prepared | None, *, b: int, cfg: bool, pipe):
    """``start`` (a ``starts.Start``) with the ControlNet residuals of ``control`` as its ``unet_inputs`` hook, over
    its own steps; as it is when ``control`` is None."""
    if control is None:
        return start
    return replace(start, hooks=replace(start.hooks, unet_inputs=Residuals(
        control, steps=len(start.timesteps), b=b, cfg=cfg, latent_channels=pipe.vae.config.latent_channels,
        runtime=pipe.runtime)))
