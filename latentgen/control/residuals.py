"""The ControlNet units of a chunk as the loop's ``unet_inputs`` hook: at step i each active unit runs its
ControlNet on the U-Net's input (the latent channels: a 9-channel inpainting U-Net's mask and masked image stay
the U-Net's), the text context and its control image, and the residuals of all units are summed into the U-Net's
skip connections (diffusers' ``MultiControlNetModel``). Under CFG the rows are [uncond; cond] (B each, K cond
rows per image with AND): "controlnet" mode runs the conditional rows only and leaves the unconditional rows
without control, as diffusers' guess mode."""

from __future__ import annotations

import torch

from .units import Control, Prepared

SOFT = 0.825  # A1111's soft injection: residual k of n scaled SOFT ** (n - 1 - k) ("My prompt is more important")


class Residuals:
    """``unet_inputs(i, x, t, context)`` for a call's ``Prepared`` units over a loop of ``steps`` steps; ``b``: the
    images of the chunk, ``latent_channels``: the VAE's."""

    def __init__(self, control: Prepared, *, steps: int, b: int, cfg: bool, latent_channels: int):
        self.units, self.models, self.images = control.units, control.models, control.images
        self.steps, self.b, self.cfg, self.c = steps, b, cfg, latent_channels

    def active(self, unit: Control, i: int) -> bool:
        """diffusers' ``controlnet_keep``: step i of n acts when start <= i / n and (i + 1) / n <= end."""
        return not (i / self.steps < unit.start or (i + 1) / self.steps > unit.end)

    def __call__(self, i: int, x: torch.Tensor, t, context: torch.Tensor) -> dict:
        down, mid = None, None
        x = x[:, :self.c]  # (rows, C, h, w)
        for unit, model, image in zip(self.units, self.models, self.images):
            if not self.active(unit, i):
                continue
            d, m = self._one(unit, model, image, x, t, context)
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        if down is None:
            return {}
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    def _one(self, unit, model, image, x, t, context):
        guess = unit.mode == "controlnet" and self.cfg
        rows = slice(self.b, None) if guess else slice(None)  # guess mode: the conditional rows only
        xs, ctx = x[rows], context[rows]
        hint = image.to(xs.device, xs.dtype).expand(len(xs), -1, -1, -1)
        scale = unit.weight if unit.mode != "prompt" else 1.0
        down, mid = model(xs, t, encoder_hidden_states=ctx, controlnet_cond=hint, conditioning_scale=scale,
                          guess_mode=unit.mode == "controlnet", return_dict=False)
        if unit.mode == "prompt":  # soft injection, the deep residuals strongest
            n = len(down) + 1
            down = [d * (unit.weight * SOFT ** (n - 1 - k)) for k, d in enumerate(down)]
            mid = mid * unit.weight
        if guess:  # the unconditional rows get no control
            down = [torch.cat([torch.zeros_like(d[:self.b]), d]) for d in down]
            mid = torch.cat([torch.zeros_like(mid[:self.b]), mid])
        return down, mid
