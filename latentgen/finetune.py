"""LoRA fine-tuning on a folder of captioned images, through the one training loop (``latentgen.train``).

    latentgen finetune-lora data/ --out runs/purple --rank 8 --steps 600 --kohya

Data: images (png, jpg, jpeg, webp, bmp) with captions, either one ``.txt`` sidecar per image
(``cat.png`` + ``cat.txt``, kohya's layout) or a ``metadata.jsonl`` of ``{"file_name", "text"}``
lines (Hugging Face's imagefolder layout). Each image is resized (shorter side) and center-cropped,
or resized, to ``resolution``; the VAE encodes every image once and the latent distributions are
cached, a latent being sampled from them at each step. LoRA adapters (peft) go on the U-Net's
attention projections (to_q, to_k, to_v, to_out.0) and optionally the text encoder's (q_proj,
k_proj, v_proj, out_proj). Data order, noise and timesteps are functions of (seed, step, process):
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

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision={self.mixed_precision!r} is invalid: use no, fp16 or bf16.")


def read_dataset(folder: Path, default_caption: str | None = None) -> list[tuple[Path, str]]:
    """(image path, caption) pairs of a data folder, sorted by file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {str(folder)!r} does not exist; pass a folder of images with captions.")
    meta = folder / "metadata.jsonl"
    if meta.is_file():
        rows = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
        pairs = [(folder / r["file_name"], r.get("text")) for r in rows]
        missing = [p.name for p, _ in pairs if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"metadata.jsonl names {len(missing)} missing file(s): {', '.join(missing[:5])}.")
    else:
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        pairs = [(p, p.with_suffix(".txt").read_text().strip() if p.with_suffix(".txt").is_file() else None)
                 for p in images]
    if not pairs:
        raise ValueError(f"data folder {str(folder)!r} has no images ({', '.join(IMAGE_EXTS)}); add images "
                         f"with a .txt caption beside each, or a metadata.jsonl.")
    uncaptioned = [p.name for p, c in pairs if not c]
    if uncaptioned and default_caption is None:
        raise ValueError(f"{len(uncaptioned)} image(s) have no caption ({', '.join(uncaptioned[:5])}): add a .txt "
                         f"beside each image or a metadata.jsonl, or pass default_caption=... (--default-caption).")
    return [(p, c or default_caption) for p, c in pairs]


def prepare(path: Path, resolution: int, crop: str) -> torch.Tensor:
    """An image file -> (1, 3, res, res) in [-1, 1]: shorter side resized and center-cropped, or stretched."""
    from .images import LANCZOS, load_rgb, to_tensor

    im = load_rgb(path, "image")[0]
    if crop == "center":
        s = resolution / min(im.size)
        im = im.resize((max(resolution, round(im.width * s)), max(resolution, round(im.height * s))), LANCZOS)
        left, top = (im.width - resolution) // 2, (im.height - resolution) // 2
        im = im.crop((left, top, left + resolution, top + resolution))
    else:
        im = im.resize((resolution, resolution), LANCZOS)
    return to_tensor(im)


class LoraObjective(torch.nn.Module):
    """The denoising loss with LoRA-wrapped U-Net (and text encoder); checkpoints hold LoRA weights only."""

    def __init__(self, unet, text_encoder, noise_scheduler, snr_gamma, noise_offset):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder
        self.noise_scheduler, self.snr_gamma, self.noise_offset = noise_scheduler, snr_gamma, noise_offset

    def forward(self, input_ids, mean, std, generator):
        latents = mean + std * torch.randn(mean.shape, generator=generator).to(mean)  # (B, 4, h, w), scaled
        hidden = self.text_encoder(input_ids)[0]  # (B, 77, D)
        return train.diffusion_loss(self.unet, hidden, latents, self.noise_scheduler, generator,
                                    snr_gamma=self.snr_gamma, noise_offset=self.noise_offset)

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
    from peft import LoraConfig

    from . import components
    from .recipe import tokenize

    cfg.check()
    pairs = read_dataset(cfg.data, cfg.default_caption)  # bad data fails before any model loads
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

    # the VAE runs once per image: cache each latent distribution (N, 4, h, w), scaled
    with torch.no_grad():
        dists = [c.vae.encode(prepare(p, res, cfg.crop).to(acc.device)).latent_dist for p, _ in pairs]
    sf = c.vae.config.scaling_factor
    mean = torch.cat([d.mean for d in dists]) * sf
    std = torch.cat([d.std for d in dists]) * sf
    captions = [cap for _, cap in pairs]

    c.unet.requires_grad_(False)
    c.text_encoder.requires_grad_(False)
    c.vae.requires_grad_(False)
    torch.manual_seed(cfg.seed)  # LoRA init (gaussian A, zero B) is seeded
    c.unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                  target_modules=list(lora_io.UNET_TARGETS)))
    if cfg.train_text_encoder:
        c.text_encoder.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                              target_modules=list(lora_io.TEXT_TARGETS)))
    if cfg.gradient_checkpointing:
        c.unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            c.text_encoder.gradient_checkpointing_enable()
    noise_scheduler = DDPMScheduler.from_config(c.scheduler.config)
    objective = LoraObjective(c.unet, c.text_encoder, noise_scheduler, cfg.snr_gamma, cfg.noise_offset)

    def batch_fn(step, micro, a):
        n = len(pairs)
        first = ((step * cfg.grad_accum + micro) * a.num_processes + a.process_index) * cfg.batch
        idx = []
        for g in range(first, first + cfg.batch):  # epoch-wise shuffles; each process its own slice
            perm = random.Random(f"{cfg.seed}:epoch:{g // n}").sample(range(n), n)
            idx.append(perm[g % n])
        rng = random.Random(f"{cfg.seed}:dropout:{step}:{micro}:{a.process_index}")
        caps = ["" if rng.random() < cfg.caption_dropout else captions[i] for i in idx]
        return {"input_ids": tokenize(c.tokenizer, caps).to(a.device), "mean": mean[idx], "std": std[idx],
                "generator": train.step_generator(cfg.seed, step, micro, a.process_index)}

    settings = train.config_dict(cfg, skip=("out", "resume", "save_every", "validate_every", "validation_prompts"))
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": cfg.rank, "ss_network_alpha": alpha,
            "ss_learning_rate": cfg.lr, "ss_lr_scheduler": cfg.lr_schedule, "ss_max_train_steps": steps,
            "ss_resolution": f"({res}, {res})", "ss_seed": cfg.seed, "ss_num_train_images": len(pairs),
            "ss_output_name": cfg.name, "ss_base_model": c.name, "ss_training_started_at": round(time.time()),
            "ss_network_train_text_encoder": cfg.train_text_encoder,
            "latentgen_training": json.dumps({**settings, "steps": steps, "processes": world})}
    out = Path(cfg.out)

    t0 = time.perf_counter()

    def write(step):
        m = {**meta, "ss_steps": step, "latentgen_train_seconds": round(time.perf_counter() - t0, 1)}
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

    run_id = {"lora": settings, "data": [[p.name, cap] for p, cap in pairs], "steps": steps, "processes": world}
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--validate-every", type=int, default=None)
    p.add_argument("--validation-prompt", action="append", default=[], dest="validation_prompts")
    p.add_argument("--kohya", action="store_true", help="also write <name>.kohya.safetensors (kohya/A1111 layout)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(func=lambda args: _cmd(args))


def _cmd(args) -> int:
    from dataclasses import fields

    cfg = LoraTrainConfig(**{f.name: getattr(args, f.name) for f in fields(LoraTrainConfig)})
    path = run(cfg)
    print(path)
    return 0
