"""Stage 4 of the recipe: the embedded model's inpainting variant, made as SD 1.5-inpainting was made
from SD 1.2 (Rombach et al. 2022, https://arxiv.org/abs/2112.10752; the model card of
runwayml/stable-diffusion-inpainting): the U-Net gets 5 extra input channels, the mask at latent size (1)
and the latents of the masked image (4), initialised to zero so that training starts from the base
model's function, and it learns on random masks (``MASKS``); the "whole" kind covers the whole image,
so the variant still draws from text alone.

    U-Net input (B, 9, 8, 8) = cat(noisy latents (4), mask (1), latents of the masked image (4))

The text encoder and VAE stay the base model's (frozen), so the variant ships as a U-Net alone
(``weights/default-inpainting/unet``) and ``Pipeline.inpaint`` on the default model runs it.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from PIL import Image, ImageDraw

from .. import files, starts
from ..training import loop as train
from . import shapes
from .autoencoder import scenes, to_pixels
from .quality import inpaint_hole

# Mask kinds and how often each is drawn: "object" is a rectangular hole (10-50% of the image, aspect
# 3:4..4:3, anywhere, on or off the 8-pixel grid) that the scene's shape fills, so the model learns to draw
# the largest shape a hole holds; "box", "blob" and "stroke" fall anywhere over the scene as drawn, on and
# off the grid; "whole" repaints everything (text-to-image).
MASKS = {"object": 0.5, "box": 0.15, "blob": 0.1, "stroke": 0.1, "whole": 0.15}


def random_example(rng: random.Random, size: int, scene: shapes.Scene) \
        -> tuple[shapes.Scene, Image.Image, np.ndarray]:
    """A training example from a scene: (the scene drawn, its (size, size) picture, a float32 mask, 1 =
    repaint) with a mask kind drawn from ``MASKS``. An "object" hole moves and sizes the shape to fill it,
    centered; a triangle is stretched to the whole hole (a triangle of any proportions is still a
    triangle); circles and squares keep their aspect (an ellipse is no circle)."""
    kind = rng.choices(list(MASKS), weights=list(MASKS.values()))[0]
    if kind == "whole":
        return scene, shapes.draw(scene, size), np.ones((size, size), np.float32)
    im = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(im)
    picture = None  # the scene as drawn, unless an object hole redraws it
    if kind == "object":
        x0, y0, x1, y1 = inpaint_hole(rng, size, on_grid=rng.random() < 0.5, low=0.1, high=0.5)  # exclusive ends
        m = rng.uniform(0, 1.5)  # the shape's margin inside the hole
        scene = replace(scene, cx=(x0 + x1 - 1) / 2, cy=(y0 + y1 - 1) / 2,
                        r=min(min(x1 - x0, y1 - y0) / 2 - 0.5 - m, 0.34 * size))
        if scene.shape == "triangle":
            picture = Image.new("RGB", (size, size), shapes.PALETTE[scene.background])
            ImageDraw.Draw(picture).polygon([((x0 + x1 - 1) / 2, y0 + m), (x1 - 1 - m, y1 - 1 - m),
                                             (x0 + m, y1 - 1 - m)], fill=shapes.PALETTE[scene.color])
        d.rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
    elif kind == "box":
        w, h = (rng.uniform(0.25, 0.7) * size for _ in range(2))
        x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
        d.rectangle((x, y, x + w, y + h), fill=255)
    elif kind == "blob":
        for _ in range(rng.randint(1, 3)):
            x, y, rx, ry = (rng.uniform(0.1, 0.9) * size, rng.uniform(0.1, 0.9) * size,
                            rng.uniform(0.1, 0.3) * size, rng.uniform(0.1, 0.3) * size)
            d.ellipse((x - rx, y - ry, x + rx, y + ry), fill=255)
    else:  # a thick random stroke of 2-4 segments
        pts = [(rng.uniform(0, size), rng.uniform(0, size)) for _ in range(rng.randint(3, 5))]
        d.line(pts, fill=255, width=rng.randint(6, 16), joint="curve")
    picture = shapes.draw(scene, size) if picture is None else picture
    return scene, picture, (np.asarray(im, np.float32) >= 128).astype(np.float32)


def nine_channel_unet(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """A copy of a 4-channel U-Net taking 9 channels; the 5 new input channels of ``conv_in`` start at zero."""
    cfg = dict(unet.config, in_channels=unet.config.in_channels + 1 + unet.config.out_channels)
    out = UNet2DConditionModel.from_config(cfg).to(unet.device, unet.dtype)
    state = dict(unet.state_dict())  # load_state_dict copies: the copy shares no tensor with ``unet``
    w = state["conv_in.weight"]  # (C, 4, 3, 3) -> (C, 9, 3, 3)
    state["conv_in.weight"] = torch.cat([w, w.new_zeros(w.shape[0], cfg["in_channels"] - w.shape[1], *w.shape[2:])], 1)
    out.load_state_dict(state)
    return out


class InpaintObjective(torch.nn.Module):
    """The denoising loss of the 9-channel U-Net given text states, latents and the (mask, masked) condition."""

    def __init__(self, unet, noise_scheduler, snr_gamma: float | None):
        super().__init__()
        self.unet, self.noise_scheduler, self.snr_gamma = unet, noise_scheduler, snr_gamma

    def forward(self, hidden: torch.Tensor, latents: torch.Tensor, condition: torch.Tensor, generator):
        return train.diffusion_loss(self.unet, hidden, latents, self.noise_scheduler, generator,
                                    snr_gamma=self.snr_gamma, condition=condition)


def train_inpainting(cfg, c, run_id: dict) -> UNet2DConditionModel:
    """Stage 4: a 9-channel copy of the trained U-Net, fine-tuned on random masks (text encoder, VAE frozen)."""
    from accelerate import Accelerator

    acc = Accelerator()
    size, vae, sf = c.defaults.width, c.vae, c.vae.config.scaling_factor
    unet = nine_channel_unet(c.unet).requires_grad_(True)
    lat = (size // 8, size // 8)

    @torch.no_grad()
    def batch_fn(step, micro, a):
        batch = scenes(cfg.seed, "inpaint", step, micro, a.process_index, cfg.batch, size)
        rng = random.Random(f"{cfg.seed}:inpaint-mask:{step}:{micro}:{a.process_index}")
        examples = [random_example(rng, size, s) for s in batch]
        mask = torch.from_numpy(np.stack([m for _, _, m in examples]))[:, None]  # (B, 1, H, W)
        pixels = to_pixels([p for _, p, _ in examples])  # (B, 3, H, W)
        gen = train.step_generator(cfg.seed, step, micro, a.process_index)
        z, zm = (train.sample_latents(p.mean, p.std, gen) * sf for p in
                 (vae.encode(x.to(a.device)).latent_dist for x in (pixels, pixels * (mask < 0.5))))
        captions = train.drop_captions([s.caption for s in batch], cfg.caption_dropout, cfg.seed, step, micro,
                                       a.process_index)
        hidden = c.text_encoder(train.tokenize(c.tokenizer, captions).to(a.device))[0]  # (B, 77, D)
        m = starts.to_latent_mask(mask, lat).to(a.device)  # (B, 1, h, w), as Pipeline.inpaint makes it
        return {"hidden": hidden, "latents": z, "condition": torch.cat([m, zm], 1), "generator": gen}

    train.run(train.LoopConfig(out=cfg.out / "inpainting", steps=cfg.inpaint_steps, lr=cfg.inpaint_lr, warmup=50,
                               lr_schedule="cosine", seed=cfg.seed, save_every=cfg.save_every),
              InpaintObjective(unet, DDPMScheduler.from_config(c.scheduler.config), cfg.snr_gamma), batch_fn,
              run_id=run_id, accelerator=acc, desc="inpaint")
    return unet.requires_grad_(False).eval()


def export(unet: UNet2DConditionModel, folder: Path, *, base: str, recipe: dict, seconds: float) -> None:
    """Write the variant as ``folder/unet`` (a diffusers U-Net) with ``inpainting.json`` naming its base model."""
    with files.atomic_folder(folder) as tmp:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        (tmp / "inpainting.json").write_text(json.dumps(
            {"base": base, "masks": MASKS, "recipe": recipe, "train_seconds": round(seconds, 1),
             "machine": files.machine()}, indent=1) + "\n")

