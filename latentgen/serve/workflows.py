"""A1111's everyday workflow fields over latentgen, checked in the request's thread: the hires fix (txt2img's
``enable_hr`` and ``hr_*``), masked content (img2img's ``inpainting_fill``), resize modes (``resize_mode``) and the
scripts this server runs through ``script_name`` / ``script_args``: "Poor man's outpainting", "SD upscale"
(``latentgen.upscale.sd_upscale``) and "Loopback" (``latentgen.canvas.loopback``) on img2img,
"X/Y/Z plot" (``latentgen.plot.xyz``) and "Prompt matrix" (``latentgen.plot.matrix``), on txt2img and img2img. Facts
from A1111's ``modules/processing.py`` and ``scripts/``."""

from __future__ import annotations

from dataclasses import replace

from latentgen import checks

from .errors import ApiError
from .settings import sampler_key, whole_in

SCRIPTS = {"txt2img": ["x/y/z plot", "prompt matrix", "prompts from file or textbox"],  # (the last: prompt_file)
           "img2img": ["x/y/z plot", "prompt matrix", "poor man's outpainting", "sd upscale", "loopback",
                       "prompts from file or textbox"]}  # GET /sdapi/v1/scripts
API_HIRES_STRENGTH = 0.75  # A1111's API default denoising_strength of the hires pass (its web page's: 0.7)
DIRECTIONS = {"left": "left", "right": "right", "up": "top", "down": "bottom"}
MAX_STYLES = 32  # prompt styles one request may name


def hires(req, limits, folder=None):
    """``latentgen.Hires`` of a txt2img request with ``enable_hr`` (None without), its final size checked;
    ``folder``: where ``hr_upscaler`` names model files (``--upscalers-dir``)."""
    if not req.enable_hr:
        return None
    from latentgen.upscale import upscalers
    from latentgen.upscale.hires import Hires

    if req.firstphase_width or req.firstphase_height:
        raise ApiError(422, "firstphase_width/firstphase_height are A1111's old hires fields: send width, height "
                            "and hr_scale (or hr_resize_x/y) instead.")
    checks.number("hr_scale", req.hr_scale, minimum=1, maximum=8, fix="use 1 to 8")
    for name in ("hr_resize_x", "hr_resize_y"):
        whole_in(name, getattr(req, name), 0, limits.max_pixels, "use 0 (from hr_scale) or a size in pixels")
    whole_in("hr_second_pass_steps", req.hr_second_pass_steps, 0, limits.max_steps,
             f"use 0 (the first pass's steps) to {limits.max_steps}")
    strength = API_HIRES_STRENGTH if req.denoising_strength is None else req.denoising_strength
    checks.number("denoising_strength", strength, minimum=0, maximum=1, fix="use 0 to 1, such as 0.55")
    same = req.hr_sampler_name in (None, "", "Use same sampler")
    h = Hires(scale=float(req.hr_scale), width=req.hr_resize_x or None, height=req.hr_resize_y or None,
              upscaler=upscalers.check(req.hr_upscaler or "Latent", "hr_upscaler", folder), strength=float(strength),
              steps=req.hr_second_pass_steps or None,
              scheduler=None if same else sampler_key(req.hr_sampler_name, req.hr_scheduler),
              prompt=req.hr_prompt or None, negative_prompt=req.hr_negative_prompt or None)
    if req.width and req.height:  # else the model's default size, checked when the job runs (``run.execute``)
        check_final(h, req.width, req.height, limits)
    return h


def hires_model(req, models) -> str | None:
    """The model of the catalog (``catalog.Models``) that A1111's ``hr_checkpoint_name`` names for the hires pass,
    checked (None: "Use same checkpoint", or no hires fix); ``run.execute`` holds it beside the drawing model."""
    name = req.hr_checkpoint_name
    if not req.enable_hr or name in (None, "", "Use same checkpoint"):
        return None
    try:
        return models.check(name)
    except ApiError as e:
        raise ApiError(e.status, f"hr_checkpoint_name: {e.detail} (\"Use same checkpoint\": the model itself)")


