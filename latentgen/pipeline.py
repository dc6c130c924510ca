"""The text-to-image pipeline: prompt -> tokens -> embeddings -> latent loop with CFG -> VAE -> PIL.

Read top to bottom, ``Pipeline.generate`` is the whole data flow of latent diffusion
(Rombach et al. 2022, https://arxiv.org/abs/2112.10752). Shapes for SD 1.5 at 512x512:
tokens (1, 77), embeddings (1, 77, 768), latents (1, 4, 64, 64), image (1, 3, 512, 512).

Seeds: image i of a call is drawn from its own CPU ``torch.Generator`` seeded ``seed + i``, and
by default goes through the models alone, so it is bit-identical to a one-image call with
``seed + i``. The draws (initial noise, then any noise the scheduler adds per step) are the ones
diffusers' ``StableDiffusionPipeline`` makes with ``generator=[Generator().manual_seed(s), ...]``.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from . import metadata, schedulers
from .components import Components
from .edit import EditMixin
from .lora import LoraMixin

Callback = Callable[[int, int, torch.Tensor], None]  # (steps done, steps in all, latents)


def _check_int(name: str, value, minimum: int, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r} is invalid: {fix}")


def _as_prompts(prompt, name: str) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, Sequence) and prompt and all(isinstance(p, str) for p in prompt):
        return list(prompt)
    raise TypeError(f"{name} must be a string or a non-empty list of strings, got {type(prompt).__name__}; "
                    f"pass text such as {name}='a red circle'.")


class Pipeline(EditMixin, LoraMixin):
    """Stable Diffusion inference over loaded ``Components``; see ``latentgen.load``.

    ``generate`` (txt2img) here; ``img2img`` and ``inpaint`` in ``latentgen.edit``: one loop, ``sample``.
    LoRA adapters (``load_lora``, ``set_lora_scale``, ``fuse_lora``, ...) in ``latentgen.lora``.
    """

    def __init__(self, components: Components):
        self.c = components

    def __repr__(self) -> str:
        return f"Pipeline(model={self.c.name!r}, device={self.c.device}, dtype={self.c.dtype})"

    # -- argument checks: all cheap, all before any model work ---------------------------------
    def _resolve(self, *, steps, guidance, width, height, num_images, seed, scheduler, batch_size):
        d = self.c.defaults
        steps = d.steps if steps is None else steps
        guidance = d.guidance if guidance is None else guidance
        width = d.width if width is None else width
        height = d.height if height is None else height
        _check_int("steps", steps, 1, "use a whole number of denoising steps >= 1, such as steps=20.")
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
            raise ValueError(f"guidance={guidance!r} is invalid: use a finite number such as 7.5 "
                             f"(<= 1 turns classifier-free guidance off).")
        f = self.c.vae_scale_factor
        for name, v in (("width", width), ("height", height)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0 or v % f:
                near = max(f, round(v / f) * f) if isinstance(v, (int, float)) and math.isfinite(v) else 64 * f
                raise ValueError(f"{name}={v!r} is invalid: use a positive multiple of {f} "
                                 f"(the VAE's scale factor), such as {name}={near}.")
        _check_int("num_images", num_images, 1, "ask for at least one image, such as num_images=1.")
        _check_int("seed", seed, -(2**63), "use a whole number, such as seed=0.")
        if batch_size is not None:
            _check_int("batch_size", batch_size, 1, "use batch_size >= 1, or None for the default.")
        if scheduler is None:
            scheduler = d.scheduler or self.c.scheduler
        elif not isinstance(scheduler, (str, SchedulerMixin)):
            raise TypeError(f"scheduler must be a name or a diffusers scheduler, got {type(scheduler).__name__}; "
                            f"use one of: {', '.join(schedulers.SAMPLERS)}.")
        if isinstance(scheduler, str):
            schedulers.check_name(scheduler)
        return int(steps), float(guidance), int(width), int(height), scheduler

    # -- the pieces of the loop ----------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, text: str) -> torch.Tensor:
        """CLIP text embeddings of one prompt: (1, 77, D), D = 768 for SD 1.x."""
        tok = self.c.tokenizer
        ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids  # (1, 77): BOS, tokens, EOS, padding
        if len(tok(text).input_ids) > tok.model_max_length:
            warnings.warn(f"prompt is longer than {tok.model_max_length} tokens and was cut: {text[:60]!r}...")
        return self.c.text_encoder(ids.to(self.c.device))[0]  # last hidden state (1, 77, D)

    def _step_kwargs(self, scheduler: SchedulerMixin, generators: list[torch.Generator]) -> dict:
        params = inspect.signature(scheduler.step).parameters
        kwargs = {"eta": 0.0} if "eta" in params else {}
        if "generator" in params:  # ancestral / SDE samplers draw fresh noise each step
            kwargs["generator"] = generators
        return kwargs

    @torch.no_grad()
    def denoise(self, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None,
                guidance: float, scheduler: SchedulerMixin, timesteps: torch.Tensor,
                generators: list[torch.Generator], callback: Callable | None = None, *,
                condition: torch.Tensor | None = None, blend: Callable | None = None) -> torch.Tensor:
        """Run the sampler over ``timesteps``: latents (B, C, h, w) -> denoised latents (B, C, h, w).

        ``cond``/``uncond`` are (B, 77, D). With ``uncond`` given, classifier-free guidance
        (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598) mixes the two noise predictions.
        ``condition`` (B, 5, h, w): mask + masked-image latents that a 9-channel inpainting U-Net
        takes beside the latents. ``blend(i, latents)``: applied after step i (4-channel inpainting
        puts the known region back there).
        """
        if condition is not None and uncond is not None:
            condition = torch.cat([condition] * 2)
        context = cond if uncond is None else torch.cat([uncond, cond])  # (B or 2B, 77, D)
        step_kwargs = self._step_kwargs(scheduler, generators)
        for i, t in enumerate(timesteps):
            x = latents if uncond is None else torch.cat([latents] * 2)  # (B or 2B, C, h, w)
            x = scheduler.scale_model_input(x, t)
            if condition is not None:
                x = torch.cat([x, condition], dim=1)  # (B, 4 + 1 + 4, h, w)
            eps = self.c.unet(x, t, encoder_hidden_states=context).sample  # predicted noise
            if uncond is not None:
                eps_uncond, eps_cond = eps.chunk(2)
                eps = eps_uncond + guidance * (eps_cond - eps_uncond)
            latents = scheduler.step(eps, t, latents, **step_kwargs, return_dict=False)[0]
            if blend is not None:
                latents = blend(i, latents)
            if callback is not None:
                callback(i, latents)
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """VAE-decode latents (B, C, h, w) to B RGB images of (h * f, w * f) pixels."""
        vae = self.c.vae
        x = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample  # (B, 3, H, W) in [-1, 1]
        x = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
        return [Image.fromarray(a) for a in (x * 255).round().astype(np.uint8)]

    # -- the public call -----------------------------------------------------------------------
    def generate(self, prompt: str | list[str], *, seed: int = 0, steps: int | None = None,
                 guidance: float | None = None, negative_prompt: str | list[str] | None = None,
                 width: int | None = None, height: int | None = None, num_images: int = 1,
                 scheduler: str | SchedulerMixin | None = None, callback: Callback | None = None,
                 batch_size: int | None = None) -> list[Image.Image]:
        """Draw ``num_images`` images for each prompt; each carries its settings in A1111's text
        form in ``image.info["parameters"]`` (``latentgen.metadata.save_png`` writes it to the PNG).

        prompt: text, or a list of texts (``num_images`` images each, prompt by prompt).
        seed: image i of the call uses ``seed + i``, so it equals a one-image call with that seed.
        steps, guidance, width, height, scheduler: default to the model's (``Pipeline.defaults``).
            guidance <= 1 turns classifier-free guidance off. scheduler is a name from
            ``latentgen.schedulers.SAMPLERS`` (``"euler_a"``, ``"dpm++2m_karras"``, ...) or a
            diffusers scheduler instance.
        negative_prompt: what to steer away from; the unconditional branch of CFG ("" if None).
        callback: called after every sampler step as ``callback(done, total, latents)``.
        batch_size: images that go through the U-Net together. Default: 1 on CPU, which keeps
            every image bit-identical to its one-image call; all at once on GPU (equal to within
            float rounding). Larger batches trade that bit-exactness for throughput.
        """
        prompts = _as_prompts(prompt, "prompt")
        steps, guidance, width, height, scheduler = self._resolve(
            steps=steps, guidance=guidance, width=width, height=height, num_images=num_images,
            seed=seed, scheduler=scheduler, batch_size=batch_size)
        jobs = self._jobs(prompts, negative_prompt, num_images, guidance)
        f, c = self.c.vae_scale_factor, self.c.vae.config.latent_channels
        if self.c.unet.config.in_channels != c:
            raise ValueError(f"{self.c.name} is an inpainting model (its U-Net takes "
                             f"{self.c.unet.config.in_channels} channels): use pipe.inpaint(prompt, image, mask).")

        def start(sched, idx, generators, dtype):  # pure noise, scaled to the sampler's first sigma
            noise = randn_tensor((len(idx), c, height // f, width // f), generator=generators,
                                 device=self.c.device, dtype=dtype)
            return noise * sched.init_noise_sigma, sched.timesteps, {}

        return self.sample(jobs, start, seed=seed, steps=steps, guidance=guidance, scheduler=scheduler,
                           callback=callback, batch_size=batch_size, info={"Size": f"{width}x{height}"})

    @staticmethod
    def _jobs(prompts, negative_prompt, num_images, guidance) -> list[tuple[str, str | None]]:
        """(prompt, negative or None without CFG) of each image: image i is prompt i // num_images."""
        negatives = [""] if negative_prompt is None else _as_prompts(negative_prompt, "negative_prompt")
        if len(negatives) == 1:
            negatives = negatives * len(prompts)
        if len(negatives) != len(prompts):
            raise ValueError(f"negative_prompt has {len(negatives)} entries for {len(prompts)} prompts; "
                             f"pass one negative prompt, or one per prompt.")
        if negative_prompt is not None and guidance <= 1:
            warnings.warn(f"negative_prompt has no effect with guidance={guidance} <= 1.")
        return [(p, n if guidance > 1 else None) for p, n in zip(prompts, negatives) for _ in range(num_images)]

    def sample(self, jobs, start: Callable, *, seed: int, steps: int, guidance: float, scheduler,
               callback: Callback | None, batch_size: int | None, info: dict) -> list[Image.Image]:
        """The one sampling loop that txt2img, img2img and inpainting share.

        Images go through in chunks of ``batch_size``; image i has its own generator (seed + i).
        ``start(sched, idx, generators, dtype)`` gives a chunk's first latents (B, C, h, w), the
        timesteps to run, and extra ``denoise`` arguments (``condition``, ``blend``).
        """
        if batch_size is None:
            batch_size = 1 if self.c.device.type == "cpu" else len(jobs)
        cache: dict[str, torch.Tensor] = {}

        def embed(text: str) -> torch.Tensor:  # each distinct text encoded once, alone: (1, 77, D)
            if text not in cache:
                cache[text] = self.encode_prompt(text)
            return cache[text]

        images: list[Image.Image] = []
        chunks = [range(s, min(s + batch_size, len(jobs))) for s in range(0, len(jobs), batch_size)]
        total, done = 0, 0
        for idx in chunks:
            sched = schedulers.make(scheduler, self.c.scheduler.config)
            sched.set_timesteps(steps, device=self.c.device)
            generators = [torch.Generator("cpu").manual_seed(seed + i) for i in idx]
            cond = torch.cat([embed(jobs[i][0]) for i in idx])  # (B, 77, D)
            uncond = torch.cat([embed(jobs[i][1]) for i in idx]) if guidance > 1 else None
            latents, timesteps, extra = start(sched, idx, generators, cond.dtype)
            total = total or len(timesteps) * len(chunks)

            def on_step(i, lat, base=done):
                if callback is not None:
                    callback(base + i + 1, total, lat)

            latents = self.denoise(latents, cond, uncond, guidance, sched, timesteps, generators, on_step, **extra)
            done += len(timesteps)
            for i, image in zip(idx, self.decode(latents)):
                image.info["parameters"] = metadata.parameters_text(jobs[i][0], {
                    "Steps": steps, "Sampler": schedulers.label(sched), "CFG scale": guidance,
                    "Seed": seed + i, "Size": info.get("Size"), "Model": self.c.name,
                    **{k: v for k, v in info.items() if k != "Size"}, **self._lora_info()},
                    negative_prompt=jobs[i][1])
                images.append(image)
        return images

    @property
    def defaults(self):
        return self.c.defaults
