"""The recipe of the embedded default model: train it on the flat-shapes world and export it.

    latentgen train --out runs/default --vae-autocast bf16   # from scratch, stages 1-4: the shipped model
    latentgen train --out runs/v2 --init runs/default/model --decoder-line 2 ...   # continue: stages 3-4

The defaults are the shipped model's recipe (83 min on a 2-core CPU with bf16 autocast in the VAE stages).

Four stages, all run by the one loop in ``latentgen.training.loop`` (VAE stages in ``autoencoder``):
  1. the VAE (``AutoencoderKL``, 64x64x3 -> 4x8x8), reconstruction MSE + a small KL term
     (Rombach et al. 2022, https://arxiv.org/abs/2112.10752, sec. 3); then ``scaling_factor`` is set
     to 1 / std of its latents, as SD did (0.18215), so scaled latents have unit variance. Long enough
     (4500 steps) that its edges are sharp and its specks few; a fraction of its images have shapes the
     captions never name (stars) or no shape at all, so LoRAs can teach stars and plain areas decode true;
  2. the CLIP text encoder and U-Net jointly, epsilon prediction under SD's scaled-linear betas,
     the caption dropped (empty prompt) 10% of the time so one model learns the conditional and
     unconditional scores that classifier-free guidance mixes (Ho & Salimans 2022,
     https://arxiv.org/abs/2207.12598);
  4. the inpainting variant: a 9-channel copy of the U-Net on random masks (``inpainting``);
  3. the VAE decoder alone, on images partly in random colors: the encoder and so the latent space
     the U-Net learned stay as they are, as in SD's fine-tuned VAE decoders (sd-vae-ft-mse). With
     ``decoder_line`` it also pays for colors off the line between each image's two colors: a stage-1
     VAE, trained on MSE alone, decodes one small rainbow ring on the shape's outline in nearly every
     image (``quality.round_trip``), with or without its mid-block attention; the penalty teaches the
     decoder to draw that spot in the image's own colors. Run last (after 4), since the variant needs
     only the encoder.
``init`` continues a trained model: stages 1-2 are taken from it (its recipe.json is kept in ours).
Every batch and every noise draw is a function of (seed, stage, step, micro-batch, process), so the
run is deterministic and resumes after a kill from its last checkpoint. The result is exported as a
diffusers folder that ``StableDiffusionPipeline.from_pretrained`` loads.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from .. import files
from ..training import loop as train
from ..models.components import Components, from_folder, from_preset
from ..models.presets import load_preset
from . import autoencoder, inpainting, shapes
from .recipe_config import RecipeConfig
from .autoencoder import data_spec, scenes, to_pixels  # the recipe's data


VAE_FIELDS = ("preset", "seed", "vae_steps", "vae_batch", "vae_lr", "kl_weight", "vae_open_colors", "vae_open_shapes",
              "plain", "vae_edge", "vae_line", "vae_autocast")
DECODER_FIELDS = ("decoder_steps", "decoder_lr", "decoder_open_colors", "decoder_open_shapes", "decoder_line",
                  "decoder_edge", "decoder_gan", "decoder_gan_start")
INPAINT_FIELDS = ("inpaint_steps", "inpaint_lr")


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
    """Randomly initialised components of the preset's architecture (seeded), or ``cfg.init``'s."""
    if cfg.init is not None:
        return from_folder(Path(cfg.init), device="cpu", dtype="fp32")
    preset = load_preset(cfg.preset)
    preset.weights = None  # the architecture, never the shipped weights
    c = from_preset(preset, device="cpu", dtype="fp32", seed=cfg.seed)
    return c


def run(cfg: RecipeConfig) -> Path:
    """Train the stages (resuming where checkpoints exist); export ``cfg.out/model`` and, with
    ``inpaint_steps``, its inpainting U-Net ``cfg.out/inpainting-model``."""
    cfg.check()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    c = build(cfg)
    size, init = c.defaults.width, init_info(cfg)  # the continued model, hashed once
    if cfg.init is None:
        autoencoder.train_vae(cfg, c, run_id(cfg, size, "vae", lambda k: k in VAE_FIELDS))
        train_diffusion(cfg, c)
    nine = None
    if cfg.inpaint_steps:  # before stage 3: it needs the encoder only, and the base U-Net as stage 2 left it
        nine = inpainting.train_inpainting(cfg, c, run_id(
            cfg, size, "inpainting", lambda k: k not in DECODER_FIELDS, masks=inpainting.MASKS,
            scaling_factor=c.vae.config.scaling_factor, init=init.get("sha256")))
    acc = autoencoder.train_decoder(cfg, c, run_id(cfg, size, "decoder", lambda k: k in VAE_FIELDS + DECODER_FIELDS
                                                   + ("init",), init=init.get("sha256")))
    stages = ("vae", "diffusion", "decoder") + (("inpainting",) if nine is not None else ())
    seconds = sum(train.elapsed_seconds(cfg.out / s) for s in stages) + init.get("train_seconds", 0.0)
    if acc.is_main_process:
        export(c, cfg, cfg.out / "model", seconds=seconds, init=init)
        if nine is not None:
            inpainting.export(nine, cfg.out / "inpainting-model", base=cfg.preset, seconds=seconds,
                              recipe=train.config_dict(cfg, skip=("out", "threads")))
    acc.wait_for_everyone()
    return cfg.out / "model"


def init_info(cfg: RecipeConfig) -> dict:
    """What a continued run starts from: the folder, the sha256 of its weights (part of the later stages'
    identity) and its own recipe.json; {} from scratch."""
    import hashlib

    if cfg.init is None:
        return {}
    h = hashlib.sha256()
    for p in sorted(Path(cfg.init).rglob("*.safetensors")):
        h.update(p.read_bytes())
    f = Path(cfg.init) / "recipe.json"
    earlier = json.loads(f.read_text()) if f.is_file() else {}
    return {"folder": str(cfg.init), "sha256": h.hexdigest(), "recipe": earlier,
            "train_seconds": earlier.get("train_seconds", 0.0)}


def run_id(cfg: RecipeConfig, size: int, stage: str, keep, **extra) -> dict:
    """A stage's identity: the settings it depends on, so a VAE trained alone (--steps 1) is reused
    by a full run, and stage 3 settings leave the first two stages' checkpoints valid."""
    recipe = train.config_dict(cfg, skip=("out", "save_every", "threads"))
    return {"recipe": {k: v for k, v in recipe.items() if keep(k)}, "data": data_spec(size), "stage": stage, **extra}


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
                               lr_schedule="cosine", seed=cfg.seed, save_every=cfg.save_every, ema=cfg.ema),
              DiffusionObjective(c.unet, c.text_encoder, DDPMScheduler.from_config(c.scheduler.config),
                                 cfg.snr_gamma), diffusion_batch,
              run_id=run_id(cfg, size, "diffusion", lambda k: k not in DECODER_FIELDS + INPAINT_FIELDS, scaling_factor=sf),
              accelerator=acc, desc="unet")
    c.unet.requires_grad_(False).eval()
    c.text_encoder.requires_grad_(False).eval()


def export(c: Components, cfg: RecipeConfig, folder: Path, *, seconds: float, init: dict | None = None) -> None:
    """Write a diffusers folder (model_index.json + safetensors) atomically, plus latentgen.json."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer,
                                   unet=c.unet, scheduler=c.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    d = c.defaults
    backend = getattr(c.tokenizer, "backend_tokenizer", None)
    if backend is not None:  # transformers 5 leaves the last call's padding on a fast tokenizer: not the model's
        backend.no_padding()
        backend.no_truncation()
    with files.atomic_folder(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "latentgen.json").write_text(json.dumps(asdict(d), indent=1) + "\n")
        (tmp / "recipe.json").write_text(json.dumps(
            {"config": train.config_dict(cfg, skip=("out", "threads")), "data": data_spec(d.width),
             "train_seconds": round(seconds, 1), "machine": files.machine(), "init": init or None},
            indent=1) + "\n")
