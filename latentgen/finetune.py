"""LoRA fine-tuning on a folder of captioned images, through the one training loop (``latentgen.train``).

    latentgen finetune-lora data/ --out runs/purple --rank 8 --steps 600 --kohya

Data: images (png, jpg, jpeg, webp, bmp) with captions, either one ``.txt`` sidecar per image
(``cat.png`` + ``cat.txt``, kohya's layout) or a ``metadata.jsonl`` of ``{"file_name", "text"}``
lines (Hugging Face's imagefolder layout). Each image is resized (shorter side) and center-cropped,
or resized, to ``resolution``; the VAE encodes every image once and the latent distributions are
cached, a latent being sampled from them at each step. LoRA adapters (peft) go on the U-Net's
attention projections (to_q, to_k, to_v, to_out.0) and optionally the text encoder's (q_proj,
k_proj, v_proj, out_proj). With ``prior_data`` every batch adds as many images of what the model
should keep (kohya's regularization images; DreamBooth's prior preservation, which the base model
can draw itself from ``prior_prompts``). Data order, noise and timesteps are functions of (seed, step, process):
``--resume`` continues exactly, and under ``accelerate launch`` each process takes its own share.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import lora as lora_io
from . import train
from .captioned import prepare, read_dataset

@dataclass
class LoraTrainConfig:
    data: Path  # folder of images + captions
    out: Path  # run folder: <name>.safetensors, checkpoints/, samples/
    model: str | None = None  # base model: diffusers folder or preset (None: the embedded model)
    name: str = "lora"
    rank: int = 8
    alpha: float | None = None  # None: = rank
    train_text_encoder: bool = False
    lr: float = 1e-4
    lr_schedule: str = "constant"  # constant, cosine, linear, ... (diffusers.optimization)
    warmup: int = 0
    steps: int | None = None  # optimizer steps; or give epochs
    epochs: float | None = None
    batch: int = 4  # per process
    grad_accum: int = 1
    resolution: int | None = None  # None: the model's default width
    crop: str = "center"  # center (resize shorter side, crop) or resize (stretch)
    mixed_precision: str = "no"  # no, fp16, bf16
    gradient_checkpointing: bool = False
    snr_gamma: float | None = None  # min-SNR-gamma weighting, e.g. 5
    noise_offset: float = 0.0  # e.g. 0.05
    caption_dropout: float = 0.0
    default_caption: str | None = None  # for images without a caption (else: an error)
    prior_data: Path | None = None  # captioned images of what the model should keep (kohya's reg images)
    prior_prompts: list[str] = field(default_factory=list)  # if given, the base model draws prior_data itself
    prior_images: int = 100  # how many it draws (prompts cycled, seeds seed+i); existing ones are kept
    prior_weight: float = 1.0  # loss = loss(data) + prior_weight * loss(prior), a prior image per data image
    seed: int = 0
    save_every: int = 100
    validate_every: int | None = None
    validation_prompts: list[str] = field(default_factory=list)
    kohya: bool = False  # also write <name>.kohya.safetensors (kohya/A1111 layout)
    resume: bool = False

    def check(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank={self.rank!r} is invalid: use a whole number >= 1, such as rank=8.")
        if self.alpha is not None and not self.alpha > 0:
            raise ValueError(f"alpha={self.alpha!r} is invalid: use a positive number (default: the rank).")
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps=... or epochs=..., such as steps=500.")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps={self.steps!r} is invalid: use a whole number >= 1.")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs={self.epochs!r} is invalid: use a positive number.")
        for n in ("batch", "grad_accum", "save_every"):
            if not isinstance(getattr(self, n), int) or getattr(self, n) < 1:
                raise ValueError(f"{n}={getattr(self, n)!r} is invalid: use a whole number >= 1.")
        if self.crop not in ("center", "resize"):
            raise ValueError(f"crop={self.crop!r} is invalid: use 'center' or 'resize'.")
        if self.prior_prompts and self.prior_data is None:
            raise ValueError("prior_prompts need prior_data=FOLDER (--prior-data), where the drawn images go.")
        if not (self.prior_weight > 0 and math.isfinite(self.prior_weight)):
            raise ValueError(f"prior_weight={self.prior_weight!r} is invalid: use a positive number such as 1.0.")
        if not isinstance(self.prior_images, int) or self.prior_images < 1:
            raise ValueError(f"prior_images={self.prior_images!r} is invalid: use a whole number >= 1.")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is invalid: use no, fp16 or bf16.")


class LoraObjective(torch.nn.Module):
    """The denoising loss with LoRA-wrapped U-Net (and text encoder); checkpoints hold LoRA weights only."""

    def __init__(self, unet, text_encoder, noise_scheduler, snr_gamma, noise_offset):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder
        self.noise_scheduler, self.snr_gamma, self.noise_offset = noise_scheduler, snr_gamma, noise_offset

    def forward(self, input_ids, mean, std, generator, weights=None):
        latents = mean + std * torch.randn(mean.shape, generator=generator).to(mean)  # (B, 4, h, w), scaled
        hidden = self.text_encoder(input_ids)[0]  # (B, 77, D)
        return train.diffusion_loss(self.unet, hidden, latents, self.noise_scheduler, generator,
                                    snr_gamma=self.snr_gamma, noise_offset=self.noise_offset, weights=weights)

    def state_dict(self, *args, destination=None, prefix="", keep_vars=False):
        full = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for k in [k for k in full if "lora_" not in k[len(prefix):]]:
            del full[k]
        return full


def trained_lora(c, alpha: float, meta: dict) -> lora_io.Lora:
    """The adapter named 'default' in the components, as a ``lora.Lora``."""
    out = lora_io.Lora(metadata={k: str(v) for k, v in meta.items()})
    for part, model in (("unet", c.unet), ("text_encoder", c.text_encoder)):
        for name, mod in model.named_modules():
            if hasattr(mod, "lora_A") and "default" in mod.lora_A:
                out.modules.setdefault(part, {})[lora_io._prefix(part, model) + name] = (mod.lora_A["default"].weight.detach().float().cpu(),
                                                          mod.lora_B["default"].weight.detach().float().cpu(), alpha)
    return out


def run(cfg: LoraTrainConfig) -> Path:
    """Fine-tune and write ``cfg.out/<name>.safetensors`` (and the kohya file on request); returns its path."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from peft import LoraConfig, inject_adapter_in_model

    from . import components
    from .recipe import tokenize

    t_start = time.perf_counter()
    cfg.check()
    pairs = read_dataset(cfg.data, cfg.default_caption)  # bad data fails before any model loads
    if cfg.prior_data is not None and not cfg.prior_prompts:
        read_dataset(cfg.prior_data)
    ckpt, _ = train.latest_checkpoint(Path(cfg.out))
    if ckpt is not None and not cfg.resume:
        raise ValueError(f"{cfg.out} already holds checkpoints ({ckpt.name}): pass resume=True (--resume) to "
                         f"continue that run, or use a new output folder.")
    # cpu=True on machines without CUDA: under torchrun / `accelerate launch --multi_gpu` the processes
    # then join a gloo group (accelerate's MULTI_CPU) instead of each training alone
    acc = Accelerator(gradient_accumulation_steps=1, mixed_precision=cfg.mixed_precision,
                      cpu=not torch.cuda.is_available())
    c = components.load(cfg.model, device=acc.device, dtype="fp32")
    res = cfg.resolution or c.defaults.width
    f = c.vae_scale_factor
    if res % f:
        raise ValueError(f"resolution={res} is invalid: use a multiple of {f}, such as {res // f * f or f}.")
    alpha = float(cfg.alpha or cfg.rank)
    world = acc.num_processes
    steps = cfg.steps or math.ceil(cfg.epochs * len(pairs) / (cfg.batch * cfg.grad_accum * world))

    prior = []
    if cfg.prior_data is not None:
        if cfg.prior_prompts and acc.is_main_process:  # drawn by the base model, before any adapter
            from .captioned import draw_prior
            from .pipeline import Pipeline

            draw_prior(Pipeline(c), cfg.prior_data, cfg.prior_prompts, cfg.prior_images, cfg.seed)
        acc.wait_for_everyone()
        prior = read_dataset(cfg.prior_data)

    # the VAE runs once per image: cache each latent distribution (N, 4, h, w), scaled
    with torch.no_grad():
        dists = [c.vae.encode(prepare(p, res, cfg.crop).to(acc.device)).latent_dist for p, _ in pairs + prior]
    sf = c.vae.config.scaling_factor
    mean = torch.cat([d.mean for d in dists]) * sf
    std = torch.cat([d.std for d in dists]) * sf
    captions = [cap for _, cap in pairs + prior]

    c.unet.requires_grad_(False)
    c.text_encoder.requires_grad_(False)
    c.vae.requires_grad_(False)
    torch.manual_seed(cfg.seed)  # LoRA init (gaussian A, zero B) is seeded
    # peft itself wraps any torch module: diffusers' and transformers' add_adapter are version-gated
    # front ends to this same call (transformers 5.24 refuses peft < 0.22)
    inject_adapter_in_model(LoraConfig(r=cfg.rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                       target_modules=list(lora_io.UNET_TARGETS)), c.unet, adapter_name="default")
    if cfg.train_text_encoder:
        inject_adapter_in_model(LoraConfig(r=cfg.rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                           target_modules=list(lora_io.TEXT_TARGETS)), c.text_encoder,
                                adapter_name="default")
    if cfg.gradient_checkpointing:
        c.unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            c.text_encoder.gradient_checkpointing_enable()
    noise_scheduler = DDPMScheduler.from_config(c.scheduler.config)
    objective = LoraObjective(c.unet, c.text_encoder, noise_scheduler, cfg.snr_gamma, cfg.noise_offset)

    def picks(n, offset, stream, step, micro, a):
        first = ((step * cfg.grad_accum + micro) * a.num_processes + a.process_index) * cfg.batch
        # epoch-wise shuffles; each process takes its own slice
        return [offset + random.Random(f"{cfg.seed}:{stream}{g // n}").sample(range(n), n)[g % n]
                for g in range(first, first + cfg.batch)]

    def batch_fn(step, micro, a):
        idx = picks(len(pairs), 0, "epoch:", step, micro, a)
        if prior:  # as many prior images, after the data: loss = mean(data) + prior_weight * mean(prior)
            idx += picks(len(prior), len(pairs), "prior-epoch:", step, micro, a)
        rng = random.Random(f"{cfg.seed}:dropout:{step}:{micro}:{a.process_index}")
        caps = ["" if rng.random() < cfg.caption_dropout else captions[i] for i in idx]
        weights = None if not prior else torch.tensor([1.0] * cfg.batch + [cfg.prior_weight] * cfg.batch) / cfg.batch
        return {"input_ids": tokenize(c.tokenizer, caps).to(a.device), "mean": mean[idx], "std": std[idx],
                "generator": train.step_generator(cfg.seed, step, micro, a.process_index),
                "weights": None if weights is None else weights.to(a.device)}

    settings = train.config_dict(cfg, skip=("out", "resume", "save_every", "validate_every", "validation_prompts"))
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": cfg.rank, "ss_network_alpha": alpha,
            "ss_learning_rate": cfg.lr, "ss_lr_scheduler": cfg.lr_schedule, "ss_max_train_steps": steps,
            "ss_resolution": f"({res}, {res})", "ss_seed": cfg.seed, "ss_num_train_images": len(pairs),
            "ss_output_name": cfg.name, "ss_base_model": c.name, "ss_training_started_at": round(time.time()),
            "ss_network_train_text_encoder": cfg.train_text_encoder, "ss_num_reg_images": len(prior),
            "latentgen_training": json.dumps({**settings, "steps": steps, "processes": world})}
    out = Path(cfg.out)

    setup = time.perf_counter() - t_start  # loading, prior images, latent cache

    def write(step):  # the loop's seconds (summed over resumed runs) plus this run's setup
        m = {**meta, "ss_steps": step, "latentgen_train_seconds": round(train.elapsed_seconds(out) + setup, 1)}
        lora = trained_lora(c, alpha, m)
        lora_io.save(lora, out / f"{cfg.name}.safetensors", "diffusers")
        if cfg.kohya:
            lora_io.save(lora, out / f"{cfg.name}.kohya.safetensors", "kohya")

    def on_step(step):
        if cfg.validate_every and cfg.validation_prompts and step % cfg.validate_every == 0:
            from .pipeline import Pipeline
            from .quality import grid

            images = Pipeline(c).generate(cfg.validation_prompts, seed=cfg.seed)
            (out / "samples").mkdir(parents=True, exist_ok=True)
            grid(images, cols=len(images), labels=cfg.validation_prompts).save(out / "samples" / f"step-{step:07d}.png")

    run_id = {"lora": settings, "data": [[p.name, cap] for p, cap in pairs], "steps": steps, "processes": world,
              "prior": [[p.name, cap] for p, cap in prior]}
    train.run(train.LoopConfig(out=out, steps=steps, lr=cfg.lr, lr_schedule=cfg.lr_schedule, warmup=cfg.warmup,
                               grad_accum=cfg.grad_accum, seed=cfg.seed, save_every=cfg.save_every,
                               mixed_precision=cfg.mixed_precision, weight_decay=0.0),
              objective, batch_fn, run_id=run_id, accelerator=acc, desc=f"lora {cfg.name}",
              on_save=write, on_step=on_step, strict=False)
    return out / f"{cfg.name}.safetensors"


