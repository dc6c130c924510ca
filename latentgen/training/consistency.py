"""Latent consistency distillation into a LoRA (LCM-LoRA), through the one training loop (``latentgen.training.loop``).

    latentgen distill-lcm data/ --out runs/lcm --steps 1000
    latentgen shapes-data runs/lcm-data -n 1000                      # the embedded world: captioned flat shapes
    latentgen distill-lcm runs/lcm-data --out runs/lcm --batch 32 --steps 2000
    latentgen generate "a red circle" --lora runs/lcm/lcm.safetensors --scheduler lcm --steps 4 --guidance 1

Latent consistency distillation (Luo et al. 2023, LCM, https://arxiv.org/abs/2310.04378, Algorithm 1) with the
model plus a LoRA as the student (Luo et al. 2023, LCM-LoRA, https://arxiv.org/abs/2311.05556). For a latent x0
(B, 4, h, w) drawn from the data's cached VAE posteriors and its captions' embeddings cond (B, 77, D):

  1. DDIM solver over skipped timesteps: N = ``num_ddim_timesteps`` of the T training timesteps, k = T // N,
     solver timesteps k-1, 2k-1, ..., T-1; per image an index n, t = (n+1) k - 1, t' = max(t - k, 0);
     x_t = add_noise(x0, eps, t).
  2. Teacher (the frozen model: adapters off, no gradient), guided with w ~ U[w_min, w_max] per image: its x0 and
     eps predictions at (x_t, t) as uncond + w (cond - uncond), then one DDIM step to t':
     x_t' = sqrt(acp(t')) x0_w + sqrt(1 - acp(t')) eps_w (acp: the scheduler's alphas_cumprod).
  3. Consistency function of the student (model + LoRA): f(x, t) = c_skip(t) x + c_out(t) x0(x, t), with
     c_skip = sd^2 / ((s t)^2 + sd^2), c_out = s t / sqrt((s t)^2 + sd^2), sd = 0.5, s = ``timestep_scaling``:
     LCMScheduler's boundary conditions, so f(x, 0) = x.
  4. Loss: pseudo-Huber mean(sqrt((f(x_t, t) - sg[f(x_t', t')])^2 + c^2) - c), c = ``huber_c``; the target
     sg[...] is the student itself without gradient (LCM-LoRA keeps no EMA target).

w is a guidance scale as ``generate``'s ``guidance`` (uncond + w (cond - uncond); the papers' omega is w - 1). By
default w ~ U[g, 2g] for the model's default guidance g: [7.5, 15] for SD 1.5, near the [6, 16] of diffusers'
LCM-LoRA script (its w_min=5, w_max=15 in the omega convention); [4, 8] for the embedded model.

The LoRA is written as finetune-lora writes it (``<out>/<name>.safetensors``, with ``kohya`` the kohya file too),
its header saying that it is an LCM-LoRA and how to draw with it: ``LCM``, the "lcm" sampler, 4 steps, guidance 1
(``latentgen.lora.formats.Recommendation``). Latents, noise, solver indices and guidance are drawn from
``loop.step_generator`` at (seed, step, slot), slot = micro-batch * processes + process: a run resumes exactly,
processes draw differently, and P processes train what one process does with P times the micro-batches.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..lora.formats import Recommendation
from . import finetune, header, network
from . import loop as train
from ..text import xl as sdxl
from .captioned import Batches, cache_latents
from .configs import LcmDistillConfig, check_solver_steps

LCM = Recommendation(kind="lcm", sampler="lcm", steps=4, guidance=1.0)  # what the header recommends


def solver_timesteps(num_train: int, n: int) -> torch.Tensor:
    """The DDIM solver's timesteps (N,): k-1, 2k-1, ..., T-1 with k = T // N (LCMScheduler's timesteps to pick
    from, for ``original_inference_steps`` N)."""
    check_solver_steps(num_train, n)
    return torch.arange(1, n + 1) * (num_train // n) - 1


def boundary_conditions(t: torch.Tensor, scaling: float, sigma_data: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """c_skip(t), c_out(t), each shaped like t (LCM, eq. 9, as LCMScheduler computes them): 1 and 0 at t = 0."""
    st = t.float() * scaling
    return sigma_data ** 2 / (st ** 2 + sigma_data ** 2), st / (st ** 2 + sigma_data ** 2) ** 0.5


def x0_and_eps(output: torch.Tensor, x: torch.Tensor, acp: torch.Tensor, prediction_type: str):
    """The U-Net's ``output`` at the noisy x (B, 4, h, w), where alphas_cumprod is ``acp`` (B, 1, 1, 1), read as the
    clean latent and the noise (x0, eps), each (B, 4, h, w)."""
    a, s = acp.sqrt(), (1 - acp).sqrt()  # x = a x0 + s eps
    if prediction_type == "epsilon":
        return (x - s * output) / a, output
    if prediction_type == "v_prediction":  # v = a eps - s x0 (Salimans & Ho 2022)
        return a * x - s * output, a * output + s * x
    if prediction_type == "sample":
        return output, (x - a * output) / s
    raise ValueError(f"prediction_type={prediction_type!r} is unknown: use epsilon, v_prediction or sample.")


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, acp_prev: torch.Tensor) -> torch.Tensor:
    """DDIM's deterministic step (eta 0) to the timestep whose alphas_cumprod is ``acp_prev`` (B, 1, 1, 1)."""
    return acp_prev.sqrt() * x0 + (1 - acp_prev).sqrt() * eps


