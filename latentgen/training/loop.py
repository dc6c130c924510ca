"""The one training loop: full training of the embedded model and LoRA fine-tuning both run it.

Contract: ``model(**batch_fn(step, micro, accelerator))`` returns the loss of one micro-batch;
the model's ``forward`` computes the loss, so several processes synchronize gradients through
DDP. Batches and noise are pure functions of (seed, step, micro, process), so a run resumed from
a checkpoint sees exactly the data and noise it would have seen: no data-loader state to save. accelerate places the
model, wraps it for several processes, and saves/restores optimizer, LR schedule and RNG state.
With ``ema`` the loop also keeps an exponential moving average of the trained weights (diffusers'
``EMAModel``, checkpointed with the rest) and leaves the model holding it at the end.

Checkpoints are folders ``<out>/checkpoints/step-0000500``, written under a temporary name and
renamed when complete, so a kill mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr
from tqdm import tqdm

from .. import files
from . import noise as noise_terms
from .configs import LoopConfig
from .kohya_options import LossOptions


def _checkpoints(out: Path) -> list[Path]:
    d = out / "checkpoints"
    return sorted(d.glob("step-*")) if d.is_dir() else []


def check_fresh(out: Path, resume: bool) -> None:
    """A run folder that holds checkpoints is continued only on request (``--resume``), never mixed into silently."""
    ckpt, _ = latest_checkpoint(Path(out))
    if ckpt is not None and not resume:
        raise ValueError(f"{out} already holds checkpoints ({ckpt.name}): pass resume=True (--resume) to continue "
                         f"that run, or use a new output folder.")


def save_folder(model, folder: Path, info: dict) -> Path:
    """A diffusers model as the folder ``folder``, replaced whole, with ``latentgen.json``: how it was made."""
    with files.atomic_folder(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        (Path(tmp) / "latentgen.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    return folder


def latest_checkpoint(out: Path) -> tuple[Path | None, int]:
    """The newest complete checkpoint of a run folder and its step (None, 0 when there is none)."""
    ckpts = _checkpoints(out)
    return (ckpts[-1], int(ckpts[-1].name.split("-")[1])) if ckpts else (None, 0)


def run(cfg: LoopConfig, model: torch.nn.Module, batch_fn: Callable[..., dict], *,
        run_id: dict, accelerator: Accelerator | None = None, desc: str = "train",
        on_save: Callable[[int], None] | None = None, on_step: Callable[[int], None] | None = None,
        strict: bool = True, lr_of: Callable[[str], float] | None = None) -> list[float]:
    """Optimize ``model``'s trainable parameters for ``cfg.steps`` steps, resuming if checkpoints exist.

    ``run_id`` describes the run (config, data spec); resuming from a checkpoint written with a
    different one raises ValueError instead of silently mixing runs. Returns the logged losses.
    ``batch_fn(step, micro, accelerator)`` may use the accelerator's process index to shard data.
    ``on_save(step)`` / ``on_step(step)`` run on the main process after a checkpoint / every step.
    ``strict=False`` lets a checkpoint hold only part of the model (LoRA: the adapter weights).
    ``lr_of(name)``: each trainable parameter's learning rate, by its name in ``model`` (default: ``cfg.lr``).
    ``cfg.ema``: the trainable parameters end as their exponential moving average, the average SD and
    DDPM sample from (Ho et al. 2020, sec. 4); its warm-up follows diffusers (decay (1+t)/(10+t) until
    it reaches ``cfg.ema``), so early steps do not weigh in for long.
    """
    cfg.check()
    acc = accelerator or Accelerator(gradient_accumulation_steps=1, mixed_precision=cfg.mixed_precision)
    params, opt = optimizer(model, cfg, lr_of)
    sched = get_scheduler(cfg.lr_schedule, opt, num_warmup_steps=cfg.warmup, num_training_steps=cfg.steps)
    model, opt, sched = acc.prepare(model, opt, sched)
    ema = moving_average(params, cfg.ema)
    stamp = json.loads(json.dumps(run_id, default=str))
    start = resume(acc, cfg.out, stamp, strict, ema)
    before = elapsed_seconds(cfg.out)  # time spent by earlier (killed) invocations of this run
    losses: list[float] = []
    bar = tqdm(total=cfg.steps, initial=start, desc=desc, disable=not acc.is_main_process, smoothing=0.05)
    model.train()
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        total = 0.0
        for micro in range(cfg.grad_accum):  # gradients sync across processes on the last micro-batch only
            with acc.no_sync(model) if micro < cfg.grad_accum - 1 else nullcontext(), acc.autocast():
                loss = model(**batch_fn(step, micro, acc)) / cfg.grad_accum
                acc.backward(loss)
            total += loss.item()
        if cfg.max_grad_norm:
            acc.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(params)
        losses.append(total)
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
            save(acc, cfg, step + 1, stamp, seconds=before + time.perf_counter() - t0, ema=ema)
            if on_save is not None and acc.is_main_process:
                on_save(step + 1)
        if on_step is not None and acc.is_main_process:
            on_step(step + 1)
    bar.close()
    if ema is not None:
        ema.copy_to(params)
    model.eval()
    if acc.is_main_process and cfg.steps > start:
        print(f"{desc}: {cfg.steps - start} steps in {time.perf_counter() - t0:.0f}s")
    return losses


def optimizer(model: torch.nn.Module, cfg: LoopConfig, lr_of: Callable[[str], float] | None):
    """(the trainable parameters, the optimizer over them: ``cfg.optimizer``, AdamW by default): one group per
    learning rate (``lr_of(name)``, else ``cfg.lr``)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    rate = {n: lr_of(n) if lr_of else cfg.lr for n, _ in named}
    groups = [{"params": [p for n, p in named if rate[n] == lr], "lr": lr} for lr in dict.fromkeys(rate.values())]
    kind = cfg.optimizer or torch.optim.AdamW
    return [p for _, p in named], kind(groups, lr=cfg.lr, **{"weight_decay": cfg.weight_decay, **cfg.optimizer_kwargs})


