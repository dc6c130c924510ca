"""LoRA fine-tuning on a folder of captioned images, through the one training loop (``latentgen.training.loop``).

    latentgen finetune-lora data/ --out runs/purple --rank 8 --steps 600 --kohya
    latentgen finetune-lora data/ --out runs/xl --model sdxl-base/ --resolution 1024 --steps 600 --kohya

Data: images (png, jpg, jpeg, webp, bmp) with captions, either one ``.txt`` sidecar per image
(``cat.png`` + ``cat.txt``, kohya's layout) or a ``metadata.jsonl`` of ``{"file_name", "text"}``
lines (Hugging Face's imagefolder layout). Each image is resized (shorter side) and center-cropped,
or resized, to ``resolution``; the VAE encodes every image once and the latent distributions are
cached, a latent being sampled from them at each step. The adapters (``latentgen.training.network``: LoRA,
LoCon, DoRA, LoHa, LoKr) go on the U-Net's attention projections, optionally the text encoder's, and with
``conv_rank`` the U-Net's 3x3 convolutions. With ``prior_data`` every batch
adds as many images of what the model should keep (kohya's regularization images; DreamBooth's prior
preservation, which the base model can draw itself from ``prior_prompts``). Data order, noise and
timesteps are functions of (seed, step, process): ``--resume`` continues exactly, and under
``accelerate launch`` each process takes its own share. ``LoraOptions``, ``load_base`` and ``fit`` are
shared with LCM distillation (``latentgen.training.consistency``).
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path

import torch

from . import loop as train
from ..lora import formats as lora_io
from ..text import prompts, xl as sdxl
from .configs import LoraOptions, LoraTrainConfig
from . import buckets, header, network, samples
from .captioned import Batches, cache_bucketed, cache_latents, prior_pairs, read_dataset


class LoraCheckpointed(torch.nn.Module):
    """An objective whose state dict, what its checkpoints hold, is its adapters' weights only (peft's LoRA, DoRA,
    LoHa and LoKr parameters)."""

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        full = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for k in [k for k in full if not any(s in k[len(prefix):] for s in ("lora_", "hada_", "lokr_"))]:
            del full[k]
        return full


class LoraObjective(LoraCheckpointed):
    """The denoising loss with LoRA-wrapped U-Net (and text encoders); checkpoints hold LoRA weights only. SDXL
    (``text_encoder_2``): both encoders' penultimate states, bigG's pooled text, and the size numbers of a
    ``size`` x ``size`` uncropped picture (original = target = the training size), as drawing reads them."""

    def __init__(self, unet, text_encoder, noise_scheduler, options, text_encoder_2=None, size: int | None = None,
                 clip_skip: int = 1):
        super().__init__()
        self.unet, self.text_encoder, self.text_encoder_2, self.size = unet, text_encoder, text_encoder_2, size
        self.noise_scheduler, self.options, self.clip_skip = noise_scheduler, options, clip_skip  # LossOptions

    def forward(self, input_ids, mean, std, generator, weights=None, input_ids_2=None, time_ids=None):
        latents = train.sample_latents(mean, std, generator)  # (B, 4, h, w), scaled
        unet = self.unet
        if self.text_encoder_2 is None:
            hidden = prompts.states(self.text_encoder, input_ids, self.clip_skip)  # (B, 77, D)
        else:  # (B, 77, D1 + D2), pooled (B, P), size numbers (B, 6): the batch's own with buckets
            hidden, pooled = sdxl.batch_embed(input_ids, input_ids_2, self.text_encoder, self.text_encoder_2)
            added = sdxl.batch_added(pooled, self.size) if time_ids is None else \
                {"text_embeds": pooled, "time_ids": time_ids.to(pooled)}
            unet = functools.partial(self.unet, added_cond_kwargs=added)
        return train.diffusion_loss(unet, hidden, latents, self.noise_scheduler, generator, weights=weights,
                                    options=self.options)


def run(cfg: LoraTrainConfig) -> Path:
    """Fine-tune and write ``cfg.out/<name>.safetensors`` (and the kohya file on request); returns its path."""
    from diffusers import DDPMScheduler

    started = time.perf_counter()
    pairs = check_inputs(cfg)  # bad settings and data fail before any model loads
    if cfg.prior_data is not None and not cfg.prior_prompts:
        read_dataset(cfg.prior_data, caption_extension=cfg.caption_extension)
    acc, c, res = load_base(cfg)
    check_clip_skip(cfg, c)
    check_samples(cfg, c)
    sides = cfg.bucket_sides(res, c.vae_scale_factor) if cfg.enable_bucket else None  # (low, high, step)
    sizes = buckets.resolutions(res, *sides) if sides else None
    prior = prior_pairs(cfg, c, acc)
    if sizes:  # each image at its bucket (and mirrored, with flip_aug)
        own = (res * res, sides[2]) if cfg.bucket_no_upscale else None  # (area, step): each image its own size
        bucketed, mean, std = cache_bucketed(c.vae, pairs, sizes, no_upscale=own), None, None
        flipped = cache_bucketed(c.vae, pairs, sizes, flip=True, no_upscale=own) if cfg.flip_aug else None
    else:
        bucketed, (mean, std) = None, cache_latents(c.vae, pairs + prior, res, cfg.crop)
        flipped = cache_latents(c.vae, pairs + prior, res, cfg.crop, flip=True) if cfg.flip_aug else None
    network.attach_lora(c, cfg, text_encoder=cfg.train_text_encoder)
    objective = LoraObjective(c.unet, c.text_encoder, DDPMScheduler.from_config(c.scheduler.config), cfg,
                              c.xl.text_encoder_2 if c.xl else None, res, cfg.clip_skip)
    batch_fn = Batches(cfg, c.tokenizer, [cap for _, cap in pairs + prior], len(pairs), len(prior), mean, std,
                       tokenizer_2=c.xl.tokenizer_2 if c.xl is not None else None, bucketed=bucketed,
                       flipped=flipped)
    steps = total_steps(cfg, len(pairs), acc.num_processes, batch_fn.per_epoch)
    meta = {**header.kohya(cfg, c, steps, res, len(pairs)), **header.finetune(cfg, bucketed, len(prior))}
    return fit(cfg, c, acc, objective, batch_fn, pairs, steps=steps, meta=meta, started=started,
               extra_id={"prior": [[p.name, cap] for p, cap in prior]})


def check_inputs(cfg: LoraOptions) -> list[tuple[Path, str]]:
    """The settings, the data folder and the run folder, checked; the (image, caption) pairs."""
    cfg.check()
    pairs = read_dataset(cfg.data, cfg.default_caption, cfg.caption_extension)
    train.check_fresh(cfg.out, cfg.resume)
    return pairs


def load_base(cfg: LoraOptions):
    """The accelerator, the base model's components (fp32, torch) on its device, and the training resolution. Every
    trainer takes SD 1.x/2.x and SDXL base models; an SDXL refiner is refused (train on its base model)."""
    from accelerate import Accelerator

    from ..models import loading

    # cpu=True on machines without CUDA: under torchrun / `accelerate launch --multi_gpu` the processes
    # then join a gloo group (accelerate's MULTI_CPU) instead of each training alone
    acc = Accelerator(gradient_accumulation_steps=1, mixed_precision=cfg.mixed_precision,
                      cpu=not torch.cuda.is_available())
    if loading.xl_kind(cfg.model) == "refiner":
        raise ValueError(f"model {cfg.model!r} is an SDXL refiner: train on the SDXL base model (a refiner draws "
                         f"the end of the base's schedule, with its own U-Net).")
    c = loading.load_components(cfg.model, device=acc.device, dtype="fp32", backend="torch")
    res = cfg.resolution or c.defaults.width
    if res % c.vae_scale_factor:
        f = c.vae_scale_factor
        raise ValueError(f"resolution={res} is invalid: use a multiple of {f}, such as {res // f * f or f}.")
    return acc, c, res


def check_clip_skip(cfg: LoraTrainConfig, c) -> None:
    """clip_skip against the model, once it is loaded: SD 1.x/2.x, at most its text encoder's layers."""
    if cfg.clip_skip > 1 and c.xl is not None:
        raise ValueError(f"clip_skip={cfg.clip_skip} is for SD 1.x/2.x models: SDXL's text encoders are trained "
                         f"as they draw, from their penultimate layers (kohya's SDXL trainer has none); leave it out.")
    if cfg.clip_skip > (layers := c.text_encoder.config.num_hidden_layers):
        raise ValueError(f"clip_skip={cfg.clip_skip} is invalid: this text encoder has {layers} layers; use 1 to "
                         f"{layers}, such as 2.")


