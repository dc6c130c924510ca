"""A ControlNet on OpenVINO (``Runtime.for_controlnet``): converted as the U-Net is (``openvino.convert``: a trace of
(x, t, context, hint) -> its residuals at weight 1) and compiled per input shape, an even batch (CFG's halves) as
two streams side by side. ``latentgen.control.residuals`` scales the residuals by the unit's weight and mode, and
the U-Net traced with residual inputs adds them (``Compiled`` with ``with_residuals``).

The contract, torch or compiled: ``run(x, t, context, hint[, added]) -> (down, mid)`` with x (B, 4, h, w),
context (B, 77 * k, D), hint (B, 3, 8h, 8w) in [0, 1] (8: the VAE's factor), ``added`` an SDXL ControlNet's
{"text_embeds": (B, P), "time_ids": (B, 6)}; down a list of (B, C_i, h_i, w_i), mid (B, C, h / 8, w / 8) for SD's
four levels (SDXL's three: h / 4).
"""

from __future__ import annotations

import torch

from .openvino import Compiled


def run_torch(net, x: torch.Tensor, t, context: torch.Tensor, hint: torch.Tensor,
              added: dict | None = None) -> tuple[list, torch.Tensor]:
    """The ControlNet ``net`` on torch: its residuals at weight 1 (``added``: an SDXL ControlNet's pooled text and
    size numbers, ``added_cond_kwargs``)."""
    down, mid = net(x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False,
                    **({} if added is None else {"added_cond_kwargs": added}))
    return list(down), mid


class CompiledControlNet(Compiled):
    """A ControlNet compiled by OpenVINO: ``Compiled``'s shapes, streams and lock, without CFG's shared prefix
    (the hint enters with x, and a ControlNet is the encoder half of a U-Net: little to share)."""

    def shares(self, x: torch.Tensor) -> bool:
        return False

    def __call__(self, x: torch.Tensor, t, context: torch.Tensor, hint: torch.Tensor,
                 added: dict | None = None) -> tuple[list, torch.Tensor]:
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            return run_torch(self.unet, x, t, context, hint, added)
        added_inputs = [] if added is None else [added["text_embeds"], added["time_ids"]]
        with self.lock:
            out = [torch.from_numpy(a).to(x.dtype) for a in self._run(x, t, [context, hint, *added_inputs])]
        return out[:-1], out[-1]