def moving_average(params: list, decay: float) -> EMAModel | None:
    """An EMA of ``params`` (None when ``decay`` is 0); checkpoints keep it as ``ema.safetensors`` and ``ema.json``
    (``save_ema``, ``load_ema``), never as accelerate's pickled custom objects."""
    return EMAModel(params, decay=decay) if decay else None


def save_ema(ema: EMAModel, folder: Path) -> None:
    """The EMA's averages as tensors (safetensors) and its counters as JSON: nothing a reader must unpickle."""
    from safetensors.torch import save_file

    state = ema.state_dict()
    shadow = state.pop("shadow_params")
    tensors = {f"shadow.{i}": s.detach().contiguous().cpu() for i, s in enumerate(shadow)}
    save_file(tensors, str(folder / "ema.safetensors"))
    (folder / "ema.json").write_text(json.dumps(state, sort_keys=True))


def load_ema(ema: EMAModel, folder: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "ema.safetensors"))
    shadow = [tensors[f"shadow.{i}"].to(s.device, s.dtype) for i, s in enumerate(ema.shadow_params)]
    ema.load_state_dict({**json.loads((folder / "ema.json").read_text()), "shadow_params": shadow})


# what accelerate's save_state writes (all read back with torch.load(weights_only=True), the RNG states too),
# and latentgen's own files; a pickle of any other name is refused unread, whoever put it there
_CHECKPOINT_FILES = ("model*.safetensors", "optimizer*.bin", "scheduler*.bin", "sampler*.bin", "dl_state_dict*.bin",
                     "scaler.pt", "random_states_*.pkl", "run.json", "seconds.json", "ema.safetensors", "ema.json")


def check_checkpoint(ckpt: Path) -> None:
    """Refuse a checkpoint folder that holds a file latentgen does not write (``custom_checkpoint_0.pkl``: accelerate
    would unpickle it with code allowed): a training folder copied from someone else must not be code."""
    strange = sorted(f.name for f in ckpt.iterdir() if not any(f.match(g) for g in _CHECKPOINT_FILES))
    if strange:
        raise ValueError(f"checkpoint {ckpt} holds {', '.join(strange)}, which latentgen does not write and will not "
                         f"load (a pickle can run code): remove it if you know where it came from, or start a new "
                         f"--out.")


def resume(acc: Accelerator, out: Path, stamp: dict, strict: bool = True, ema: EMAModel | None = None) -> int:
    """Load the newest checkpoint of ``out`` into the prepared model/optimizer/schedule (and ``ema``); its step
    (0: none). A checkpoint written by a run with another ``stamp`` is refused, never silently mixed in."""
    ckpt, start = latest_checkpoint(out)
    if ckpt is not None:
        saved = json.loads((ckpt / "run.json").read_text())
        if saved != stamp:
            diff = sorted(k for k in set(saved) | set(stamp) if saved.get(k) != stamp.get(k))
            raise ValueError(f"checkpoint {ckpt} belongs to another run (differs in {diff}); "
                             f"use a new output folder, or the same settings to resume.")
        check_checkpoint(ckpt)
        acc.load_state(str(ckpt), strict=strict)
        if ema is not None:
            load_ema(ema, ckpt)
    return start


