"""Running a checked plan (``latentgen.serve.a1111.Plan``) in the worker: the LoRAs its prompt names,
the latentgen calls (one per A1111 batch), the images and A1111's ``info`` (``Processed.js()``).
An interrupt keeps what is done, as A1111 does."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from .errors import ApiError, Interrupted


@contextmanager
def loras_loaded(pipe, files: dict[str, Path]):
    """Load the LoRAs a prompt's tags name, at scale 0, for one job; the pipeline's tag handling sets each
    one's weight while it samples. They are unloaded after, however the job ends."""
    added = []
    try:
        for name, path in files.items():
            if name not in pipe.loras.loaded:
                pipe.load_lora(path, name=name, scale=0.0)
                added.append(name)
        yield
    finally:
        for name in reversed(added):
            pipe.unload_lora(name)


def _draw(pipe, plan, width: int, height: int, common: dict):
    """``draw(seed, n, callback)``: the latentgen call for ``n`` images from ``seed`` (txt2img, img2img or
    inpaint, as the plan says); image i of the request starts from init image i % len(init_images)."""
    def draw(seed: int, n: int, callback):
        if plan.mode == "txt2img":
            return pipe.generate(plan.prompt, seed=seed, num_images=n, width=width, height=height,
                                 callback=callback, **common)
        init = plan.init_images[(seed - plan.seed) % len(plan.init_images)]
        if plan.mask is None:
            return pipe.img2img(plan.prompt, init, strength=plan.strength, seed=seed, num_images=n,
                                callback=callback, **common)
        return pipe.inpaint(plan.prompt, init, plan.mask, strength=plan.strength, seed=seed, num_images=n,
                            mask_blur=plan.mask_blur, only_masked=plan.only_masked, padding=plan.padding,
                            callback=callback, **common)
    return draw


def execute(plan, ctx, *, limits, outputs=None) -> tuple[list[Image.Image], dict]:
    """Run ``plan`` on its model; returns the images and A1111's info dict. Interrupted: what is done."""
    pipe = ctx.switch(plan.model) if plan.switch else ctx.pipeline(plan.model)
    d = pipe.defaults
    steps, cfg = plan.steps or d.steps, d.guidance if plan.cfg is None else plan.cfg
    width, height = plan.width or d.width, plan.height or d.height
    if steps > limits.max_steps:
        raise ApiError(422, f"the model's default steps={steps} is above --max-steps {limits.max_steps}: send steps.")
    if width * height > limits.max_pixels:
        raise ApiError(422, f"{width}x{height} is above this server's {limits.max_pixels} pixels (--max-pixels).")
    common = dict(steps=steps, guidance=cfg, negative_prompt=plan.negative, scheduler=plan.sampler,
                  clip_skip=plan.clip_skip)
    if plan.mode == "img2img":
        common["max_pixels"] = limits.max_pixels
    if plan.mode == "txt2img" or len(plan.init_images) == 1:  # A1111's batches: n_iter calls of batch_size
        calls = [(plan.seed + it * plan.batch_size, plan.batch_size) for it in range(plan.n_iter)]
    else:
        calls = [(plan.seed + i, 1) for i in range(plan.count)]
    draw, images, interrupted = _draw(pipe, plan, width, height, common), [], False
    with loras_loaded(pipe, plan.loras):
        for i, (seed, n) in enumerate(calls):
            try:
                ctx.check(f"before call {i + 1}/{len(calls)}")
                images += draw(seed, n, ctx.callback(i, len(calls)))
            except Interrupted:
                interrupted = True
                break
    if outputs is not None and plan.save:
        outputs.save(images, plan.mode)
    info = _info(plan, pipe, images, dict(width=width, height=height, cfg_scale=cfg, steps=steps),
                 ctx.worker.progress.job_timestamp)
    if interrupted:
        info["interrupted"] = True  # latentgen's addition: the images made before POST /sdapi/v1/interrupt
    return images, info


def _info(plan, pipe, images, resolved: dict, timestamp: str) -> dict:
    """A1111's ``info`` (``modules/processing.py``: ``Processed.js()``), for latentgen's images."""
    from latentgen.schedulers import SAMPLERS, label

    key = plan.sampler or pipe.defaults.scheduler
    negative, n = plan.negative or "", plan.count
    return {
        "prompt": plan.prompt, "all_prompts": [plan.prompt] * n, "negative_prompt": negative,
        "all_negative_prompts": [negative] * n, "seed": plan.seed, "all_seeds": [plan.seed + i for i in range(n)],
        "subseed": plan.subseed, "all_subseeds": [plan.subseed + i for i in range(n)], "subseed_strength": 0,
        **resolved, "sampler_name": SAMPLERS[key].label if key in SAMPLERS else label(pipe.scheduler),
        "batch_size": plan.batch_size, "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": pipe.name, "sd_model_hash": None, "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": plan.strength if plan.mode == "img2img" else None,
        "extra_generation_params": {}, "index_of_first_image": 0,
        "infotexts": [im.info.get("parameters", "") for im in images], "styles": [], "job_timestamp": timestamp,
        "clip_skip": plan.clip_skip,
        "is_using_inpainting_conditioning": plan.mask is not None
        and pipe.unet.config.in_channels != pipe.vae.config.latent_channels,
    }