def styler(req, styles, limit: int):
    """The request's A1111 prompt styles (``styles``: ``catalog.Styles``, its table read once, here) as a function
    (prompt, negative prompt) -> both styled, each at most ``limit`` characters (None without styles). The X/Y/Z
    plot styles each cell's prompts after its Prompt S/R, as A1111 does."""
    if not req.styles:
        return None
    from functools import partial

    from latentgen.text.styles import apply

    if len(req.styles) > MAX_STYLES:
        raise ApiError(422, f"styles names {len(req.styles)} styles; at most {MAX_STYLES}.")
    return partial(apply, names=list(req.styles), table=styles.table() if styles is not None else {}, limit=limit)


def styled(req, style):
    """The request with the ``styler`` of its styles applied to its prompts, the hires prompts too where given
    (``latentgen.text.styles``); an unknown name is refused."""
    if style is None:
        return req
    from latentgen.text.styles import apply_given

    prompt, negative = style(req.prompt, req.negative_prompt)
    update = {"prompt": prompt, "negative_prompt": negative}
    if hasattr(req, "hr_prompt"):  # txt2img's hires prompts, styled where given
        update["hr_prompt"], update["hr_negative_prompt"] = apply_given(req.hr_prompt, req.hr_negative_prompt,
                                                                        **style.keywords)
    return req.model_copy(update=update)


def check_final(h, width: int, height: int, limits) -> None:
    """The hires pass's final size is within ``--max-pixels``."""
    from latentgen.upscale.hires import sizes

    w, ht = sizes(h, width, height, 1)[1]
    if w * ht > limits.max_pixels:
        raise ApiError(422, f"the hires pass draws {w}x{ht}, above --max-pixels {limits.max_pixels}: ask for a "
                            f"smaller hr_scale or hr_resize_x/y.")


def fill(req) -> str:
    """The masked content of an inpainting request: A1111's 0 fill, 1 original, 2 latent noise, 3 latent nothing."""
    from latentgen.canvas import fill as masked

    return masked.mode(req.inpainting_fill)


def resize_mode(req, has_mask: bool) -> str:
    """img2img's resize mode by A1111's number (0-3); latent upscale (3) is for img2img without a mask."""
    from latentgen.canvas import resize

    mode = resize.mode(req.resize_mode)
    if has_mask and mode == "latent upscale":
        raise ApiError(422, "resize_mode=3 (latent upscale) with a mask is not supported: send 0, 1 or 2.")
    return mode


def script(req, mode: str, folder=None, models=None, styles=None, vaes=None, limits=None) -> dict | None:
    """The request's script, as latentgen call options (None without one); unknown scripts: 422. ``folder``:
    where the plot's "Hires upscaler" values name model files; ``models``: the catalog its "Checkpoint name" values
    name (``catalog.Models``; 404 for one it has not); ``styles``, ``vaes``: the ``catalog.Styles`` and ``vaes.Vaes``
    its "Styles" and "VAE" values name."""
    name = (req.script_name or "").strip().lower()
    if not name:
        return None
    if name not in SCRIPTS[mode]:
        raise ApiError(422, f"script_name={req.script_name!r} is not a script this server runs for {mode}; it runs "
                            f"{', '.join(map(repr, SCRIPTS[mode]))} (GET /sdapi/v1/scripts).")
    if name == "poor man's outpainting":
        return outpainting(req)
    if name == "sd upscale":
        return sd_upscale(req, folder, limits)
    if name == "loopback":
        return loopback(req)
    if name == "prompt matrix":
        return prompt_matrix(req, limits)
    from latentgen.plot.xyz import check_replacements, from_a1111

    try:
        axes = from_a1111(req.script_args, upscalers_dir=folder, mode=mode)
        check_replacements(axes, req.prompt, req.negative_prompt)  # the styled prompts: again per cell, unstyled
    except ValueError as e:
        raise ApiError(422, f"script_args of the X/Y/Z plot: {e}") from None
    if models is not None:
        try:
            axes = [replace(a, values=tuple(models.check(v) for v in a.values)) if a.label == "Checkpoint name"
                    else a for a in axes]
        except ApiError as e:
            raise ApiError(e.status, f"script_args of the X/Y/Z plot, Checkpoint name: {e.detail}") from None
    for v in (v for a in axes if a.label == "VAE" for v in a.values) if vaes is not None else ():
        vaes.check(v, "script_args of the X/Y/Z plot, VAE")  # a file of --vae-dir, or "Automatic": the model's own
    lone = len(req.script_args) > 10 and bool(req.script_args[10])  # include_lone_images
    return {"grid": axes, "lone": lone, **_styles_axis(axes, styles)}


