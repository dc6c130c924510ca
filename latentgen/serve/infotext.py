"""A1111's ``infotext`` request field (its API since 1.9): the parameters text of a picture, as its PNG holds it,
read into the fields the request leaves out, as A1111's ``apply_infotext`` does: a field the request sends wins,
every other field the text names takes the text's value. "Clip skip" (1 where the text has none, as A1111 reads
it) and "VAE" go into ``override_settings`` (``CLIP_stop_at_last_layers``, ``sd_vae``) unless the request sets
them; a VAE this server does not have is left out, as A1111 leaves out what it cannot find, and so is the model
(A1111 does not switch models from an infotext by default: send ``sd_model_checkpoint``). The hires fix is on when
the text has "Denoising strength" and a "Hires" size or upscaler (A1111's rule). A value that is not of its field's
kind, or a sampler this server has not, is a 422 naming the infotext's field; the rest of the request is checked as
any request is."""

from __future__ import annotations

from .errors import ApiError

# (request field, infotext key, kind)
COMMON = [("prompt", "Prompt", str), ("negative_prompt", "Negative prompt", str), ("steps", "Steps", int),
          ("sampler_name", "Sampler", str), ("scheduler", "Schedule type", str), ("cfg_scale", "CFG scale", float),
          ("seed", "Seed", int), ("width", "Size-1", int), ("height", "Size-2", int),
          ("batch_size", "Batch size", int), ("subseed", "Variation seed", int),
          ("subseed_strength", "Variation seed strength", float), ("seed_resize_from_w", "Seed resize from-1", int),
          ("seed_resize_from_h", "Seed resize from-2", int), ("denoising_strength", "Denoising strength", float),
          ("tiling", "Tiling", bool)]
TXT2IMG = [("hr_scale", "Hires upscale", float), ("hr_upscaler", "Hires upscaler", str),
           ("hr_second_pass_steps", "Hires steps", int), ("hr_resize_x", "Hires resize-1", int),
           ("hr_resize_y", "Hires resize-2", int), ("hr_checkpoint_name", "Hires checkpoint", str),
           ("hr_sampler_name", "Hires sampler", str), ("hr_prompt", "Hires prompt", str),
           ("hr_negative_prompt", "Hires negative prompt", str)]
IMG2IMG = [("mask_blur", "Mask blur", int), ("inpaint_full_res_padding", "Masked area padding", int)]
SETTINGS = [("CLIP_stop_at_last_layers", "Clip skip", int), ("sd_vae", "VAE", str)]


def applied(req, *, vaes=None):
    """``req`` (a txt2img or img2img request) with its ``infotext`` read into the fields it leaves out."""
    if not req.infotext:
        return req
    from .codec import parse_infotext

    params, given = {"Clip skip": "1", **parse_infotext(req.infotext)}, req.model_fields_set
    txt2img = hasattr(req, "enable_hr")
    update = {}
    for field, key, kind in COMMON + (TXT2IMG if txt2img else IMG2IMG):
        if field not in given and key in params:
            update[field] = _value(key, params[key], kind)
    if txt2img and "enable_hr" not in given and "Denoising strength" in params and (
            {"Hires upscale", "Hires upscaler", "Hires resize-1"} & set(params)):
        update["enable_hr"] = True
    if not txt2img and "inpaint_full_res" not in given and "Inpaint area" in params:
        update["inpaint_full_res"] = params["Inpaint area"] == "Only masked"
    over = dict(req.override_settings or {})
    for name, key, kind in SETTINGS:
        if name not in over and key in params:
            value = _value(key, params[key], kind)
            if name != "sd_vae" or (vaes is not None and value in vaes.files):
                over[name] = value
    _check_sampler(update, req)
    return req.model_copy(update={**update, "override_settings": over or req.override_settings, "infotext": None})


def _check_sampler(update: dict, req) -> None:
    """A sampler (and schedule type) the infotext names, known here, else a 422 naming the infotext's fields."""
    from .settings import sampler_key

    if "sampler_name" in update or "scheduler" in update:
        try:
            sampler_key(update.get("sampler_name", req.sampler_name), update.get("scheduler", req.scheduler))
        except ApiError as e:
            raise ApiError(422, f"infotext: Sampler={update.get('sampler_name')!r}, Schedule type="
                                f"{update.get('scheduler')!r}: {e.detail} Send sampler_name (and scheduler) to draw "
                                f"with another.") from None


def _value(key: str, text, kind):
    """The infotext's ``text`` for ``key`` as a ``kind``, or a 422 naming it."""
    if kind is str:
        return str(text)
    if kind is bool:
        if str(text) not in ("True", "False"):
            raise ApiError(422, f"infotext: {key}={text!r} is not True or False.")
        return str(text) == "True"
    try:
        return kind(text)
    except ValueError:
        raise ApiError(422, f"infotext: {key}={text!r} is not {'a whole number' if kind is int else 'a number'}.") \
            from None
