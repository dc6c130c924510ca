"""Distill a model's VAE into a tiny autoencoder (TAESD's architecture: diffusers' ``AutoencoderTiny``), through the
one training loop (``latentgen.training.loop``).

    latentgen shapes-data runs/vae-data -n 1000                    # the embedded world (any folder of images will do)
    latentgen distill-vae runs/vae-data --out runs/taesd --steps 1500
    pipe.preview_vae = latentgen.load_tiny_vae("runs/taesd/taesd")  # or pipe.vae = ... to decode with it

TAESD (Bohan 2023, https://github.com/madebyollin/taesd) keeps the full VAE's interface at a fraction of its work:
an encoder from pixels (B, 3, H, W) in [-1, 1] to the latents the U-Net sees (B, C, H/f, W/f), already multiplied
by the VAE's ``scaling_factor`` (so its own is 1), and a decoder back; ``channels`` at every level, plain 3x3 conv
blocks, no attention, no normalization. Here both halves learn from the full VAE (the teacher, frozen) on the
images of a folder, each encoded once (``captioned.cache_latents``: the posterior's mean and std, scaled):

  encoder:  E(x)        -> mean(x)                  mean squared error
  decoder:  D(z)        -> D_full(z / scaling)      L1 + mean squared error, z = mean + std * eps (a posterior draw)

so the decoder learns what the full decoder draws from latents around the data (the U-Net's results lie there),
not the image itself: its distance from the full VAE is what it is measured by (``distance``). TAESD's own
training adds an adversarial loss for crisper detail; plain regression is the honest yardstick here.

The result is a diffusers folder ``<out>/<name>/`` (``config.json`` + ``diffusion_pytorch_model.safetensors``),
written whole at every checkpoint. Data order and draws come from ``loop.step_generator`` at (seed, step, slot): a
killed run resumes exactly, and P processes train what one does with P times the micro-batches.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import loop as train
from .captioned import Batches, cache_latents, prepare, read_dataset
from .configs import TinyVaeConfig


def tiny_for(vae, channels: int = 64):
    """A fresh ``AutoencoderTiny`` shaped for ``vae``: its latent channels, as many levels as it has (one per halving
    of the size, so f = 8 gives TAESD's 4 levels: encoder blocks 1, 3, 3, 3; decoder blocks 3, 3, 3, 1)."""
    from diffusers import AutoencoderTiny

    from ..models.components import vae_scale_factor

    levels = int(math.log2(vae_scale_factor(vae.config))) + 1
    return AutoencoderTiny(
        encoder_block_out_channels=(channels,) * levels, decoder_block_out_channels=(channels,) * levels,
        num_encoder_blocks=(1,) + (3,) * (levels - 1), num_decoder_blocks=(3,) * (levels - 1) + (1,),
        latent_channels=vae.config.latent_channels, upsampling_scaling_factor=2, scaling_factor=1.0,
        force_upcast=False)


class TinyVaeObjective(torch.nn.Module):
    """The loss of one micro-batch (the module docstring's two lines); checkpoints hold the tiny VAE only (the
    teacher is kept outside the module tree)."""

    def __init__(self, tiny, teacher):
        super().__init__()
        self.tiny, self._teacher = tiny, (teacher,)  # a tuple: not a submodule, not trained, not saved

    def forward(self, pixels, mean, std, generator):
        teacher = self._teacher[0]
        z = train.sample_latents(mean, std, generator)  # (B, C, h, w), scaled
        with torch.no_grad():
            target = teacher.decode(z / teacher.config.scaling_factor).sample.clamp(-1, 1)  # (B, 3, H, W)
        encoded = self.tiny.encode(pixels).latents  # (B, C, h, w)
        decoded = self.tiny.decode(z).sample  # (B, 3, H, W)
        return F.mse_loss(encoded, mean) + F.l1_loss(decoded, target) + F.mse_loss(decoded, target)


class PixelBatches(Batches):
    """The data in epoch-wise shuffles (``captioned.Batches``' order), each micro-batch's draws from
    ``step_generator(seed, step, micro * processes + process)``."""

    def __init__(self, cfg: TinyVaeConfig, pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
        super().__init__(cfg, None, [], len(pixels), 0, mean, std)
        self.pixels = pixels  # (N, 3, res, res) in [-1, 1]

    def __call__(self, step: int, micro: int, a) -> dict:
        idx = self.picks(self.n_data, 0, "epoch:", step, micro, a)
        slot = micro * a.num_processes + a.process_index
        return {"pixels": self.pixels[idx].to(a.device), "mean": self.mean[idx].to(a.device),
                "std": self.std[idx].to(a.device), "generator": train.step_generator(self.cfg.seed, step, slot)}


@torch.no_grad()
def distance(tiny, vae, pixels: torch.Tensor, batch: int = 64) -> dict:
    """How far ``tiny`` is from the full ``vae`` on ``pixels`` (N, 3, H, W) in [-1, 1], in 0..255 pixel units:
    decoding (both decoders on the full encoder's mean latents) and the round trip (each VAE encodes and decodes),
    each as mean absolute difference, PSNR (dB) of the tiny result against the full one, and the 99th percentile
    of per-pixel differences; ``latent_rms``: the RMS gap of the encoders' latents, against the latents' own RMS."""
    sf, out = vae.config.scaling_factor, {"decode": [], "round_trip": [], "latents": []}
    for x in pixels.split(batch):
        mean = vae.encode(x).latent_dist.mean * sf  # (B, C, h, w)
        full = vae.decode(mean / sf).sample.clamp(-1, 1)
        mine = tiny.encode(x).latents
        out["decode"].append((tiny.decode(mean).sample.clamp(-1, 1) - full) * 127.5)
        out["round_trip"].append((tiny.decode(mine).sample.clamp(-1, 1) - full) * 127.5)
        out["latents"].append(torch.stack([(mine - mean).pow(2).mean(), mean.pow(2).mean()]))
    figures = {}
    for key in ("decode", "round_trip"):
        d = torch.cat(out[key]).abs().float()
        mse = d.pow(2).mean().item()
        figures[key] = {"mean_abs": round(d.mean().item(), 3), "psnr_db": round(10 * math.log10(255 ** 2 / mse), 2),
                        "p99_abs": round(torch.quantile(d.flatten()[::7], 0.99).item(), 2)}
    gap, own = torch.stack(out["latents"]).mean(0).sqrt().tolist()
    figures["latent_rms"] = {"gap": round(gap, 4), "latents": round(own, 4)}
    return figures


def run(cfg: TinyVaeConfig) -> Path:
    """Distill the model's VAE; write ``cfg.out/<name>/`` (a diffusers ``AutoencoderTiny`` folder); returns it."""
    from .finetune import load_base

    started = time.perf_counter()
    cfg.check()
    pairs = read_dataset(cfg.data, default_caption="")  # bad settings and data fail before any model loads
    out = Path(cfg.out)
    train.check_fresh(out, cfg.resume)
    acc, c, res = load_base(cfg)  # only the VAE is read: SDXL's distills as SD's (TAESDXL's role)
    c.vae.requires_grad_(False)
    pixels = torch.cat([prepare(p, res, cfg.crop) for p, _ in pairs])  # (N, 3, res, res)
    mean, std = cache_latents(c.vae, pairs, res, cfg.crop)
    torch.manual_seed(cfg.seed)
    tiny = tiny_for(c.vae, cfg.channels).to(acc.device)
    settings = train.config_dict(cfg, skip=("out", "resume", "save_every"))
    run_id = {"tiny_vae": settings, "data": [p.name for p, _ in pairs], "processes": acc.num_processes}

    def write(step: int) -> None:
        train.save_folder(tiny, out / cfg.name, {"teacher": c.name, "steps": step, "settings": settings,
                                         "train_seconds": round(train.elapsed_seconds(out), 1),
                                         "setup_seconds": round(setup, 1)})
    setup = time.perf_counter() - started
    train.run(train.LoopConfig(out=out, steps=cfg.steps, lr=cfg.lr, lr_schedule="cosine", warmup=cfg.warmup,
                               grad_accum=cfg.grad_accum, seed=cfg.seed, save_every=cfg.save_every, weight_decay=0.0,
                               mixed_precision=cfg.mixed_precision),
              TinyVaeObjective(tiny, c.vae), PixelBatches(cfg, pixels, mean, std), run_id=run_id, accelerator=acc,
              desc=f"tiny vae {cfg.name}", on_save=write)
    return out / cfg.name
