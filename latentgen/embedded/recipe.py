"""The recipe of the embedded default model: train it on the flat-shapes world and export it.

    latentgen train --out runs/default            # the shipped model (see weights/default/manifest.json)

Three stages, all run by the one loop in ``latentgen.train``:
  1. the VAE (``AutoencoderKL``, 64x64x3 -> 4x8x8), reconstruction MSE + a small KL term
     (Rombach et al. 2022, https://arxiv.org/abs/2112.10752, sec. 3); then ``scaling_factor`` is set
     to 1 / std of its latents, as SD did (0.18215), so scaled latents have unit variance;
  2. the CLIP text encoder and U-Net jointly, epsilon prediction under SD's scaled-linear betas,
     the caption dropped (empty prompt) 10% of the time so one model learns the conditional and
     unconditional scores that classifier-free guidance mixes (Ho & Salimans 2022,
     https://arxiv.org/abs/2207.12598);
  3. the VAE decoder alone, on more images in random colors: the encoder and so the latent space the
     U-Net learned stay as they are, as in SD's fine-tuned VAE decoders (sd-vae-ft-mse); this
     sharpens colors outside the seven base ones (the purple LoRA example needs them).
Every batch and every noise draw is a function of (seed, stage, step, micro-batch, process), so the
run is deterministic and resumes after a kill from its last checkpoint. The result is exported as a
diffusers folder that ``StableDiffusionPipeline.from_pretrained`` loads.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from .. import checks, files, train
from ..checks import option
from ..components import Components, from_preset
from ..presets import load_preset
from . import shapes


@dataclass
class RecipeConfig:
    out: Path = option(help="run folder: OUT/vae, OUT/diffusion, OUT/decoder (checkpoints), OUT/model (the export)")
    preset: str = option("default", "architecture and defaults, from pipelines/<preset>.json")
    seed: int = option(0, "seed of the init, the scenes and the noise")
    vae_steps: int = option(1500, "stage 1: VAE optimizer steps")
    vae_batch: int = option(32, "images per VAE (and decoder) step")
    vae_lr: float = option(1e-3, "stage 1 learning rate")
    kl_weight: float = option(1e-6, "weight of the VAE's KL term")
    vae_open_colors: float = option(0.25, "fraction of VAE images in random RGB colors, so it encodes unseen ones")
    decoder_steps: int = option(400, "stage 3: decoder-only optimizer steps")
    decoder_lr: float = option(2e-4, "stage 3 learning rate")
    decoder_open_colors: float = option(0.5, "fraction of decoder images in random RGB colors")
    steps: int = option(5000, "stage 2: U-Net + text encoder optimizer steps")
    batch: int = option(32, "images per stage 2 step")
    lr: float = option(6e-4, "stage 2 learning rate")
    warmup: int = option(200, "stage 2 warmup steps")
    caption_dropout: float = option(0.1, "fraction of empty captions (the unconditional score CFG needs)")
    snr_gamma: float | None = option(5.0, "min-SNR-gamma weighting ('none': off)")
    save_every: int = option(250, "checkpoint every N steps")
    threads: int | None = option(None, "torch CPU threads (default: torch's)")

    def check(self) -> None:
        for name in ("vae_steps", "vae_batch", "decoder_steps", "steps", "batch", "save_every"):
            checks.whole(name, getattr(self, name), 1)
        for name in ("vae_open_colors", "decoder_open_colors"):
            checks.number(name, getattr(self, name), minimum=0, maximum=1)
        if not checks.number("caption_dropout", self.caption_dropout, minimum=0, maximum=1) < 1:
            raise ValueError("caption_dropout=1 is invalid: some captions must stay, use a value in [0, 1).")
        if self.threads is not None:
            checks.whole("threads", self.threads, 1)


VAE_FIELDS = ("preset", "seed", "vae_steps", "vae_batch", "vae_lr", "kl_weight", "vae_open_colors")
DECODER_FIELDS = ("decoder_steps", "decoder_lr", "decoder_open_colors")


def data_spec(size: int) -> dict:
    """What the model sees, for the manifest."""
    return {"generator": "latentgen.shapes.random_scene", "size": size, "colors": list(shapes.COLORS),
            "shapes": list(shapes.SHAPES), "caption": "a {color} {shape} on a {background} background",
            "radius": "0.18-0.34 of the side", "held_out": ["purple", "star"]}


def scenes(seed: int, stage: str, step: int, micro: int, process: int, n: int, size: int,
           **vocab) -> list[shapes.Scene]:
    """The n scenes of one micro-batch: a pure function of its coordinates (resumable, shardable)."""
    rng = random.Random(f"{seed}:{stage}:{step}:{micro}:{process}")
    return [shapes.random_scene(rng, size, **vocab) for _ in range(n)]


def to_pixels(images) -> torch.Tensor:
    """PIL RGB images -> (B, 3, H, W) in [-1, 1]."""
    a = np.stack([np.asarray(im, np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()


class VAEObjective(torch.nn.Module):
    """Stage 1 loss: reconstruct pixels through a sampled latent, KL toward N(0, I)."""

    def __init__(self, vae, kl_weight: float):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        post = self.vae.encode(pixels).latent_dist  # mean/std (B, 4, h, w)
        z = train.sample_latents(post.mean, post.std, generator)
        rec = self.vae.decode(z).sample  # (B, 3, H, W)
        return F.mse_loss(rec.float(), pixels.float()) + self.kl_weight * post.kl().mean()


class DiffusionObjective(torch.nn.Module):
    """Stage 2 loss: the denoising loss, text encoder and U-Net trained together."""

    def __init__(self, unet, text_encoder, noise_scheduler, snr_gamma: float | None):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder
        self.noise_scheduler, self.snr_gamma = noise_scheduler, snr_gamma

    def forward(self, input_ids: torch.Tensor, latents: torch.Tensor, generator: torch.Generator):
        hidden = self.text_encoder(input_ids)[0]  # (B, 77, D)
        return train.diffusion_loss(self.unet, hidden, latents, self.noise_scheduler, generator,
                                    snr_gamma=self.snr_gamma)


def build(cfg: RecipeConfig) -> Components:
    """Randomly initialised components of the preset's architecture (seeded)."""
    preset = load_preset(cfg.preset)
    preset.weights = None  # the architecture, never the shipped weights
    c = from_preset(preset, device="cpu", dtype="fp32", seed=cfg.seed)
    return c


