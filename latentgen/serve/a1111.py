"""AUTOMATIC1111's API over latentgen: request fields (``fields``) -> a checked ``Task`` (here, in the
request's thread) -> latentgen calls in the worker (``run``) -> A1111's response.

The facts follow A1111's ``modules/api/models.py`` (fields and defaults), ``modules/api/api.py`` (routes,
errors) and ``modules/processing.py`` (``Processed.js()``: the ``info`` JSON; seeds ``seed + i``).
What maps to what:

    prompt, negative_prompt       -> prompt, negative_prompt (``<lora:NAME:WEIGHT>`` tags: the pipeline's)
    seed (-1: random)             -> seed; image i of the request has seed + i, as in A1111
    steps, cfg_scale              -> steps, guidance                      (left out: the model's defaults)
    sampler_name (+ scheduler)    -> scheduler: "Euler a" -> "euler_a"; "DPM++ 2M" + "Karras" -> "dpm++2m_karras"
    width, height                 -> width, height (txt2img); the size init images are resized to (img2img)
    batch_size x n_iter           -> n_iter calls of batch_size images each
    denoising_strength            -> strength
    mask, mask_blur               -> inpaint(mask=..., mask_blur=...); inpainting_mask_invert flips the mask
    inpaint_full_res (+ padding)  -> only_masked (+ padding)
    override_settings             -> sd_model_checkpoint (a model by name), CLIP_stop_at_last_layers (clip_skip),
                                     sd_vae (a VAE file of --vae-dir by name: the job's models use its VAE)

    subseed, subseed_strength     -> variation=latentgen.Variation(seed, strength, resize_from): A1111's variation
    seed_resize_from_w/h             seed and seed resize; image i of the request has subseed + i
    alwayson_scripts.controlnet   -> control=[latentgen.Control, ...] (``controlnet_api``: sd-webui-controlnet's units)
    refiner_checkpoint (a model   -> refiner=latentgen.Refiner(that model, switch_at, hires_pass): SDXL's refiner,
    by name), refiner_switch_at      held beside the drawing model; switch_at None: 0.8, as A1111's page; with
                                     enable_hr, the option hires_fix_refiner_pass says which pass

    enable_hr, hr_*               -> hires=latentgen.Hires(...) (``workflows``); hr_checkpoint_name: Hires(model=that
                                     model), held beside the drawing model
    tiling                        -> tiling=True: pictures that tile seamlessly (``latentgen.canvas.seamless``)

    infotext                      -> the fields the request leaves out, read from a picture's parameters text
    styles                        -> A1111's prompt styles from --styles-file, applied to the prompts
                                     (``latentgen.text.styles``); an unknown name is a 422

A field that would change the image in a way latentgen does not do (face restoration, a script it does not run,
...) is refused with a 422 that names it, never silently ignored. Fields that only tune what latentgen already does
its own way are accepted and not used: eta and s_* (latentgen's samplers use diffusers' defaults),
image_cfg_scale (instruct-pix2pix models only), mask_round (latentgen thresholds masks at 0.5),
do_not_save_grid (no grids are made).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from latentgen import checks
from latentgen.request import MAX_SEED

from .codec import a1111_mask, decode_image
from .errors import ApiError, unprocessable
from .fields import CommonFields, Img2ImgRequest, Txt2ImgRequest
from . import controlnet_api, infotext, prompt_file, workflows
from .settings import check_option, sampler_key, whole_in

MAX_PROMPT = 20_000  # characters of a prompt or a negative prompt (styled too)


# -- plans: a request checked and resolved, before it is queued ------------------------------------------
@dataclass
class Task:
    mode: str  # "txt2img" or "img2img"
    prompt: str
    negative: str | None
    seed: int
    subseed: int
    sampler: str | None
    steps: int | None
    cfg: float | None
    width: int | None
    height: int | None
    batch_size: int
    n_iter: int
    clip_skip: int
    model: str | None  # None: the current model
    switch: bool  # override_settings_restore_afterwards=False: the model stays current
    loras: dict[str, Path]
    save: bool
    parameters: dict  # the request as A1111 echoes it
    send_images: bool = True
    init_images: list[Image.Image] = field(default_factory=list)
    mask: Image.Image | None = None
    strength: float | None = None
    mask_blur: float = 4
    only_masked: bool = False
    padding: int = 0
    variation: object = None  # latentgen.Variation: subseed, subseed_strength, seed_resize_from_w/h
    hires: object = None  # latentgen.Hires: enable_hr, hr_*
    fill: str = "original"  # inpainting_fill
    resize_mode: str = "just resize"  # img2img's resize_mode
    script: dict | None = None  # script_name/script_args as call options: {"outpaint": ...} or {"grid": ...}
    control: list | None = None  # latentgen.Control units from alwayson_scripts.controlnet (``controlnet_api``)
    refiner: tuple | None = None  # refiner_checkpoint (a model by name), refiner_switch_at, hires_fix_refiner_pass
    hires_model: str | None = None  # hr_checkpoint_name: the hires pass's model by name (None: the same)
    vae: str | None = None  # sd_vae (options or override_settings): a VAE file by name (None: the model's own)
    tiling: bool = False  # A1111's Tiling: pictures that tile seamlessly

    @property
    def count(self) -> int:
        return self.batch_size * self.n_iter


def _refuse(field_name: str, value, why: str) -> ApiError:
    return ApiError(422, f"{field_name}={value!r} is not supported by latentgen: {why}.")


def check_pixels(width: int, height: int, limits) -> None:
    """An image of ``width`` x ``height``, to draw or to start from, is within ``--max-pixels``."""
    if width * height > limits.max_pixels:
        raise ApiError(422, f"{width}x{height} is {width * height} pixels; this server draws at most "
                            f"{limits.max_pixels} (--max-pixels): ask for a smaller size.")


def _unsupported(req: CommonFields) -> None:
    for name, bad, why in [
        ("restore_faces", bool(req.restore_faces), "there is no face restoration; send false"),
    ]:
        if bad:
            raise _refuse(name, getattr(req, name), why)


def _check_common(req: CommonFields, limits) -> None:
    _unsupported(req)
    for name in ("prompt", "negative_prompt"):
        if len(getattr(req, name)) > MAX_PROMPT:
            raise ApiError(422, f"{name} has {len(getattr(req, name))} characters; the limit is {MAX_PROMPT}.")
    checks.whole("batch_size", req.batch_size, 1)
    checks.whole("n_iter", req.n_iter, 1)
    top = MAX_SEED - (req.batch_size * req.n_iter - 1)  # image i of the request draws from seed + i
    whole_in("seed", req.seed, -1, top, f"use -1 (random) or a whole number from 0 to {top}")
    whole_in("subseed", req.subseed, -1, top, f"use -1 (random) or a whole number from 0 to {top}")
    checks.number("subseed_strength", req.subseed_strength or 0, minimum=0, maximum=1,
                  fix="use 0 (the seed's image) to 1 (the variation seed's)")
    for name in ("seed_resize_from_w", "seed_resize_from_h"):  # noise drawn at that size: bound like an image
        whole_in(name, getattr(req, name), -1, limits.max_pixels, "use -1 (off) or a size in pixels, such as 512")
    if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0:
        check_pixels(req.seed_resize_from_w, req.seed_resize_from_h, limits)
    if req.batch_size * req.n_iter > limits.max_images:
        raise ApiError(422, f"batch_size x n_iter = {req.batch_size * req.n_iter} images; this server makes at most "
                            f"{limits.max_images} per request (--max-images): ask for fewer, or send more requests.")
    if req.steps is not None:
        whole_in("steps", req.steps, 1, limits.max_steps, f"use 1 to {limits.max_steps} (--max-steps)")
    for name in ("width", "height"):
        if getattr(req, name) is not None:
            checks.whole(name, getattr(req, name), 1, f"use a positive multiple of 8, such as {name}=512")
    if req.width and req.height:
        check_pixels(req.width, req.height, limits)


def _prompt_loras(req: CommonFields, loras) -> tuple[str, dict[str, Path]]:
    """The prompt for the pipeline and the LoRA files its ``<lora:NAME:WEIGHT>`` tags name (checked by
    name against the server's LoRAs). The pipeline itself applies the tags (``latentgen.text.prompts``)."""
    from latentgen.text.prompts import extra_networks
    from latentgen.text.schedule import check_parts

    text, tags = extra_networks(req.prompt)
    check_parts(text, req.cfg_scale is None or req.cfg_scale > 1)  # AND needs CFG: refused before the job is queued
    if extra_networks(req.negative_prompt)[1]:
        raise ValueError("negative_prompt has a <lora:...> tag: tags work in the prompt only")
    if req.disable_extra_networks:
        return text, {}
    for kind, _, _ in tags:
        if kind != "lora":
            raise ApiError(422, f"prompt tag <{kind}:...> is not supported: only <lora:NAME:WEIGHT> works here.")
    return req.prompt, {name: loras.check(name) for _, name, _ in tags}


def _plan(mode: str, req: CommonFields, *, models, loras, options: dict, save: bool, controlnets=None,
          vaes=None) -> Task:
    """The plan's fields common to txt2img and img2img: prompt and LoRAs, sampler, model (A1111's
    ``override_settings``: a model by name, ``CLIP_stop_at_last_layers``), seeds."""
    prompt, files = _prompt_loras(req, loras)
    over = dict(req.override_settings or {})
    for key, value in over.items():
        check_option(key, value)
    model = models.check(over["sd_model_checkpoint"]) if over.get("sd_model_checkpoint") else None
    refiner = None
    if req.refiner_checkpoint not in (None, "", "None", "none"):  # A1111's "None" in its list: no refiner
        switch = 0.8 if req.refiner_switch_at is None else req.refiner_switch_at  # A1111's default in its page
        checks.number("refiner_switch_at", switch, minimum=0, maximum=1, fix="use 0 to 1, such as 0.8")
        where = over.get("hires_fix_refiner_pass", options["hires_fix_refiner_pass"])
        refiner = (models.check(req.refiner_checkpoint), float(switch), where.split()[0])  # "both passes" -> "both"
    subseed = _seed(req.subseed)
    resize = (req.seed_resize_from_w, req.seed_resize_from_h)
    variation = None
    if req.subseed_strength or min(resize) > 0:  # A1111 resizes the seed only when both sizes are > 0
        from latentgen.starts import Variation

        variation = Variation(subseed, float(req.subseed_strength or 0), resize if min(resize) > 0 else None)
    return Task(mode=mode, prompt=prompt, negative=req.negative_prompt or None, seed=_seed(req.seed),
                subseed=subseed, sampler=sampler_key(req.sampler_name or req.sampler_index, req.scheduler),
                steps=req.steps, cfg=req.cfg_scale, width=req.width, height=req.height, batch_size=req.batch_size,
                n_iter=req.n_iter, clip_skip=over.get("CLIP_stop_at_last_layers", options["CLIP_stop_at_last_layers"]),
                model=model, switch=model is not None and not req.override_settings_restore_afterwards, loras=files,
                save=save and not req.do_not_save_samples, parameters=req.model_dump(), send_images=req.send_images,
                variation=variation, refiner=refiner, tiling=bool(req.tiling),
                vae=vaes.pick(over.get("sd_vae"), options["sd_vae"]) if vaes is not None else None)


@unprocessable()
def plan_txt2img(req: Txt2ImgRequest, *, limits, upscalers=None, styles=None, **kw) -> Task:
    """``upscalers``: the folder of upscaler model files (``--upscalers-dir``); ``styles``: ``catalog.Styles``."""
    if prompt_file.named(req):  # A1111's "Prompts from file or textbox": a plan per line
        return prompt_file.plan(req, plan_txt2img, limits=limits, upscalers=upscalers, styles=styles, **kw)
    req = infotext.applied(req, vaes=kw.get("vaes"))  # A1111's infotext: the fields left out
    _check_common(req, limits)
    style = workflows.styler(req, styles, MAX_PROMPT)
    given, req = req, workflows.styled(req, style)
    hires = workflows.hires(req, limits, upscalers)
    script = workflows.script(req, "txt2img", upscalers, kw["models"], styles, kw.get("vaes"), limits)
    plan = _plan("txt2img", req, **kw)
    _cells_styled(script, given, style, kw["loras"])
    plan.hires, plan.script, plan.parameters = hires, script, given.model_dump()  # the request as sent
    plan.hires_model = workflows.hires_model(req, kw["models"])
    plan.control = _control(req, plan, kw.get("controlnets"), limits)
    return plan


def _cells_styled(script: dict | None, given, style, loras) -> None:
    """An X/Y/Z plot's or prompt matrix's cells styled each after its own prompt, as A1111's: the prompts as sent."""
    if script and ("grid" in script or "matrix" in script) and style:
        script["unstyled"], script["style"] = (_prompt_loras(given, loras)[0], given.negative_prompt), style


def _control(req: CommonFields, plan: Task, controlnets, limits, fallback=None) -> list | None:
    """The request's ControlNet units (``alwayson_scripts.controlnet``), refused where the call cannot take them."""
    units = controlnet_api.units_from(req.alwayson_scripts, controlnets=controlnets or controlnet_api.ControlNets(),
                                      fallback=fallback, max_pixels=limits.max_pixels, hires=plan.hires is not None)
    if units and plan.script and {"outpaint", "sd_upscale"} & set(plan.script):
        raise _refuse("script_name", req.script_name, "it takes no ControlNet here")
    return units


def _check_img2img(req: Img2ImgRequest, limits) -> None:
    """The img2img fields, before any image is decoded."""
    if not req.init_images:
        raise ApiError(422, "init_images is empty: send at least one base64 image to start from.")
    if len(req.init_images) > limits.max_images:
        raise ApiError(422, f"{len(req.init_images)} init_images; at most {limits.max_images} (--max-images).")
    checks.number("denoising_strength", req.denoising_strength, minimum=0, maximum=1,
                  fix="use 0 (keep) to 1 (repaint)")
    if req.initial_noise_multiplier not in (None, 1, 1.0):
        raise _refuse("initial_noise_multiplier", req.initial_noise_multiplier, "send 1")
    if req.latent_mask:
        raise _refuse("latent_mask", "...", "send the mask in 'mask'")
    if not req.mask:
        return
    workflows.fill(req)
    if req.mask_blur is None and req.mask_blur_x != req.mask_blur_y:
        raise _refuse("mask_blur_x", req.mask_blur_x, "latentgen blurs masks the same way in x and y; send mask_blur")
    whole_in("mask_blur", _blur(req), 0, 64, "use 0 to 64 pixels")
    whole_in("inpaint_full_res_padding", req.inpaint_full_res_padding, 0, 512, "use 0 to 512")
    checks.choice("inpainting_mask_invert", req.inpainting_mask_invert, (0, 1), "use 0 or 1")


def _blur(req: Img2ImgRequest) -> int:
    return req.mask_blur if req.mask_blur is not None else req.mask_blur_x


@unprocessable()
def plan_img2img(req: Img2ImgRequest, *, limits, upscalers=None, styles=None, **kw) -> Task:
    from latentgen.canvas import resize

    if prompt_file.named(req):
        return prompt_file.plan(req, plan_img2img, limits=limits, upscalers=upscalers, styles=styles, **kw)
    req = infotext.applied(req, vaes=kw.get("vaes"))
    _check_common(req, limits)
    _check_img2img(req, limits)
    given, req = req, workflows.styled(req, style := workflows.styler(req, styles, MAX_PROMPT))
    mode = workflows.resize_mode(req, bool(req.mask))
    script = workflows.script(req, "img2img", upscalers, kw["models"], styles, kw.get("vaes"), limits)
    plan = _plan("img2img", req, **kw)  # names and tags checked before any image is decoded
    _cells_styled(script, given, style, kw["loras"])
    plan.parameters = given.model_dump()  # the request as sent
    images = [decode_image(x, f"init_images[{i}]", limits.max_pixels) for i, x in enumerate(req.init_images)]
    size = (req.width or images[0].width, req.height or images[0].height)
    check_pixels(*size, limits)
    plan.width, plan.height = size
    plan.resize_mode, plan.script = mode, script
    # the pictures at the drawing's size by resize_mode; latent upscale (img2img only) is the call's own
    plan.init_images = [im.convert("RGB") if mode == "latent upscale" else resize.resize(im.convert("RGB"), size, mode)
                        for im in images]
    if req.mask:
        mask = decode_image(req.mask, "mask", limits.max_pixels)
        plan.mask = resize.resize(a1111_mask(mask, mask.size, bool(req.inpainting_mask_invert)).convert("RGB"), size,
                                  mode).convert("L")
        plan.fill = workflows.fill(req)
    plan.control = _control(req, plan, kw.get("controlnets"), limits, fallback=plan.init_images[0])
    plan.strength, plan.mask_blur = req.denoising_strength, _blur(req)
    plan.only_masked, plan.padding = req.inpaint_full_res, req.inpaint_full_res_padding
    if not req.include_init_images:
        plan.parameters["init_images"] = plan.parameters["mask"] = None
    return plan


def _seed(seed: int) -> int:
    return random.randrange(4294967294) if seed == -1 else seed  # A1111's get_fixed_seed
