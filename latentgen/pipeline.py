"""The pipeline: prompt -> tokens -> embeddings -> latent loop with CFG -> VAE -> PIL, in that order.

Latent diffusion (Rombach et al. 2022, https://arxiv.org/abs/2112.10752). The file reads top to
bottom as the data flows: settings (``latentgen.request``) -> text conditioning (``encode_prompt``)
-> start latents (``latentgen.starts``) -> denoise loop with classifier-free guidance (``denoise``)
-> VAE decode (``decode``) -> images with their settings in PNG metadata (``sample``). txt2img,
img2img and inpainting are the same loop from different starts. Shapes for SD 1.5 at 512x512:
tokens (1, 77), embeddings (1, 77, 768), latents (1, 4, 64, 64), image (1, 3, 512, 512).

Seeds: image i of a call is drawn from its own CPU ``torch.Generator`` seeded ``seed + i``, and
by default goes through the models alone, so it is bit-identical to a one-image call with
``seed + i``. The draws are the ones diffusers' reference pipelines make with
``generator=[Generator().manual_seed(s), ...]``.
"""

from __future__ import annotations

import inspect
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from . import images as im
from . import checks, components, guard, memory, metadata, precision, prompts, request, schedulers, starts
from .adapters import LoraAdapters
from .embeddings import Embeddings
from .presets import Defaults
from .request import Callback, Draw, Settings, Start, StartFn
from .runtime import Runtime