def run(cfg: RecipeConfig) -> Path:
    """Train the three stages (resuming where checkpoints exist) and export ``cfg.out/model``."""
    cfg.check()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    c = build(cfg)
    train_vae(cfg, c)
    train_diffusion(cfg, c)
    acc = train_decoder(cfg, c)
    seconds = sum(train.elapsed_seconds(cfg.out / s) for s in ("vae", "diffusion", "decoder"))
    if acc.is_main_process:
        export(c, cfg, cfg.out / "model", seconds=seconds)
    acc.wait_for_everyone()
    return cfg.out / "model"


def run_id(cfg: RecipeConfig, size: int, stage: str, keep, **extra) -> dict:
    """A stage's identity: the settings it depends on, so a VAE trained alone (--steps 1) is reused
    by a full run, and stage 3 settings leave the first two stages' checkpoints valid."""
    recipe = train.config_dict(cfg, skip=("out", "save_every", "threads"))
    return {"recipe": {k: v for k, v in recipe.items() if keep(k)}, "data": data_spec(size), "stage": stage, **extra}


def pixel_batches(cfg: RecipeConfig, stage: str, size: int, open_colors: float):
    """``batch_fn`` of the VAE stages: scenes, a fraction ``open_colors`` of them in random RGB colors."""
    def batch_fn(step, micro, a):
        batch = scenes(cfg.seed, stage, step, micro, a.process_index, cfg.vae_batch, size)
        tag = "open" if stage == "vae" else f"{stage}-open"
        rng = random.Random(f"{cfg.seed}:{tag}:{step}:{micro}:{a.process_index}")  # its own stream
        rgb = [None] * len(batch)
        if open_colors:
            rgb = [tuple(tuple(rng.randrange(256) for _ in range(3)) for _ in range(2))
                   if rng.random() < open_colors else None for _ in batch]
        imgs = [shapes.draw(s, size, c) for s, c in zip(batch, rgb)]
        return {"pixels": to_pixels(imgs).to(a.device),
                "generator": train.step_generator(cfg.seed, step, micro, a.process_index)}
    return batch_fn


def train_vae(cfg: RecipeConfig, c: Components) -> None:
    """Stage 1: the whole VAE; then its ``scaling_factor`` (1 / std of the latents)."""
    from accelerate import Accelerator

    acc = Accelerator()  # one per stage: each checkpoint holds its own stage's model and optimizer
    size = c.defaults.width
    vae = c.vae.requires_grad_(True)
    train.run(train.LoopConfig(out=cfg.out / "vae", steps=cfg.vae_steps, lr=cfg.vae_lr, warmup=100,
                               lr_schedule="cosine", seed=cfg.seed, save_every=cfg.save_every),
              VAEObjective(vae, cfg.kl_weight), pixel_batches(cfg, "vae", size, cfg.vae_open_colors),
              run_id=run_id(cfg, size, "vae", lambda k: k in VAE_FIELDS), accelerator=acc, desc="vae")
    vae = vae.requires_grad_(False).eval().to(acc.device)
    vae.register_to_config(scaling_factor=measure_scaling_factor(vae, cfg.seed, size))