def _styles_axis(axes, styles) -> dict:
    """``{"styles": table}`` for a plot with a Styles axis, every name of it in the table (else 422)."""
    if not any(a.label == "Styles" for a in axes):
        return {}
    from latentgen.plot.values import style_names
    from latentgen.text.styles import apply

    table = styles.table() if styles is not None else {}
    for v in (v for a in axes if a.label == "Styles" for v in a.values):
        try:
            apply("", None, style_names(v), table, "Styles")  # refuses a name the table has not
        except ValueError as e:
            raise ApiError(422, f"script_args of the X/Y/Z plot, {e} They are --styles-file's.") from None
    return {"styles": table}


def prompt_matrix(req, limits) -> dict:
    """A1111's "Prompt matrix" arguments: [put_at_start, different_seeds, prompt_type ("positive"/"negative"),
    variations_delimiter ("comma"/"space"), margin_size] (A1111 1.0-1.5 sent the first two only), as
    ``latentgen.plot.matrix.matrix`` options; its 2 ** parts images within ``--max-images``."""
    from latentgen.plot.matrix import prompts

    args = list(req.script_args) + [None] * 5
    kind, joiner = args[2] or "positive", args[3] or "comma"
    if kind not in ("positive", "negative"):
        raise ApiError(422, f"script_args[2] (prompt type) {kind!r} of the prompt matrix: send 'positive' or 'negative'.")
    margin = args[4] or 0
    margin = int(margin) if isinstance(margin, float) and margin.is_integer() else margin  # a slider's 2.0
    margin = whole_in("script_args[4] (grid margins)", margin, 0, 500, "use 0 to 500 pixels")
    try:
        n = len(prompts((req.negative_prompt or "") if kind == "negative" else req.prompt, joiner=joiner,
                        what="negative prompt" if kind == "negative" else "prompt"))
    except ValueError as e:
        raise ApiError(422, f"script_args of the prompt matrix: {e}") from None
    if limits is not None and n > limits.max_images:
        raise ApiError(422, f"the prompt matrix has {n} images; at most {limits.max_images} (--max-images): write "
                            f"fewer '|' parts.")
    return {"matrix": dict(at_start=bool(args[0]), different_seeds=bool(args[1]), negative=kind == "negative",
                           joiner=joiner, margin=margin)}


def outpainting(req) -> dict:
    """A1111's "Poor man's outpainting" arguments: [pixels, mask_blur, inpainting_fill, directions]; its defaults
    128, 4, fill, all four sides."""
    args = list(req.script_args) + [None] * 4
    pixels, blur, fill_index, directions = (128 if args[0] is None else args[0], 4 if args[1] is None else args[1],
                                            0 if args[2] is None else args[2], args[3])
    directions = list(DIRECTIONS) if directions is None else directions
    whole_in("script_args[0] (pixels)", pixels, 8, 1024, "use 8 to 1024 pixels per side")
    whole_in("script_args[1] (mask_blur)", blur, 0, 64, "use 0 to 64 pixels")
    if not isinstance(directions, list) or not directions or any(d not in DIRECTIONS for d in directions):
        raise ApiError(422, f"script_args[3]={directions!r}: give a non-empty list of 'left', 'right', 'up', 'down'.")
    from latentgen.canvas import fill as masked

    sides = {DIRECTIONS[d]: int(pixels) for d in directions}
    return {"outpaint": sides, "mask_blur": blur, "fill": masked.mode(fill_index)}