def pseudo_huber(pred: torch.Tensor, target: torch.Tensor, c: float) -> torch.Tensor:
    """mean(sqrt((pred - target)^2 + c^2) - c): about squared error / 2c near 0, absolute error far from it."""
    return (((pred.float() - target.float()) ** 2 + c ** 2).sqrt() - c).mean()


@contextmanager
def adapters_off(layers: list):
    """peft's LoRA ``layers`` switched off inside the block (the frozen model: the teacher), on again after."""
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)


class ConsistencyObjective(finetune.LoraCheckpointed):
    """The distillation loss of one micro-batch (the module docstring's steps 1-4); checkpoints hold the LoRA."""

    def __init__(self, unet, text_encoder, noise_scheduler, uncond_ids: torch.Tensor, cfg: LcmDistillConfig,
                 guidance: tuple[float, float], xl=None, size: int | None = None):
        """``xl``: an SDXL model's ``text.xl.XL`` (its second encoder, how an empty prompt reads), ``size``: the
        training size, whose uncropped size numbers the U-Net reads as drawing gives them."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        super().__init__()
        self.unet, self.text_encoder, self.noise_scheduler = unet, text_encoder, noise_scheduler
        self.xl, self.size = xl, size
        self.text_encoder_2 = None if xl is None else xl.text_encoder_2  # frozen (no adapters), as the first
        num_train = noise_scheduler.config.num_train_timesteps
        self.timesteps = solver_timesteps(num_train, cfg.num_ddim_timesteps)  # (N,)
        self.skip = num_train // cfg.num_ddim_timesteps  # k
        self.acp = noise_scheduler.alphas_cumprod  # (T,)
        self.prediction = noise_scheduler.config.prediction_type
        self.uncond_ids = uncond_ids  # (1, 77): the empty prompt's tokens
        self.uncond_ids_2 = None if xl is None else train.tokenize(xl.tokenizer_2, [""])  # bigG's
        self.guidance, self.huber_c, self.scaling = guidance, cfg.huber_c, cfg.timestep_scaling
        self.lora_layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]

    def forward(self, input_ids, mean, std, generator, input_ids_2=None):
        latents = train.sample_latents(mean, std, generator)  # (B, 4, h, w), scaled
        b = latents.shape[0]
        noise = torch.randn(latents.shape, generator=generator).to(latents)  # (B, 4, h, w)
        index = torch.randint(0, len(self.timesteps), (b,), generator=generator)  # (B,): a solver step per image
        lo, hi = self.guidance
        w = (lo + (hi - lo) * torch.rand(b, generator=generator)).view(b, 1, 1, 1).to(latents)  # (B, 1, 1, 1)
        t = self.timesteps[index]  # (B,)
        t_prev = (t - self.skip).clamp(min=0)  # (B,): t' (0 for the first solver step)
        x_t = self.noise_scheduler.add_noise(latents, noise, t.to(latents.device))  # (B, 4, h, w)
        with torch.no_grad():
            cond, uncond = self.texts(input_ids, input_ids_2)  # (B, 77, D) each, or (hidden, added) pairs
            x_prev = self.teacher_step(x_t, t, t_prev, cond, uncond, w)  # (B, 4, h, w) at t'
            target = self.consistency(x_prev, t_prev, cond)  # the stop-gradient target
        return pseudo_huber(self.consistency(x_t, t, cond), target, self.huber_c)

    def texts(self, input_ids, input_ids_2) -> tuple:
        """The captions' and the empty prompt's conditioning: hidden states (B, 77, D) each; SDXL's as (hidden,
        {"text_embeds": pooled (B, P), "time_ids": (B, 6)}), the empty prompt zeros where the model says so."""
        b = len(input_ids)
        ids = torch.cat([input_ids, self.uncond_ids.to(input_ids.device).expand(b, -1)])  # (2B, 77)
        if self.xl is None:
            return self.text_encoder(ids)[0].chunk(2)
        ids_2 = torch.cat([input_ids_2, self.uncond_ids_2.to(input_ids.device).expand(b, -1)])
        hidden, pooled = sdxl.batch_embed(ids, ids_2, self.text_encoder, self.text_encoder_2)
        if self.xl.force_zeros:  # diffusers' and A1111's empty negative
            hidden[b:], pooled[b:] = 0, 0
        return [(h, sdxl.batch_added(p, self.size)) for h, p in zip(hidden.chunk(2), pooled.chunk(2))]

    def call(self, x, t, text):
        """The U-Net's prediction for x at t under ``text`` (hidden states, or SDXL's (hidden, added) pair)."""
        hidden, added = text if isinstance(text, tuple) else (text, None)
        extra = {} if added is None else {"added_cond_kwargs": added}
        return self.unet(x, t.to(x.device), encoder_hidden_states=hidden, **extra).sample

    def alphas(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.acp[t].view(-1, 1, 1, 1).to(like)  # (B, 1, 1, 1)

    def teacher_step(self, x_t, t, t_prev, cond, uncond, w) -> torch.Tensor:
        """One DDIM step of the guided frozen model from t to t' (B, 4, h, w)."""
        x2, t2 = torch.cat([x_t, x_t]), torch.cat([t, t])  # (2B, 4, h, w), (2B,): cond half, uncond half
        both = torch.cat([cond, uncond]) if self.xl is None else (torch.cat([cond[0], uncond[0]]), {
            k: torch.cat([cond[1][k], uncond[1][k]]) for k in cond[1]})
        with adapters_off(self.lora_layers):
            out = self.call(x2, t2, both)
        x0, eps = x0_and_eps(out, x2, self.alphas(t2, x2), self.prediction)
        (x0_c, x0_u), (eps_c, eps_u) = x0.chunk(2), eps.chunk(2)
        return ddim_step(x0_u + w * (x0_c - x0_u), eps_u + w * (eps_c - eps_u), self.alphas(t_prev, x_t))

    def consistency(self, x, t, cond) -> torch.Tensor:
        """f(x, t) = c_skip(t) x + c_out(t) x0(x, t) of the student, the model with its LoRA (B, 4, h, w)."""
        out = self.call(x, t, cond)
        x0, _ = x0_and_eps(out, x, self.alphas(t, x), self.prediction)
        c_skip, c_out = (c.view(-1, 1, 1, 1).to(x) for c in boundary_conditions(t, self.scaling))
        return c_skip * x + c_out * x0