def add_parser(sub) -> None:
    """The ``latentgen finetune-lora`` subcommand."""
    p = sub.add_parser("finetune-lora", help="fine-tune LoRA adapters on a folder of captioned images")
    p.add_argument("data", help="folder of images with .txt captions, or with a metadata.jsonl")
    p.add_argument("--out", required=True, help="run folder (checkpoints, samples, the LoRA files)")
    p.add_argument("--model", default=None, help="base model: diffusers folder or preset (default: embedded)")
    p.add_argument("--name", default="lora", help="file name of the LoRA (<out>/<name>.safetensors)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=None, help="default: the rank")
    p.add_argument("--train-text-encoder", action="store_true")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lr-schedule", default="constant", help="constant, cosine, linear, constant_with_warmup, ...")
    p.add_argument("--warmup", type=int, default=0)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--steps", type=int, help="optimizer steps")
    g.add_argument("--epochs", type=float, help="passes over the data (all processes together)")
    p.add_argument("--batch", type=int, default=4, help="images per process and micro-batch")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--resolution", type=int, default=None, help="default: the model's size")
    p.add_argument("--crop", choices=["center", "resize"], default="center")
    p.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--snr-gamma", type=float, default=None, help="min-SNR-gamma weighting, e.g. 5")
    p.add_argument("--noise-offset", type=float, default=0.0, help="e.g. 0.05")
    p.add_argument("--caption-dropout", type=float, default=0.0)
    p.add_argument("--default-caption", default=None, help="caption for images that have none")
    p.add_argument("--prior-data", type=Path, default=None,
                   help="captioned images of what the model should keep drawing (prior preservation)")
    p.add_argument("--prior-prompt", action="append", default=[], dest="prior_prompts",
                   help="the base model draws --prior-images images of these prompts into --prior-data")
    p.add_argument("--prior-prompts-file", type=Path, default=None, help="more prior prompts, one per line")
    p.add_argument("--prior-images", type=int, default=100)
    p.add_argument("--prior-weight", type=float, default=1.0, help="weight of the prior images' loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--validate-every", type=int, default=None)
    p.add_argument("--validation-prompt", action="append", default=[], dest="validation_prompts")
    p.add_argument("--kohya", action="store_true", help="also write <name>.kohya.safetensors (kohya/A1111 layout)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(func=lambda args: _cmd(args))


def _cmd(args) -> int:
    from dataclasses import fields

    if args.prior_prompts_file is not None:
        if not args.prior_prompts_file.is_file():
            raise FileNotFoundError(f"--prior-prompts-file {args.prior_prompts_file} does not exist: give a text "
                                    f"file with one prompt per line.")
        lines = args.prior_prompts_file.read_text().splitlines()
        args.prior_prompts = args.prior_prompts + [ln.strip() for ln in lines if ln.strip()]
    cfg = LoraTrainConfig(**{f.name: getattr(args, f.name) for f in fields(LoraTrainConfig)})
    path = run(cfg)
    print(path)
    return 0