def sd_upscale(req, folder, limits) -> dict:
    """A1111's "SD upscale" arguments: [info, overlap, upscaler_index, scale_factor] (its defaults 64, 0 and 2); the
    upscaler by its index in GET /sdapi/v1/upscalers (A1111's sd_upscalers: None, Lanczos, Nearest, then the model
    files) or by name; the first init image as sent (the tiles are the drawing size)."""
    from latentgen.upscale import upscalers
    from latentgen.upscale.sd_upscale import fitted

    from .codec import decode_image

    if req.mask:
        raise ApiError(422, "script_name='SD upscale' redraws the whole picture: send no mask.")
    args = list(req.script_args) + [None] * 4
    overlap = 64 if args[1] is None else int(args[1]) if isinstance(args[1], float) and args[1].is_integer() else args[1]
    overlap = whole_in("script_args[1] (tile overlap)", overlap, 0, 256, "use 0 to 256 pixels")
    scale = checks.number("script_args[3] (scale factor)", 2 if args[3] is None else args[3], minimum=1, maximum=8,
                          fix="use 1 to 8, such as 2")
    names = [*upscalers.PIXEL, *upscalers.model_files(folder)]
    pick = args[2] or 0
    if isinstance(pick, int) and not isinstance(pick, bool):
        if not 0 <= pick < len(names):
            raise ApiError(422, f"script_args[2] (upscaler) {pick} is not an upscaler's index: send 0 to "
                                f"{len(names) - 1} (GET /sdapi/v1/upscalers) or a name.")
        pick = names[pick]
    try:
        upscaler = upscalers.check(pick, "script_args[2] (upscaler)", folder)
    except (ValueError, TypeError) as e:
        raise ApiError(422, f"{e} (GET /sdapi/v1/upscalers)") from None
    image = decode_image(req.init_images[0], "init_images[0]", limits.max_pixels)
    try:  # the tiles are the request's size, the picture's own when it gives none
        fitted(image.size, scale, upscaler, (req.width or image.width, req.height or image.height), overlap,
               limits.max_pixels)
    except ValueError as e:
        raise ApiError(422, f"script_name='SD upscale': {e}") from None
    return {"sd_upscale": dict(scale=scale, upscaler=upscaler, overlap=overlap, image=image.convert("RGB"))}


def loopback(req) -> dict:
    """A1111's "Loopback" arguments (1.2 on): [loops, final_denoising_strength, denoising_curve,
    append_interrogation], its defaults 4, 0.5, "Linear", "None"; interrogation (CLIP, DeepBooru) is refused."""
    from latentgen.canvas.loopback import strengths

    args = list(req.script_args) + [None] * 4
    if len(req.script_args) == 3 and args[2] in ("None", "CLIP", "DeepBooru"):
        raise ApiError(422, "script_args of Loopback: [loops, change factor, interrogation] are A1111 1.0-1.1's; send "
                            "[loops, final_denoising_strength, denoising_curve, append_interrogation] (1.2 on).")
    loops = 4 if args[0] is None else int(args[0]) if isinstance(args[0], float) and args[0].is_integer() else args[0]
    final, curve = 0.5 if args[1] is None else args[1], args[2] or "Linear"
    if (args[3] or "None") != "None":
        raise ApiError(422, f"script_args[3] (append interrogated prompt) {args[3]!r} is not supported by latentgen: "
                            f"there is no interrogator; send 'None'.")
    whole_in("script_args[0] (loops)", loops, 1, 32, "use 1 to 32")
    try:
        strengths(loops, req.denoising_strength, final, curve)
    except ValueError as e:
        raise ApiError(422, f"script_args of Loopback: {e}") from None
    return {"loopback": dict(loops=loops, final_strength=final, curve=curve)}