def train_diffusion(cfg: RecipeConfig, c: Components) -> None:
    """Stage 2: text encoder + U-Net on latents of the frozen VAE, captions dropped for CFG."""
    from accelerate import Accelerator

    acc = Accelerator()
    size, vae, tok = c.defaults.width, c.vae, c.tokenizer
    sf = vae.config.scaling_factor
    c.text_encoder.requires_grad_(True)
    c.unet.requires_grad_(True)

    def diffusion_batch(step, micro, a):
        batch = scenes(cfg.seed, "diffusion", step, micro, a.process_index, cfg.batch, size)
        captions = train.drop_captions([s.caption for s in batch], cfg.caption_dropout, cfg.seed, step, micro,
                                       a.process_index)
        gen = train.step_generator(cfg.seed, step, micro, a.process_index)
        with torch.no_grad():
            post = vae.encode(to_pixels([shapes.draw(s, size) for s in batch]).to(a.device)).latent_dist
            latents = train.sample_latents(post.mean, post.std, gen) * sf
        return {"input_ids": train.tokenize(tok, captions).to(a.device), "latents": latents, "generator": gen}

    train.run(train.LoopConfig(out=cfg.out / "diffusion", steps=cfg.steps, lr=cfg.lr, warmup=cfg.warmup,
                               lr_schedule="cosine", seed=cfg.seed, save_every=cfg.save_every),
              DiffusionObjective(c.unet, c.text_encoder, DDPMScheduler.from_config(c.scheduler.config),
                                 cfg.snr_gamma), diffusion_batch,
              run_id=run_id(cfg, size, "diffusion", lambda k: k not in DECODER_FIELDS, scaling_factor=sf),
              accelerator=acc, desc="unet")
    c.unet.requires_grad_(False).eval()
    c.text_encoder.requires_grad_(False).eval()


def train_decoder(cfg: RecipeConfig, c: Components):
    """Stage 3: the VAE decoder alone (the encoder, hence the latents the U-Net learned, stay fixed)."""
    from accelerate import Accelerator

    acc = Accelerator()
    size, vae = c.defaults.width, c.vae
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    train.run(train.LoopConfig(out=cfg.out / "decoder", steps=cfg.decoder_steps, lr=cfg.decoder_lr, warmup=20,
                               lr_schedule="cosine", seed=cfg.seed, save_every=cfg.save_every),
              VAEObjective(vae, cfg.kl_weight), pixel_batches(cfg, "decoder", size, cfg.decoder_open_colors),
              run_id=run_id(cfg, size, "decoder", lambda k: k in VAE_FIELDS + DECODER_FIELDS),
              accelerator=acc, desc="decoder")
    vae.requires_grad_(False).eval()
    return acc


@torch.no_grad()
def measure_scaling_factor(vae, seed: int, size: int, n: int = 512) -> float:
    """1 / std of the VAE's latents over n fresh scenes (SD measured 0.18215 the same way)."""
    imgs = [shapes.draw(s, size) for s in scenes(seed, "scale", 0, 0, 0, n, size)]
    z = torch.cat([vae.encode(to_pixels(imgs[i:i + 64]).to(vae.device)).latent_dist.mean
                   for i in range(0, n, 64)])
    return round(1.0 / z.float().std().item(), 5)


def export(c: Components, cfg: RecipeConfig, folder: Path, *, seconds: float) -> None:
    """Write a diffusers folder (model_index.json + safetensors) atomically, plus latentgen.json."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer,
                                   unet=c.unet, scheduler=c.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    d = c.defaults
    with files.atomic_folder(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "latentgen.json").write_text(json.dumps(
            {"steps": d.steps, "guidance": d.guidance, "width": d.width, "height": d.height,
             "scheduler": d.scheduler}, indent=1) + "\n")
        (tmp / "recipe.json").write_text(json.dumps(
            {"config": train.config_dict(cfg, skip=("out", "threads")), "data": data_spec(d.width),
             "train_seconds": round(seconds, 1), "machine": files.machine()}, indent=1) + "\n")