def check_samples(cfg: LoraOptions, c, sample: dict | None = None) -> None:
    """The sample prompts, drawn with ``sample`` (``fit``'s) under their own settings, checked against the model
    before any training work."""
    if found := samples.gather(cfg.validation_prompts, cfg.sample_prompts):
        samples.check(pipeline_of(c), found, cfg.seed, **sample_defaults(cfg, sample))


def sample_defaults(cfg: LoraOptions, sample: dict | None) -> dict:
    """How the sample prompts draw what they do not say: the trainer's ``sample`` under ``sample_sampler``."""
    skip = getattr(cfg, "clip_skip", 1)  # drawn from the text encoder's layer the LoRA trains on
    return {**(sample or {}), **({"scheduler": samples.sampler_name(cfg.sample_sampler)} if cfg.sample_sampler else {}),
            **({"clip_skip": skip} if skip > 1 else {})}


def pipeline_of(c):
    """A ``Pipeline`` over the components being trained (torch, so it draws with the adapters as they are)."""
    from ..pipeline import Pipeline

    return Pipeline.from_components(c)


def total_steps(cfg: LoraOptions, n_images: int, processes: int, batches: int | None = None) -> int:
    """``cfg.steps``, or the optimizer steps of ``cfg.epochs`` passes over ``n_images`` by all processes (with
    buckets: over ``batches`` batches a pass, a bucket's last one smaller)."""
    if batches is not None:
        return cfg.steps or math.ceil(cfg.epochs * batches / (cfg.grad_accum * processes))
    return cfg.steps or math.ceil(cfg.epochs * n_images / (cfg.batch * cfg.grad_accum * processes))