class DistillBatches(Batches):
    """finetune-lora's data order and tag shuffles (``captioned.Batches``; no prior images, no caption dropout), each
    micro-batch's randomness from ``step_generator(seed, step, micro * processes + process)``: its place among all
    the step's micro-batches, so P processes draw what one process draws with P times ``grad_accum``."""

    def __init__(self, cfg: LcmDistillConfig, tokenizer, captions: list[str], mean, std, tokenizer_2=None):
        super().__init__(cfg, tokenizer, captions, len(captions), 0, mean, std, tokenizer_2)

    def __call__(self, step: int, micro: int, a) -> dict:
        idx = self.picks(self.n_data, 0, "epoch:", step, micro, a)
        slot = micro * a.num_processes + a.process_index
        return {**self.ids(self.texts(idx, step, micro, a.process_index), a.device), "mean": self.mean[idx],
                "std": self.std[idx], "generator": train.step_generator(self.cfg.seed, step, slot)}


def run(cfg: LcmDistillConfig) -> Path:
    """Distill the model into an LCM-LoRA; write ``cfg.out/<name>.safetensors`` (and the kohya file on request)
    with the recommendation in its header; returns its path."""
    from diffusers import DDPMScheduler

    started = time.perf_counter()
    pairs = finetune.check_inputs(cfg)  # bad settings and data fail before any model loads
    sample = {"scheduler": LCM.sampler, "steps": LCM.steps, "guidance": LCM.guidance}  # the sample images' defaults
    acc, c, res = finetune.load_base(cfg)  # SD 1.x/2.x and SDXL base models (a refiner is refused)
    finetune.check_samples(cfg, c, sample)
    guidance = cfg.guidance_range(c.defaults.guidance)
    mean, std = cache_latents(c.vae, pairs, res, cfg.crop)
    network.attach_lora(c, cfg)
    objective = ConsistencyObjective(c.unet, c.text_encoder, DDPMScheduler.from_config(c.scheduler.config),
                                     train.tokenize(c.tokenizer, [""]), cfg, guidance, c.xl, res)
    batch_fn = DistillBatches(cfg, c.tokenizer, [cap for _, cap in pairs], mean, std,
                              c.xl.tokenizer_2 if c.xl is not None else None)
    steps = finetune.total_steps(cfg, len(pairs), acc.num_processes)
    meta = {**header.kohya(cfg, c, steps, res, len(pairs)), "ss_network_train_text_encoder": False,
            **LCM.metadata(), "latentgen_teacher_guidance": json.dumps(guidance)}
    return finetune.fit(cfg, c, acc, objective, batch_fn, pairs, steps=steps, meta=meta, started=started,
                        desc="lcm", extra_id={"teacher_guidance": guidance},
                        sample=sample)
