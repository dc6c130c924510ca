"""ControlNet training, through the one training loop (``latentgen.training.loop``).

    latentgen train-controlnet data/ --out runs/edges --preprocessor canny --steps 2000
    latentgen shapes-data runs/cn-data -n 2000                       # the embedded world: captioned flat shapes
    latentgen generate "a red circle on a blue background" --control edges.png --control-model runs/edges/controlnet

ControlNet (Zhang et al. 2023, https://arxiv.org/abs/2302.05543): a trainable copy of the U-Net's encoder (its down
blocks and middle block, initialized from the U-Net's weights: ``ControlNetModel.from_unet``) reads the noisy latents,
the text and a control map (B, 3, H, W) in [0, 1] through a small convolutional encoder, and adds its outputs to the
frozen U-Net's skip connections through zero-initialized 1x1 convolutions, so training starts from the base model
exactly. The loss is the base model's denoising loss (``loop.diffusion_loss``) with those residuals; only the
ControlNet learns. Captions are dropped with probability ``caption_dropout`` (the paper's 50%: it must learn to read
the map without the text too).

Data: a folder of captioned images (finetune-lora's layouts) and, for each, its control map: made from the image
by a ``preprocessor`` (``latentgen.control.preprocess``: canny by default), or read from ``controls`` (a folder of
maps of the same file names). Latents and maps are made once. Batches, caption dropout, noise and timesteps are
functions of (seed, step, micro-batch, process): a killed run resumes exactly.

The ControlNet is written as a diffusers folder ``<out>/<name>/`` (``config.json`` +
``diffusion_pytorch_model.safetensors``, with ``latentgen.json``: base model, preprocessor, settings, steps, time)
whole at every checkpoint; ``latentgen.Control(image, model=that folder)`` uses it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import loop as train
from ..text import xl as sdxl
from .captioned import Batches, cache_latents, prepare, read_dataset
from .configs import ControlNetTrainConfig


def control_maps(pairs: list[tuple[Path, str]], cfg: ControlNetTrainConfig, res: int) -> torch.Tensor:
    """Each image's control map (N, 3, res, res) in [0, 1]: read from ``cfg.controls`` or made by the preprocessor
    from the image as it is trained (resized and cropped to ``res``)."""
    from ..control import preprocess

    maps = []
    for path, _ in pairs:
        if cfg.controls is not None:
            found = [p for p in Path(cfg.controls).glob(path.stem + ".*") if p.suffix.lower() in (".png", ".jpg",
                                                                                                  ".jpeg", ".webp")]
            if not found:
                raise FileNotFoundError(f"no control map for {path.name} in {cfg.controls} (looked for "
                                        f"{path.stem}.png/.jpg/.webp).")
            x = (prepare(found[0], res, cfg.crop) + 1) / 2  # (1, 3, res, res) in [0, 1]
        else:
            pixels = ((prepare(path, res, cfg.crop)[0] + 1) * 127.5).round().clamp(0, 255)
            image = Image.fromarray(pixels.permute(1, 2, 0).numpy().astype(np.uint8))
            x = torch.from_numpy(np.asarray(preprocess.run(cfg.preprocessor, image), np.float32) / 255)
            x = x.permute(2, 0, 1)[None]
        maps.append(x)
    return torch.cat(maps)


class ControlNetObjective(torch.nn.Module):
    """The denoising loss of the frozen U-Net with the ControlNet's residuals; checkpoints hold the ControlNet only
    (the U-Net and text encoders are kept outside the module tree). SDXL (``text_encoder_2``): both encoders'
    penultimate states, bigG's pooled text and the size numbers of an uncropped ``size`` x ``size`` picture reach
    the ControlNet and the U-Net, as drawing gives them."""

    def __init__(self, controlnet, unet, text_encoder, noise_scheduler, text_encoder_2=None, size: int | None = None):
        super().__init__()
        self.controlnet = controlnet
        self._frozen = (unet, text_encoder, text_encoder_2)  # a tuple: not submodules, not trained, not saved
        self.noise_scheduler, self.size = noise_scheduler, size

    def forward(self, input_ids, mean, std, control, generator, input_ids_2=None):
        unet, text_encoder, text_encoder_2 = self._frozen
        latents = train.sample_latents(mean, std, generator)  # (B, C, h, w), scaled
        added = {}
        with torch.no_grad():
            if text_encoder_2 is None:
                hidden = text_encoder(input_ids)[0]  # (B, 77, D)
            else:  # (B, 77, D1 + D2), pooled (B, P), size numbers (B, 6)
                hidden, pooled = sdxl.batch_embed(input_ids, input_ids_2, text_encoder, text_encoder_2)
                added = {"added_cond_kwargs": sdxl.batch_added(pooled, self.size)}

        def controlled(x, t, encoder_hidden_states):  # the U-Net under the ControlNet's residuals
            down, mid = self.controlnet(x, t, encoder_hidden_states=encoder_hidden_states, controlnet_cond=control,
                                        return_dict=False, **added)
            return unet(x, t, encoder_hidden_states=encoder_hidden_states, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid, **added)
        return train.diffusion_loss(controlled, hidden, latents, self.noise_scheduler, generator)


class ControlBatches(Batches):
    """The data in epoch-wise shuffles (``captioned.Batches``' order), captions dropped as ``caption_dropout`` says,
    each image with its control map."""

    def __init__(self, cfg: ControlNetTrainConfig, tokenizer, captions, mean, std, maps: torch.Tensor, tokenizer_2=None):
        super().__init__(cfg, tokenizer, captions, len(captions), 0, mean, std, tokenizer_2)
        self.maps = maps  # (N, 3, res, res) in [0, 1]

    def __call__(self, step: int, micro: int, a) -> dict:
        idx = self.picks(self.n_data, 0, "epoch:", step, micro, a)
        caps = train.drop_captions([self.captions[i] for i in idx], self.cfg.caption_dropout, self.cfg.seed, step,
                                   micro, a.process_index)
        return {**self.ids(caps, a.device), "mean": self.mean[idx], "std": self.std[idx],
                "control": self.maps[idx].to(a.device),
                "generator": train.step_generator(self.cfg.seed, step, micro, a.process_index)}


def run(cfg: ControlNetTrainConfig) -> Path:
    """Train a ControlNet for the base model; write ``cfg.out/<name>/``; returns it."""
    from diffusers import ControlNetModel, DDPMScheduler

    from .finetune import load_base

    started = time.perf_counter()
    cfg.check()
    pairs = read_dataset(cfg.data)  # bad settings and data fail before any model loads
    out = Path(cfg.out)
    train.check_fresh(out, cfg.resume)
    acc, c, res = load_base(cfg)  # an SDXL base model too (its refiner is refused)
    maps = control_maps(pairs, cfg, res)
    mean, std = cache_latents(c.vae, pairs, res, cfg.crop)
    text_2 = c.xl.text_encoder_2 if c.xl is not None else None
    for model in (c.unet, c.text_encoder, c.vae, *([text_2] if text_2 is not None else [])):
        model.requires_grad_(False)
    torch.manual_seed(cfg.seed)  # the hint encoder's init: seeded, so a run is a function of its settings
    levels = int(math.log2(c.vae_scale_factor)) + 1  # the hint encoder halves the map down to the latents' size
    controlnet = ControlNetModel.from_unet(c.unet, conditioning_embedding_out_channels=(16, 32, 96, 256)[:levels])
    controlnet.to(acc.device)  # the encoder's weights, zero convolutions
    settings = train.config_dict(cfg, skip=("out", "resume", "save_every"))
    run_id = {"controlnet": settings, "data": [[p.name, cap] for p, cap in pairs], "processes": acc.num_processes}

    def write(step: int) -> None:
        train.save_folder(controlnet, out / cfg.name, {
            "base": c.name, "preprocessor": None if cfg.controls else cfg.preprocessor, "steps": step,
            "settings": settings, "train_seconds": round(train.elapsed_seconds(out) + setup, 1)})
    setup = time.perf_counter() - started
    train.run(train.LoopConfig(out=out, steps=cfg.steps, lr=cfg.lr, warmup=cfg.warmup, grad_accum=cfg.grad_accum,
                               seed=cfg.seed, save_every=cfg.save_every, weight_decay=0.0,
                               mixed_precision=cfg.mixed_precision),
              ControlNetObjective(controlnet, c.unet, c.text_encoder, DDPMScheduler.from_config(c.scheduler.config),
                                  text_2, res),
              ControlBatches(cfg, c.tokenizer, [cap for _, cap in pairs], mean, std, maps,
                             c.xl.tokenizer_2 if c.xl is not None else None), run_id=run_id,
              accelerator=acc, desc=f"controlnet {cfg.name}", on_save=write)
    return out / cfg.name