class Pipeline:
    """Stable Diffusion inference over five parts, held by name as in diffusers: ``tokenizer``,
    ``text_encoder`` (CLIP), ``unet``, ``vae`` and ``scheduler`` (the model's own; every call builds
    a fresh sampler from its config). ``loras`` holds the LoRA adapters; ``defaults`` the model's
    steps, guidance, size and sampler; ``runtime`` where the U-Net runs (``latentgen.runtime``: torch,
    or OpenVINO). ``latentgen.load`` builds one; so can you, from diffusers parts.
    """

    def __init__(self, tokenizer, text_encoder, unet, vae, scheduler: SchedulerMixin, *, defaults: Defaults | None = None,
                 name: str = "model", inpaint_unet=None, runtime: Runtime | None = None):
        self.tokenizer, self.text_encoder, self.unet, self.vae, self.scheduler = tokenizer, text_encoder, unet, vae, scheduler
        self.defaults, self.name = defaults or Defaults(), name  # name: in PNG metadata as "Model: ..."
        self.loras = LoraAdapters({"unet": unet, "text_encoder": text_encoder})
        self.embeddings = Embeddings(tokenizer, text_encoder)  # textual-inversion words (load_embedding)
        self.limits = memory.Limits()  # what one call may ask for; None fields follow the free memory
        self.inpaint_unet = inpaint_unet  # 9-channel U-Net (or its folder, loaded on first use) for inpaint()
        self.runtime = runtime or Runtime("torch")

    @classmethod
    def from_components(cls, c, runtime=None) -> "Pipeline":
        """A pipeline over a ``latentgen.components.Components`` record (what the loaders return)."""
        return cls(c.tokenizer, c.text_encoder, c.unet, c.vae, c.scheduler, defaults=c.defaults, name=c.name,
                   inpaint_unet=c.inpaint_unet, runtime=runtime)

    def __repr__(self) -> str:  # what runs and why, e.g. "float32 (the default here: ...), U-Net on openvino (...)"
        return f"Pipeline(model={self.name!r}, device={self.device}, {precision.describe(self.unet, self.vae)}, {self.runtime})"

    device = property(lambda self: precision.device_of(self.unet))  # torch.device
    dtype = property(lambda self: precision.dtype_of(self.unet))  # torch.dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell: 8 for SD's four-level VAE."""
        return components.vae_scale_factor(self.vae.config)

    # -- 1. settings ----------------------------------------------------------------------------
    def settings(self, *, num_images: int = 1, seed: int = 0, **given) -> Settings:
        """The model's defaults with ``given`` (steps, guidance, size, scheduler, batch_size) over them, all checked."""
        s = request.resolve(self.defaults, self.vae_scale_factor, self.scheduler, num_images=num_images, seed=seed, **given)
        self.check_limits(s, num_images)  # refused at once, before prompts are even counted
        return s

    def check_limits(self, s: Settings, images: int) -> None:  # images this machine cannot hold: refused
        memory.check(self.limits, self.unet, num_images=images, steps=s.steps, width=s.width, height=s.height,
                     batch=s.batch_size or (1 if self.device.type == "cpu" else images), cfg=s.cfg,
                     train_steps=self.scheduler.config.num_train_timesteps)

    # -- 2. text conditioning -------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, text: str, *, clip_skip: int = 1, syntax: str = "a1111") -> torch.Tensor:
        """CLIP text embeddings of one prompt: (1, 77 * k, D), D = 768 for SD 1.x, k chunks of 75 tokens
        (k = 1 with syntax "plain"); A1111's syntax and "Clip skip": see ``latentgen.prompts``."""
        chunks = prompts.tokenize(text, self.tokenizer, syntax=syntax, expand=self.embeddings.expansions())
        return prompts.encode(self.text_encoder, chunks, clip_skip=clip_skip)  # (1, 77 * k, D)

    def load_embedding(self, path: str | Path, token: str | None = None) -> str:
        """Add a textual-inversion file as the word ``token`` (default: its stem); see ``latentgen.embeddings``."""
        return self.embeddings.load(path, token)

    # -- 3. start latents: see latentgen.starts; 4. the denoising loop -------------------------
    @torch.no_grad()
    def denoise(self, start: Start, cond: torch.Tensor, uncond: torch.Tensor | None, guidance: float,
                sched: SchedulerMixin, generators: list[torch.Generator],
                callback: Callback | None = None, unet=None) -> torch.Tensor:
        """Run the sampler over ``start.timesteps``: latents (B, C, h, w) -> denoised latents (B, C, h, w).

        ``cond``/``uncond`` are (B, 77 * k, D). With ``uncond`` given, classifier-free guidance
        (Ho & Salimans 2022, https://arxiv.org/abs/2207.12598) mixes the two noise predictions.
        ``callback(done, total, latents)`` runs after each step; ``unet``: another than ``self.unet``.
        """
        latents, condition, unet = start.latents, start.condition, unet or self.unet
        unet = self.runtime.for_unet(unet) if len(start.timesteps) else unet  # strength 0: no step, no conversion
        if condition is not None and uncond is not None:
            condition = torch.cat([condition] * 2)
        context = cond if uncond is None else torch.cat([uncond, cond])  # (B or 2B, 77 * k, D)
        params = inspect.signature(sched.step).parameters
        step_kwargs = {"eta": 0.0} if "eta" in params else {}
        if "generator" in params:  # ancestral / SDE samplers draw fresh noise each step
            step_kwargs["generator"] = generators
        for i, t in enumerate(start.timesteps):
            x = latents if uncond is None else torch.cat([latents] * 2)  # (B or 2B, C, h, w)
            x = sched.scale_model_input(x, t)
            if condition is not None:
                x = torch.cat([x, condition], dim=1)  # (B, 4 + 1 + 4, h, w)
            eps = unet(x, t, encoder_hidden_states=context).sample  # predicted noise
            if uncond is not None:
                eps_uncond, eps_cond = eps.chunk(2)
                eps = eps_uncond + guidance * (eps_cond - eps_uncond)
            latents = sched.step(eps, t, latents, **step_kwargs, return_dict=False)[0]
            if start.blend is not None:
                latents = start.blend(i, latents)
            if callback is not None:
                callback(i + 1, len(start.timesteps), latents)
        return latents

    # -- 5. decode ------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latents: torch.Tensor, plan: memory.Plan | None = None) -> list[Image.Image]:
        """Latents (B, C, h, w) -> B RGB images (h * f, w * f), ``plan.vae_batch`` at a time, tiled if
        ``plan.vae_tiling``; an fp16 overflow is decoded again in fp32 (``latentgen.guard``)."""
        plan = plan or memory.Plan(vae_tiling=False, vae_batch=len(latents))
        z = latents / self.vae.config.scaling_factor
        x = torch.cat([guard.decode(self.vae, part, tiled=plan.vae_tiling) for part in z.split(plan.vae_batch)])
        x = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()  # (B, H, W, 3) in [0, 1]
        return [Image.fromarray(a) for a in (x * 255).round().astype(np.uint8)]

    def sample(self, draws: list[Draw], s: Settings, start: StartFn, *, callback: Callback | None = None,
               info: dict | None = None, unet=None) -> list[Image.Image]:
        """The one sampling loop of txt2img, img2img and inpainting: images go through in chunks of
        ``s.batch_size`` (split where the text's number of 77-token chunks changes), each chunk from
        ``start(sampler, generators, dtype)``; image i of a chunk uses its own generator, seeded ``draws[i].seed``."""
        batch = s.batch_size or (1 if self.device.type == "cpu" else len(draws))
        self.check_limits(s, len(draws))  # all prompts' images; before any model runs
        plan = memory.plan(self.vae, self.limits, width=s.width, height=s.height, batch=batch)
        text = prompts.CallText(draws, self.encode_prompt, s, self.embeddings)  # tags out; each text encoded once
        info = {**(info or {}), **text.info}  # Clip skip, TI hashes
        out: list[Image.Image] = []
        done = 0
        with text.lora_tags(self.loras):  # the texts are encoded under the tags' LoRAs
            chunks = request.batches(draws, batch, key=lambda d: text.embed([d], s.cfg)[0].shape[1])  # 77 * k
            for chunk in chunks:
                sched = schedulers.make(s.scheduler, self.scheduler.config)
                sched.set_timesteps(s.steps, device=self.device)
                generators = [torch.Generator("cpu").manual_seed(d.seed) for d in chunk]
                cond, uncond = text.embed(chunk, s.cfg)  # (B, 77 * k, D) each
                first = start(sched, generators, cond.dtype)
                total = len(first.timesteps) * len(chunks)
                progress = None if callback is None else (lambda i, _n, lat, base=done: callback(base + i, total, lat))
                latents = self.denoise(first, cond, uncond, s.guidance, sched, generators, progress, unet)
                guard.check_latents(latents, guidance=s.guidance, loras=list(self.loras.loaded), dtype=self.dtype)
                done += len(first.timesteps)
                for d, image in zip(chunk, self.decode(latents, plan)):  # 6. each image with its settings
                    image.info["parameters"] = metadata.parameters_text(d.prompt, {
                        "Steps": s.steps, "Sampler": schedulers.label(sched), "CFG scale": s.guidance, "Seed": d.seed,
                        "Size": info.get("Size"), "Model": self.name, **{k: v for k, v in info.items() if k != "Size"},
                        **self.loras.info()}, negative_prompt=d.negative_prompt)
                    out.append(image)
        return out

    # -- the public calls -----------------------------------------------------------------------
    def generate(self, prompt: str | list[str], *, seed: int = 0, steps: int | None = None,
                 guidance: float | None = None, negative_prompt: str | list[str] | None = None,
                 width: int | None = None, height: int | None = None, num_images: int = 1,
                 scheduler: str | SchedulerMixin | None = None, callback: Callback | None = None,
                 batch_size: int | None = None, clip_skip: int = 1, prompt_syntax: str = "a1111") -> list[Image.Image]:
        """Draw ``num_images`` images for each prompt; each carries its settings in A1111's text
        form in ``image.info["parameters"]`` (``latentgen.metadata.save_png`` writes it to the PNG).

        prompt: text, or a list of texts (``num_images`` images each, prompt by prompt).
        seed: image i of the call uses ``seed + i`` (0 to 2**64 - 1), so it equals a one-image call with that seed.
        steps, guidance, width, height, scheduler: the model's by default (``Pipeline.defaults``); guidance
            <= 1 turns CFG off; scheduler: a name from ``latentgen.schedulers.SAMPLERS`` or a diffusers one.
        negative_prompt: what to steer away from; the unconditional branch of CFG ("" if None).
        callback: called after every sampler step as ``callback(done, total, latents)``.
        batch_size: images through the U-Net together. Default: 1 on CPU (each image bit-identical to its
            one-image call); all at once on GPU (equal within float rounding).
        clip_skip, prompt_syntax: A1111's "Clip skip" and prompt syntax, or "plain"; see ``latentgen.prompts``.
        """
        s = self.settings(steps=steps, guidance=guidance, width=width, height=height, scheduler=scheduler, seed=seed,
                          batch_size=batch_size, num_images=num_images, clip_skip=clip_skip, prompt_syntax=prompt_syntax)
        draws = request.draws(prompt, negative_prompt, num_images, seed, s.guidance)
        c, f = self.vae.config.latent_channels, self.vae_scale_factor
        request.plain_unet("generate", self.name, self.unet.config.in_channels, c)
        start = partial(starts.from_noise, shape=(c, s.height // f, s.width // f), device=self.device)
        return self.sample(draws, s, start, callback=callback, info={"Size": f"{s.width}x{s.height}"})

    def img2img(self, prompt, image, *, strength: float = 0.75, seed: int = 0, steps: int | None = None,
                guidance: float | None = None, negative_prompt=None, num_images: int = 1, scheduler=None,
                callback: Callback | None = None, batch_size: int | None = None,
                max_pixels: int | None = None, clip_skip: int = 1, prompt_syntax: str = "a1111") -> list[Image.Image]:
        """Redraw ``image`` under ``prompt``; returns images of the input's size.

        image: PIL image (any mode), numpy array or path; see ``latentgen.images``. Sizes that are
            not multiples of the VAE factor are resized down for the model and back.
        strength: how much to change, in [0, 1]: ``int(steps * strength)`` steps run from the
            matching noise level; 0 returns the VAE reconstruction of the input.
        Other arguments as in ``generate``; ``max_pixels`` bounds the image size (memory).
        """
        request.plain_unet("img2img", self.name, self.unet.config.in_channels, self.vae.config.latent_channels)
        src, _ = im.load_rgb(image, "image")
        w, h = im.work_size(src.size, self.vae_scale_factor, max_pixels or self.limits.max_input_pixels)
        strength = request.strength(strength)
        s = self.settings(steps=steps, guidance=guidance, width=w, height=h, scheduler=scheduler, seed=seed,
                          batch_size=batch_size, num_images=num_images, clip_skip=clip_skip, prompt_syntax=prompt_syntax)
        draws = request.draws(prompt, negative_prompt, num_images, seed, s.guidance)
        pixels = im.to_tensor(src if src.size == (w, h) else src.resize((w, h), im.LANCZOS))  # (1, 3, H, W)
        start = partial(starts.from_image, vae=self.vae, pixels=pixels, steps=s.steps, strength=strength)
        out = self.sample(draws, s, start, callback=callback,
                          info={"Size": f"{src.width}x{src.height}", "Denoising strength": strength})
        return [o if o.size == src.size else im.resized(o, src.size) for o in out]

    def inpaint(self, prompt, image, mask=None, *, strength: float = 1.0, seed: int = 0,
                steps: int | None = None, guidance: float | None = None, negative_prompt=None,
                num_images: int = 1, scheduler=None, mask_blur: float | None = None, only_masked: bool = False,
                padding: int = 32, composite: bool = True, callback: Callback | None = None,
                batch_size: int | None = None, max_pixels: int | None = None,
                latent_mask: str = "coverage", clip_skip: int = 1, prompt_syntax: str = "a1111",
                variant: str = "auto") -> list[Image.Image]:
        """Repaint the white part of ``mask`` under ``prompt``; keep the rest, pixel for pixel.

        image: PIL image (any mode), numpy array or path. mask: the same kinds, same size; white
            (>= 0.5) repaints, black keeps. None: the image's alpha channel, transparent = repaint.
        strength: 1 repaints the hole from pure noise; lower keeps more of what is under it.
        mask_blur: feather radius (pixels) of the final composite, inside the mask only; None: the model's
            default (``defaults.mask_blur``: 4, as A1111; the embedded model's 2, see its preset).
        only_masked: work on the mask's bounding box plus ``padding`` pixels, at the model's
            native size, and paste it back (A1111's "inpaint only masked"): more detail for
            small holes in large images.
        composite: False: the decoded image without the pixel composite (as diffusers; only_masked: unblended).
        latent_mask: mask -> one value per 8x8 latent cell. "coverage": a cell repaints when half its
            pixels do (as A1111 rounds), so the latent hole sits on the pixel hole. "nearest": one pixel
            per cell as diffusers (the hole shifts up to 7 px down-right): diffusers' exact images.
        variant: "auto": a 9-channel U-Net, the model's own or the variant it ships (``self.inpaint_unet``:
            the embedded default has one; not with a LoRA loaded or tagged), else latent blending; "blend": always.
        """
        checks.choice("latent_mask", latent_mask, ("coverage", "nearest"), "use 'coverage' (default) or 'nearest'")
        checks.choice("variant", variant, ("auto", "blend"), "use 'auto' (default) or 'blend'")
        if mask_blur is None:  # the model's own; a bad one is named as the model's setting
            mask_blur = checks.number("defaults.mask_blur", self.defaults.mask_blur, minimum=0,
                                      fix="set mask_blur >= 0 in the model's latentgen.json or preset")
        checks.number("mask_blur", mask_blur, minimum=0, fix="use a radius in pixels >= 0, such as 4")
        f = self.vae_scale_factor
        inp = im.inpaint_input(image, mask, only_masked=only_masked, padding=padding, f=f,
                               native=(self.defaults.width, self.defaults.height),
                               max_pixels=max_pixels or self.limits.max_input_pixels)
        strength = request.strength(strength)
        s = self.settings(steps=steps, guidance=guidance, width=inp.size[0], height=inp.size[1], scheduler=scheduler,
                          batch_size=batch_size, num_images=num_images, seed=seed, clip_skip=clip_skip,
                          prompt_syntax=prompt_syntax)
        draws = request.draws(prompt, negative_prompt, num_images, seed, s.guidance)
        if inp.empty:
            warnings.warn("mask is empty (no pixel >= 0.5): nothing to repaint, returning the input.")
            return [inp.source.copy() for _ in draws]
        mask_lat = starts.to_latent_mask(inp.mask_px, (inp.size[1] // f, inp.size[0] // f), latent_mask)
        unet, c = self.unet, self.vae.config.latent_channels
        lora = self.loras.loaded or (prompt_syntax == "a1111" and any(prompts.extra_networks(d.prompt)[1] for d in draws))
        if variant == "auto" and self.inpaint_unet is not None and unet.config.in_channels == c and not lora:
            unet = self.inpaint_unet = components.load_unet(self.inpaint_unet, like=self.unet)  # the 9-channel variant
        start = partial(starts.for_inpainting, vae=self.vae, pixels=inp.pixels, masked=inp.masked,
                        mask_lat=mask_lat.to(self.device), steps=s.steps, strength=strength,
                        nine=unet.config.in_channels != c)
        info = {"Size": f"{inp.source.width}x{inp.source.height}", "Denoising strength": strength, "Mask blur": mask_blur}
        if only_masked:
            info.update({"Inpaint area": "Only masked", "Masked area padding": int(padding)})
        out = self.sample(draws, s, start, callback=callback, info=info, unet=unet)
        return im.paste_back(out, inp, mask_blur, composite)

    # -- LoRA: the adapters in ``self.loras`` (see ``LoraAdapters``) ----------------------------
    def load_lora(self, path: str | Path, name: str | None = None, scale: float = 1.0) -> str:
        """Load a LoRA file (diffusers/peft or kohya layout, or a shipped LoRA's name such as
        ``"purple"``) as adapter ``name`` at ``scale``; returns its name."""
        return self.loras.load(path, name, scale)

    def set_lora_scale(self, name: str, scale: float) -> None:
        self.loras.set_scale(name, scale)

    def fuse_lora(self) -> None:  # into the base weights; unfuse_lora restores them bit for bit
        self.loras.fuse()

    def unfuse_lora(self) -> None:
        self.loras.unfuse()

    def unload_lora(self, name: str | None = None) -> None:  # one, or all: the model as loaded
        self.loras.unload(name)