def elapsed_seconds(out: Path) -> float:
    """Training seconds of a run folder up to its newest checkpoint, summed over resumed invocations."""
    ckpt, _ = latest_checkpoint(out)
    f = ckpt / "seconds.json" if ckpt is not None else None
    return json.loads(f.read_text())["seconds"] if f is not None and f.is_file() else 0.0


def save(acc: Accelerator, cfg: LoopConfig, step: int, stamp: dict, seconds: float = 0.0,
         ema: EMAModel | None = None) -> None:
    """Write checkpoint ``step-NNNNNNN`` atomically (temporary folder, then rename); keep the newest few.

    ``seconds``: training time so far, kept in seconds.json (see ``elapsed_seconds``)."""
    acc.wait_for_everyone()
    if not acc.is_main_process:
        acc.wait_for_everyone()
        return
    root = cfg.out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / f"step-{step:07d}", root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    acc.save_state(str(tmp), safe_serialization=True)
    (tmp / "run.json").write_text(json.dumps({**stamp}, indent=1, sort_keys=True))
    (tmp / "seconds.json").write_text(json.dumps({"seconds": round(seconds, 1)}))
    if ema is not None:
        save_ema(ema, tmp)
    files.usual_modes(tmp)  # safetensors writes 0600
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in _checkpoints(cfg.out)[:-cfg.keep]:
        shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def diffusion_loss(unet, encoder_hidden_states: torch.Tensor, latents: torch.Tensor, noise_scheduler,
                   generator: torch.Generator, *, snr_gamma: float | None = None, weights: torch.Tensor | None = None,
                   condition: torch.Tensor | None = None, options: LossOptions | None = None) -> torch.Tensor:
    """Denoising loss of latent diffusion (Ho et al. 2020, https://arxiv.org/abs/2006.11239).

    latents (B, C, h, w), already scaled by the VAE's scaling factor; encoder_hidden_states (B, 77, D).
    Noise and timesteps come from ``generator`` (CPU) so they are reproducible and resumable.
    options: kohya's noise and weighting options (offset, multi-resolution and perturbed noise, min-SNR-gamma,
        debiased estimation: ``latentgen.training.noise``); ``snr_gamma`` alone is min-SNR-gamma weighting (Hang
        et al. 2023, https://arxiv.org/abs/2303.09556), e.g. 5, without the others.
    weights: (B,) per-image weights; the loss is then the weighted sum instead of the mean.
    condition: (B, 5, h, w) mask + masked-image latents of a 9-channel inpainting U-Net, concatenated to
        the noisy latents as the U-Net's input (``latentgen.embedded.inpainting``).
    """
    o = options if options is not None else LossOptions(snr_gamma=snr_gamma)
    b = latents.shape[0]
    noise = noise_terms.draw(latents, generator, o)  # the target's noise
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=generator).to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise_terms.perturbed(noise, generator, o.ip_noise_gamma), t)
    x = noisy if condition is None else torch.cat([noisy, condition], dim=1)
    pred = unet(x, t, encoder_hidden_states=encoder_hidden_states).sample
    kind = noise_scheduler.config.prediction_type
    target = noise if kind == "epsilon" else noise_scheduler.get_velocity(latents, noise, t)
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))  # (B,)
    if o.snr_gamma is not None or o.debiased_estimation:
        loss = loss * noise_terms.weight(compute_snr(noise_scheduler, t), kind != "epsilon", o)
    return loss.mean() if weights is None else (loss * weights).sum()


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Captions -> token ids (B, 77): BOS, tokens, EOS, padding to the tokenizer's length."""
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def sample_latents(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A draw from the VAE's diagonal Gaussian posterior (B, C, h, w): mean + std * noise, the noise
    from ``generator`` (CPU), so the draw is resumable (Kingma & Welling 2014, reparametrization)."""
    return mean + std * torch.randn(mean.shape, generator=generator).to(mean)


def drop_captions(captions: list[str], p: float, seed: int, step: int, micro: int = 0, process: int = 0) -> list[str]:
    """Each caption replaced by "" with probability ``p``, drawn from (seed, step, micro, process): the
    unconditional examples classifier-free guidance needs (Ho & Salimans 2022)."""
    rng = random.Random(f"{seed}:dropout:{step}:{micro}:{process}")
    return ["" if rng.random() < p else c for c in captions]


def config_dict(cfg, skip=("out",)) -> dict:
    """A config as JSON-able data, without where it is written (a moved run still resumes)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items() if k not in skip}


def step_generator(seed: int, step: int, micro: int = 0, process: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, step, micro, process): resumable randomness."""
    digest = hashlib.sha256(f"{seed}:{step}:{micro}:{process}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
