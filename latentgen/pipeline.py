"""The pipeline: prompt -> tokens -> embeddings -> latent loop with CFG -> VAE -> PIL, in that order.

Latent diffusion (Rombach et al. 2022, https://arxiv.org/abs/2112.10752). ``Pipeline.sample`` runs the
named steps in the order the data flows: 1. limits and memory plan -> 2. text conditioning
(``latentgen.text``) -> 3. start latents (``latentgen.starts``) -> 4. the denoising loop with classifier-free
guidance (``denoise``) -> 5. VAE decode (``decode``) -> 6. images with their settings in PNG metadata.
txt2img, img2img and inpainting are the same loop from different starts. Shapes for SD 1.5 at 512x512:
tokens (1, 77), embeddings (1, 77, 768), latents (1, 4, 64, 64), image (1, 3, 512, 512).

Seeds: image i of a call is drawn from its own CPU ``torch.Generator`` seeded ``seed + i`` and by default goes
through the models alone: it is bit-identical to a one-image call with ``seed + i``, and to what diffusers'
reference pipelines draw with ``generator=[Generator().manual_seed(s), ...]``.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from . import guard, memory, metadata, precision, request, schedulers, starts
from .canvas import calls, seamless
from .control import residuals, units as controls
from .backends.runtime import Runtime
from .lora.adapters import LoraAdapters
from .models import components, refiner as refine
from .models.presets import Defaults
from .request import Callback, Draw, Settings
from .starts import Start, StartFn
from .text import conditioning, prompts, xl
from .text.conditioning import CallText, Cond
from .text.embeddings import Embeddings
from .upscale.hires import Hires, SecondPass
from .vae import preview as previews


class Pipeline:
    """Stable Diffusion inference over five parts, held by name as in diffusers: ``tokenizer``, ``text_encoder``
    (CLIP), ``unet``, ``vae`` and ``scheduler`` (the model's own; each call builds a fresh sampler from its
    config). ``loras``: the LoRA adapters; ``defaults``: the model's steps, guidance, size and sampler;
    ``runtime``: where the U-Net runs (torch, OpenVINO, CUDA graphs); ``placement``: what ``latentgen.load``
    decided. ``latentgen.load`` builds one; so can you, from diffusers parts."""

    def __init__(self, tokenizer, text_encoder, unet, vae, scheduler: SchedulerMixin, *, defaults: Defaults | None = None,
                 name: str = "model", inpaint_unet=None, runtime: Runtime | None = None, placement=None,
                 xl: xl.XL | None = None):
        self.tokenizer, self.text_encoder, self.unet, self.vae, self.scheduler = tokenizer, text_encoder, unet, vae, scheduler
        self.xl = xl  # SDXL's second tokenizer and text encoder (latentgen.text.xl); None for SD 1.x/2.x
        self.defaults, self.name = defaults or Defaults(), name  # name: in PNG metadata as "Model: ..."
        self.loras = LoraAdapters({"unet": unet, "text_encoder": text_encoder,  # the backend reads their state
                                   **({"text_encoder_2": xl.text_encoder_2} if xl and not xl.refiner else {})})
        self.embeddings = Embeddings(tokenizer, text_encoder, xl)  # textual-inversion words (load_embedding)
        self.limits = memory.Limits()  # what one call may ask for; None fields follow the free memory
        self.inpaint_unet = inpaint_unet  # 9-channel U-Net (or its folder, loaded on first use) for inpaint()
        self.placement = placement
        self.preview_vae = None  # a tiny VAE for previews only (latentgen.load_tiny_vae; see preview)
        self.runtime = runtime or Runtime(*((placement.backend, placement.backend_why) if placement else ("torch",)))

    @classmethod
    def from_components(cls, c) -> "Pipeline":  # over a ``models.components.Components`` (what loaders return)
        return cls(c.tokenizer, c.text_encoder, c.unet, c.vae, c.scheduler, defaults=c.defaults, name=c.name,
                   inpaint_unet=c.inpaint_unet, placement=c.placement, xl=c.xl)

    def __repr__(self) -> str:  # what runs and why, e.g. "float32 (the default here: ...), U-Net on openvino (...)"
        return (f"Pipeline(model={self.name!r}, device={self.device}, "
                f"{precision.describe(self.unet, self.vae, self.placement)}, {self.runtime})")

    device = property(lambda self: precision.device_of(self.unet))  # torch.device
    dtype = property(lambda self: precision.dtype_of(self.unet))  # torch.dtype
    vae_scale_factor = property(lambda self: components.vae_scale_factor(self.vae.config))  # pixels per latent cell

    def weights_changed(self) -> None:
        """Announce changed U-Net weights (after ``.data`` writes, ``load_state_dict``): ``backends.runtime``."""
        self.runtime.changed()

    # -- settings and text ----------------------------------------------------------------------
    def settings(self, *, num_images: int = 1, seed: int = 0, prompt: str | list[str] | None = None, **given) -> Settings:
        """The model's defaults with ``given`` (steps, guidance, size, scheduler, batch_size) over them, all checked, in
        milliseconds (what the machine can hold: ``check_limits``). A LoRA whose header recommends a sampler, steps and
        guidance (LCM: "lcm", 4, 1), loaded or in ``prompt``'s tags, fills those not given (``LoraAdapters.recommended``)."""
        tags = prompts.lora_tags(prompt) if given.get("prompt_syntax", "a1111") == "a1111" else ()
        if (rec := self.loras.recommended(tags=tags)) is not None:
            for key, value in (("scheduler", rec.sampler), ("steps", rec.steps), ("guidance", rec.guidance)):
                given[key] = value if given.get(key) is None else given[key]
        return request.resolve(self.defaults, self.vae_scale_factor, self.scheduler, num_images=num_images, seed=seed,
                               **given)

    def check_limits(self, s: Settings, images: int) -> None:
        """Refuse a call of ``images`` images that this machine cannot hold (``latentgen.memory``)."""
        memory.check(self.limits, self.unet, num_images=images, steps=s.steps, width=s.width, height=s.height,
                     batch=s.batch(self.device, images), cfg=s.cfg, train_steps=self.scheduler.config.num_train_timesteps)

    encode_prompt = conditioning.encode_prompt  # pipe.encode_prompt(text): (1, 77 * k, D) CLIP embeddings

    def load_embedding(self, path: str | Path, token: str | None = None) -> str:
        """Add a textual-inversion file as the word ``token`` (default: its stem): ``latentgen.text.embeddings``."""
        return self.embeddings.load(path, token)

    # -- the loop -------------------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, start: Start, text: Cond, guidance: float, sched: SchedulerMixin,
                generators: list[torch.Generator], callback: Callback | None = None, unet=None,
                rescale: float = 0.0) -> torch.Tensor:
        """Run the sampler over ``start.timesteps``: latents (B, C, h, w) -> denoised latents (B, C, h, w).
        ``text``: the chunk's embeddings (``latentgen.text.conditioning.Cond``): with ``text.uncond``,
        classifier-free guidance (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598) mixes the two outputs;
        with K parts per image (A1111's AND), each part is guided and the weighted guidances summed (Liu et al.
        2022). ``start`` brings the extra input channels (``c_concat``) and the per-step hooks
        (``starts.Hooks``); ``callback(done, total, latents[, denoised])`` runs after each step (``denoised``: the
        clean latents' estimate, ``schedulers.denoised``, for a callback that takes it); ``unet``: not ``self.unet``;
        ``rescale``: CFG rescale's phi (``schedulers.rescaled``)."""
        hooks, cfg, unet = start.hooks, text.uncond is not None, unet or self.unet
        if len(start.timesteps):  # strength 0: no step, no conversion
            unet = self.runtime.for_unet(unet, residuals=hooks.unet_inputs is not None)
        b, parts = len(start.latents), len(text.cond) // len(start.latents)

        def rows(z: torch.Tensor) -> torch.Tensor:  # (B, ...) -> the U-Net batch: ([uncond;] K parts) per image
            return torch.cat([z, z.repeat_interleave(parts, 0)]) if cfg else z
        c_concat = None if start.c_concat is None else rows(start.c_concat)
        context = torch.cat([text.uncond, text.cond]) if cfg else text.cond  # (B + B * K or B, 77 * k, D)
        step_kwargs, with_x0 = schedulers.step_kwargs(sched, generators), request.takes_denoised(callback)
        latents = start.latents
        for i, t in enumerate(start.timesteps):
            x = sched.scale_model_input(rows(latents), t)  # (B + B * K or B, C, h, w)
            if c_concat is not None:
                x = torch.cat([x, c_concat], dim=1)  # (.., C + 5, h, w)
            context_i = hooks.context(i, context) if hooks.context else context
            added = text.added(i) if text.added else None  # SDXL: pooled text (rows, P) and size numbers (rows, 6)
            extra = hooks.unet_inputs(i, x, t, context_i, added) if hooks.unet_inputs else {}
            extra = extra if added is None else {**extra, "added_cond_kwargs": added}
            # the noise (epsilon), v or x0, as the model was trained: the sampler's config says which
            model_output = unet(x, t, encoder_hidden_states=context_i, **extra).sample
            if cfg:
                uncond_out, cond_out = model_output.split([b, b * parts])
                if text.weights is None:
                    model_output = uncond_out + guidance * (cond_out - uncond_out)
                else:  # each part's guidance (B, K, C, h, w), weighted and summed
                    diff = cond_out.unflatten(0, (b, parts)) - uncond_out[:, None]
                    model_output = uncond_out + guidance * (diff * text.weights.to(diff)[..., None, None, None]).sum(1)
                if rescale:  # toward the text prediction's std (AND: the parts' guided sum at guidance 1)
                    own = cond_out if text.weights is None else uncond_out + (model_output - uncond_out) / guidance
                    model_output = schedulers.rescaled(model_output, own, rescale)
            out = sched.step(model_output, t, latents, **step_kwargs)
            x, latents = latents, out.prev_sample
            if hooks.after_step:
                latents = hooks.after_step(i, latents)
            if callback is not None:  # and, where it takes a 4th argument, the clean latents' estimate (previews)
                try:
                    callback(i + 1, len(start.timesteps), latents,
                             *([schedulers.denoised(sched, out, model_output, t, x)] if with_x0 else []))
                except request.Stop:  # the drawing ends here, from this step's estimate (A1111's interrupt, skip)
                    raise request.Stopped(schedulers.denoised(sched, out, model_output, t, x)) from None
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, plan: memory.Plan | None = None, vae=None) -> list[Image.Image]:
        """Latents (B, C, h, w) -> B RGB images (h * f, w * f), ``plan.vae_batch`` at a time, tiled if
        ``plan.vae_tiling``; an fp16 overflow is decoded again in fp32 (``latentgen.guard``). ``vae``: not
        ``self.vae`` (a tiny one for previews)."""
        plan, vae = plan or memory.Plan(vae_tiling=False, vae_batch=len(latents)), vae or self.vae
        z = latents / vae.config.scaling_factor
        x = torch.cat([guard.decode(vae, part, tiled=plan.vae_tiling) for part in z.split(plan.vae_batch)])
        x = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()  # (B, H, W, 3) in [0, 1]
        return [Image.fromarray(a) for a in (x * 255).round().astype(np.uint8)]

    preview = previews.of_pipeline  # pipe.preview(latents, method="cheap"): live previews (latentgen.vae.preview)

    def sample(self, draws: list[Draw], s: Settings, start: StartFn, *, size: str | None = None,
               info: dict | None = None, callback: Callback | None = None, unet=None,
               hires: Hires | None = None, control: controls.Prepared | None = None, refiner=None) -> list[Image.Image]:
        """The one sampling loop of txt2img, img2img and inpainting, in named steps. Images go through in chunks of
        ``s.batch(...)`` (split where the text's number of 77-token chunks changes), each from ``start(sampler,
        seeds, dtype)``; image i of a chunk has its own generator, seeded ``draws[i].seed``. ``size``, ``info``:
        the PNG's "Size" (default: the settings') and the call's own fields; ``hires``: A1111's hires fix;
        ``control``: ControlNet units (``latentgen.control``), through the loop's ``unet_inputs`` hook; ``refiner``: a
        ``latentgen.Refiner`` that draws the end of the noise schedule (``latentgen.models.refiner``)."""
        # 1. limits and memory plan, refused before any model runs
        self.check_limits(s, len(draws))
        batch = s.batch(self.device, len(draws))
        # 2. text conditioning: <lora:...> tags out, each text encoded once, under the tags' LoRAs
        text = CallText(draws, s, self.tokenizer, self.text_encoder, self.embeddings, xl=self.xl)
        refiner = None if refiner is None else refine.check(refiner, self)  # with hires=: its pass(es), below
        second = None if hires is None else SecondPass(self, draws, s, hires, text, control, refiner)  # checked
        handover = None if refiner is None or (second and not refine.acts(refiner, second=False)) else \
            refine.Handover(self, draws, s, refiner)  # checked, own text
        last, out_of = (s, self) if second is None else (second.s, second.model)  # out_of: the model that decodes
        plan = memory.plan(out_of.vae, out_of.limits, width=last.width, height=last.height, batch=batch)
        seamless.check_decode(plan, s.tiling, out_of.limits, out_of.vae)  # A1111's Tiling: circular padding, below
        fields = {"Size": size or f"{s.width}x{s.height}", "Model": self.name}
        info = {**(info or {}), **(second.info() if second else {}), **text.info, "Tiling": s.tiling or None,
                **controls.info(control), **(refine.info(refiner, second is not None) if refiner else {}),
                **getattr(out_of.vae, "infotext", {})}  # a VAE file's "VAE hash", "VAE" (``loading.vae_fields``)
        out: list[Image.Image] = []
        nets = seamless.networks(self, unet, refiner, (control, second and second.control), second) if s.tiling else []
        with text.lora_tags(self.loras), second.lora_tags() if second else nullcontext(), seamless.circular(nets):
            chunks = request.batches(draws, batch, key=text.chunks)
            progress = request.CallProgress(callback, len(chunks) * (1 if second is None else 2))
            for chunk in chunks:
                sched = schedulers.make(s.scheduler, self.scheduler.config)
                sched.set_timesteps(s.steps, device=self.device)
                seeds = starts.seeds(chunk, s.variation, self.vae_scale_factor)  # a generator per image
                cond = text.embed(chunk, s.cfg)  # (B * K, 77 * k, D), uncond (B, 77 * k, D), per-step texts
                # 3. start latents
                first = start(sched, seeds, cond.cond.dtype)
                if cond.context:  # the text changes by step: prompt editing, alternation
                    first = replace(first, hooks=replace(first.hooks, context=cond.context))
                first = residuals.hooked(first, control, b=len(chunk), cfg=s.cfg, pipe=self)  # ControlNet, by step
                # 4. the denoising loop (the refiner's hand-over; the hires fix's second pass)
                run = partial(self.denoise if handover is None else partial(handover.run, self, chunk),
                              rescale=s.guidance_rescale)
                latents, stopped = request.until_stop(run, first, cond, s.guidance, sched, seeds.generators,
                                                      progress.chunk(len(first.timesteps)), unet)
                by = self  # the model whose latents these are; a callback's Stop skips the hires pass
                if second is not None and not stopped:
                    (latents, stopped), by = request.until_stop(second.run, self, chunk, latents, progress, unet), out_of
                guard.check_latents(latents, guidance=s.guidance, loras=list(self.loras.loaded), dtype=out_of.dtype)
                # 5. decode, 6. each image with its settings
                for d, image in zip(chunk, by.decode(latents, plan)):
                    image.info["parameters"] = metadata.parameters_text(d.prompt, {
                        "Steps": s.steps, "Sampler": schedulers.label(sched), "CFG scale": s.guidance, "Seed": d.seed,
                        **fields, **metadata.variation_fields(d.subseed, s.variation), **info,
                        "CFG Rescale φ": s.guidance_rescale or None, **self.loras.info()},  # (A1111's extension's)
                        negative_prompt=d.negative_prompt)  # in A1111's order
                    out.append(image)
                if stopped:  # latentgen.Stop: nothing after these images is drawn
                    break
        return out

    # -- the public calls -----------------------------------------------------------------------
    def generate(self, prompt: str | list[str], *, seed: int = 0, steps: int | None = None,
                 guidance: float | None = None, negative_prompt: str | list[str] | None = None,
                 width: int | None = None, height: int | None = None, num_images: int = 1,
                 scheduler: str | SchedulerMixin | None = None, callback: Callback | None = None,
                 batch_size: int | None = None, clip_skip: int = 1, prompt_syntax: str = "a1111",
                 variation: starts.Variation | None = None, hires: Hires | None = None,
                 control=None, refiner=None, size_cond: xl.SizeCond | None = None, tiling: bool = False,
                 guidance_rescale: float = 0.0) -> list[Image.Image]:
        """Draw ``num_images`` images for each prompt; each carries its settings in A1111's text
        form in ``image.info["parameters"]`` (``latentgen.metadata.save_png`` writes it to the PNG).

        prompt: text, or a list of texts (``num_images`` images each, prompt by prompt).
        seed: image i of the call uses ``seed + i`` (0 to 2**64 - 1), so it equals a one-image call with that seed.
        steps, guidance, width, height, scheduler: the model's by default (``Pipeline.defaults``); guidance from 0
            to 100, <= 1 turns CFG off; scheduler: a name in ``latentgen.schedulers.SAMPLERS`` or a diffusers one.
        negative_prompt: what to steer away from; the unconditional branch of CFG ("" if None).
        callback: called after every sampler step as ``callback(done, total, latents)``, or, if it takes a fourth
            argument, ``callback(done, total, latents, denoised)``: the step's estimate of the finished latents,
            which ``pipe.preview(denoised)`` turns into a live preview (as A1111's). Raising ``latentgen.Stop`` in it
            ends the drawing there and returns what is drawn, the images in the loop from that estimate (A1111's interrupt).
        batch_size: images through the U-Net together. Default: 1 on CPU (each image bit-identical to its
            one-image call); all at once on GPU (equal within float rounding).
        clip_skip, prompt_syntax: A1111's "Clip skip" and prompt syntax (prompt editing, AND), or "plain"; see
            ``latentgen.text``. variation: A1111's variation seed and seed resize (``latentgen.Variation``).
        hires: A1111's hires fix, a second pass at a larger size (``latentgen.Hires``; ``latentgen.upscale.hires``).
        control: ControlNet units, a ``latentgen.Control`` or a list of them (``latentgen.control.units``).
        refiner: SDXL's refiner for the end of the noise schedule, ``latentgen.Refiner(latentgen.load(folder),
            switch_at=0.8)`` (A1111's refiner_checkpoint and refiner_switch_at; ``latentgen.models.refiner``).
        size_cond: SDXL's size conditioning, ``latentgen.SizeCond(original=, crop=, target=, negative=)``.
        tiling: A1111's Tiling, pictures that tile seamlessly (``latentgen.canvas.seamless``).
        guidance_rescale: CFG rescale, phi from 0 (off) to 1, e.g. 0.7: diffusers' ``guidance_rescale``, for
            zero-terminal-SNR models (``latentgen.load(..., zero_terminal_snr=True)``), against overexposure.
        """
        s = self.settings(steps=steps, guidance=guidance, width=width, height=height, scheduler=scheduler, seed=seed,
                          batch_size=batch_size, num_images=num_images, clip_skip=clip_skip, prompt_syntax=prompt_syntax,
                          variation=variation, prompt=prompt, size_cond=size_cond, tiling=tiling,
                          guidance_rescale=guidance_rescale)
        draws = request.draws(prompt, negative_prompt, num_images, seed, s)
        c, f = self.vae.config.latent_channels, self.vae_scale_factor
        request.plain_unet("generate", self.name, self.unet.config.in_channels, c)
        start = partial(starts.from_noise, shape=(c, s.height // f, s.width // f), device=self.device)
        control = controls.prepare(control, self.unet, (s.width, s.height), max_pixels=self.limits.max_input_pixels)
        return self.sample(draws, s, start, callback=callback, hires=hires, control=control, refiner=refiner)

    # the calls that start from a picture: ``latentgen.canvas.calls``
    img2img = calls.img2img
    inpaint = calls.inpaint
    outpaint = calls.outpaint

    # -- LoRA: the adapters in ``self.loras`` (see ``LoraAdapters``) ----------------------------
    def load_lora(self, path: str | Path, name: str | None = None, scale: float | dict = 1.0) -> str:
        """Load a LoRA (diffusers/kohya/LyCORIS file, or a shipped name) as ``name``; scale: a number or per part."""
        return self.loras.load(path, name, scale)

    def set_lora_scale(self, name: str, scale: float | dict) -> None:  # a number, or per part as load_lora's
        self.loras.set_scale(name, scale)

    def fuse_lora(self) -> None:  # into the base weights; unfuse_lora restores them bit for bit
        self.loras.fuse()

    def unfuse_lora(self) -> None:
        self.loras.unfuse()

    def unload_lora(self, name: str | None = None) -> None:  # one, or all: the model as loaded
        self.loras.unload(name)