def fit(cfg: LoraOptions, c, acc, objective: torch.nn.Module, batch_fn, pairs: list[tuple[Path, str]], *,
        steps: int, meta: dict, started: float, desc: str = "lora", extra_id: dict | None = None,
        sample: dict | None = None) -> Path:
    """Train ``objective`` for ``steps`` in the one loop, writing ``<out>/<name>.safetensors`` (and the kohya
    file) with the header ``meta`` plus the run's settings at every checkpoint; returns its path.

    ``extra_id``: more of what a resumed run must share (beside the settings, data, steps, processes);
    ``sample``: how the validation grids are drawn (``Pipeline.generate``'s scheduler, steps, guidance).
    ``started``: ``time.perf_counter()`` when the run began, so the header counts its setup too."""
    settings = train.config_dict(cfg, skip=("out", "resume", "save_every", "validate_every", "validation_prompts",
                                            "sample_prompts", "sample_at_first", "validate_every_epochs",
                                            "sample_sampler"))
    world, out = acc.num_processes, Path(cfg.out)
    meta = {**meta, "latentgen_training": json.dumps({**settings, "steps": steps, "processes": world})}
    setup = time.perf_counter() - started  # loading, prior images, latent cache

    def write(step):  # the loop's seconds (summed over resumed runs) plus this run's setup
        m = {**meta, "ss_steps": step, "latentgen_train_seconds": round(train.elapsed_seconds(out) + setup, 1)}
        lora = network.trained_lora(c, m)  # LoHa / LoKr: in LyCORIS's kohya layout, which has no diffusers twin
        lora_io.save(lora, out / f"{cfg.name}.safetensors", "kohya" if lora.raw else "diffusers",
                     unet_config=c.unet.config)
        if cfg.kohya and not lora.raw:
            lora_io.save(lora, out / f"{cfg.name}.kohya.safetensors", "kohya", unet_config=c.unet.config)

    found = samples.gather(cfg.validation_prompts, cfg.sample_prompts)

    def draw(step):  # the sample images, when the settings say (``LoraOptions.sample_step``)
        if found and cfg.sample_step(step, cfg.batch * cfg.grad_accum * world, len(pairs)):
            samples.draw(pipeline_of(c), found, out, step, cfg.seed, cfg.name, **sample_defaults(cfg, sample))

    if acc.is_main_process and not (out / "samples" / "step-0000000.png").is_file():
        draw(0)
    run_id = {"lora": settings, "data": [[p.name, cap] for p, cap in pairs], "steps": steps, "processes": world,
              **(extra_id or {})}
    train.run(train.LoopConfig(out=out, steps=steps, lr=cfg.lr, lr_schedule=cfg.lr_schedule, warmup=cfg.warmup,
                               grad_accum=cfg.grad_accum, seed=cfg.seed, save_every=cfg.save_every,
                               mixed_precision=cfg.mixed_precision, weight_decay=0.0,
                               optimizer=cfg.optimizer_class(), optimizer_kwargs=cfg.optimizer_kwargs()),
              objective, batch_fn, run_id=run_id, accelerator=acc, desc=f"{desc} {cfg.name}",
              on_save=write, on_step=draw, strict=False, lr_of=cfg.learning_rate)
    return out / f"{cfg.name}.safetensors"
