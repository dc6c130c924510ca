"""sd-webui-controlnet's API over ``latentgen.Control``: units in ``alwayson_scripts.controlnet.args`` of txt2img and
img2img, and ``/controlnet/model_list``, ``/controlnet/module_list``, ``/controlnet/version``, ``/controlnet/detect``.

A unit's fields (the extension's ``ControlNetUnit``, as webuiapi sends it) -> ``latentgen.Control``:

    enabled (true)                          a unit with false is skipped, as the extension skips it
    image (base64, or {"image": ...}; legacy input_image)   -> image; empty on img2img: the first init image
    module ("none")                         -> preprocessor (``latentgen.control.preprocess``); network ones: 422
    model                                   -> model, by name: shipped (``edges``), a --controlnet-dir folder, or
                                               a file there by its stem (``control_v11p_sd15_canny`` for
                                               ``control_v11p_sd15_canny.pth``: ``latentgen.control.ldm_file``);
                                               A1111's "name [hash]" reads as the name; "None" or a path: 422/404
    weight (1)                              -> weight
    resize_mode ("Crop and Resize", 0-2)    -> resize_mode
    processor_res (-1), pixel_perfect       -> processor_res; -1 or pixel_perfect: at the drawing's size
    threshold_a, threshold_b (-1)           -> the preprocessor's thresholds (-1: its defaults)
    guidance_start, guidance_end (0, 1; legacy guidance: the end)   -> start, end
    control_mode ("Balanced", 0-2)          -> mode: balanced, prompt, controlnet

    hr_option ("Both")                      with enable_hr the units act in both passes, their images fitted to each
                                               pass's size; "Low res only" / "High res only": 422

Accepted and not used: low_vram / lowvram (latentgen plans memory itself), save_detected_map, is_ui. Anything that would change the image in a way
latentgen does not do (a unit mask, batch or loopback input, IP-Adapter or union types, an unknown field with a value)
is a 422 that names it: a unit is never silently dropped.
"""

from __future__ import annotations

from pathlib import Path

from .catalog import check_name
from .codec import decode_image
from .errors import ApiError

IGNORED = {"low_vram", "lowvram", "hr_option", "save_detected_map", "is_ui", "pixel_perfect", "guessmode"}
FIELDS = {"enabled", "image", "input_image", "module", "model", "weight", "resize_mode", "processor_res",
          "threshold_a", "threshold_b", "guidance_start", "guidance_end", "guidance", "control_mode", *IGNORED}
EMPTY_OK = {"mask": None, "mask_image": None, "input_mode": "simple", "batch_images": "", "loopback": False,
            "effective_region_mask": None, "ipadapter_input": None, "advanced_weighting": None,
            "union_control_type": "Unknown", "animatediff_batch": False, "batch_modifiers": [], "output_dir": "",
            "use_preview_as_input": False, "generated_image": None, "inpaint_crop_input_image": False,
            "batch_image_dir": "", "batch_mask_dir": "", "batch_input_gallery": None, "batch_mask_gallery": None}
MODES = {"balanced": "balanced", "my prompt is more important": "prompt", "controlnet is more important": "controlnet"}


class ControlNets:
    """ControlNets by name: those latentgen ships (``weights/controlnets``), and in ``--controlnet-dir`` the
    diffusers folders by name and the single files (``.safetensors``, ``.pth``, ...) by stem, as A1111 lists them
    (a folder wins over a file of the same name); a request names one, it never gives a path."""

    def __init__(self, folder: Path | None = None):
        self.folder = Path(folder) if folder else None

    def known(self) -> dict[str, Path]:
        from latentgen.control import ldm_file, units

        found = dict(units.shipped())
        if self.folder is not None and self.folder.is_dir():
            entries = sorted(self.folder.iterdir())
            found.update({p.stem: p for p in entries if ldm_file.is_file(p)})
            found.update({p.name: p for p in entries if (p / "config.json").is_file()})
        return found

    def check(self, name, field: str) -> Path:
        from latentgen.control.units import bare_name

        known = self.known()
        name = bare_name(name) if isinstance(name, str) else name
        return known[check_name(field, name, list(known), " (--controlnet-dir adds more)")]


def _bad(field: str, value, why: str) -> ApiError:
    return ApiError(422, f"{field}={value!r} is not supported: {why}.")


def _number(unit: dict, key: str, default, where: str):
    value = unit.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(f"{where}.{key}", value, "send a number")
    return value


def _mode(value, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 3:
        return ("balanced", "prompt", "controlnet")[value]
    if isinstance(value, str) and value.strip().lower() in MODES:
        return MODES[value.strip().lower()]
    raise _bad(f"{where}.control_mode", value, "send 'Balanced', 'My prompt is more important', 'ControlNet is more "
                                                "important' or 0-2")


def _image(unit: dict, where: str, fallback, max_pixels: int):
    data = unit.get("image") or unit.get("input_image")
    if isinstance(data, dict):
        if data.get("mask"):
            raise _bad(f"{where}.image.mask", "...", "latentgen's ControlNet units take no mask; send the image alone")
        data = data.get("image")
    if not data:
        if fallback is None:
            raise ApiError(422, f"{where}.image is empty: send the control image (base64), or use img2img, where the "
                                f"unit reads the init image.")
        return fallback
    return decode_image(data, f"{where}.image", max_pixels)


def unit_from(unit, index: int, *, controlnets: ControlNets, fallback, max_pixels: int):
    """One sd-webui-controlnet unit -> a ``latentgen.Control`` (None for a disabled unit), checked."""
    from latentgen import Control
    from latentgen.control import preprocess

    where = f"alwayson_scripts.controlnet.args[{index}]"
    if not isinstance(unit, dict):
        raise ApiError(422, f"{where} is not an object: send each unit as sd-webui-controlnet's fields.")
    if unit.get("enabled", True) is False:
        return None
    for key, value in unit.items():
        if key not in FIELDS and (key not in EMPTY_OK or value not in (EMPTY_OK[key], None, "", [], False)):
            raise _bad(f"{where}.{key}", value, "latentgen does not do this with ControlNet; leave it out")
    model = unit.get("model")
    if model in (None, "", "None", "none"):
        raise ApiError(422, f"{where}.model is {model!r}: name the ControlNet (GET /controlnet/model_list), or send "
                            f"enabled=false.")
    try:
        module = preprocess.name_of(unit.get("module") or "none")
    except ValueError as e:
        raise ApiError(422, f"{where}.module: {e}") from None
    res = _number(unit, "processor_res", -1, where)
    end = _number(unit, "guidance_end", _number(unit, "guidance", 1.0, where), where)
    return Control(image=_image(unit, where, fallback, max_pixels), model=controlnets.check(model, f"{where}.model"),
                   weight=_number(unit, "weight", 1.0, where), start=_number(unit, "guidance_start", 0.0, where),
                   end=end, mode=_mode(unit.get("control_mode", "Balanced"), where),
                   resize_mode=_resize(unit.get("resize_mode", "Crop and Resize"), where), preprocessor=module,
                   threshold_a=_number(unit, "threshold_a", -1, where), threshold_b=_number(unit, "threshold_b", -1, where),
                   processor_res=None if res in (-1, 0) or unit.get("pixel_perfect") else int(res))


def _resize(value, where: str):
    from latentgen.canvas import resize

    try:
        how = resize.mode(value.strip().lower() if isinstance(value, str) else value)
    except ValueError:
        how = None
    if how not in ("just resize", "crop and resize", "resize and fill"):
        raise _bad(f"{where}.resize_mode", value, "send 'Just Resize', 'Crop and Resize', 'Resize and Fill' or 0-2")
    return how


def units_from(scripts: dict, *, controlnets: ControlNets, fallback=None, max_pixels: int,
               hires: bool = False) -> list | None:
    """The ControlNet units of a request's ``alwayson_scripts`` (None: none); any other script is refused.
    ``hires``: the request has the hires fix, where a unit acts in both passes ("Both", the extension's default)."""
    units = None
    for name, value in (scripts or {}).items():
        if name.lower() != "controlnet":
            raise ApiError(422, f"alwayson_scripts.{name} is not supported: this server runs only ControlNet units "
                                f"(alwayson_scripts.controlnet).")
        args = value.get("args", []) if isinstance(value, dict) else None
        if not isinstance(args, list):
            raise ApiError(422, "alwayson_scripts.controlnet must be {\"args\": [unit, ...]}.")
        found = [unit_from(u, i, controlnets=controlnets, fallback=fallback, max_pixels=max_pixels)
                 for i, u in enumerate(args)]
        for i, (u, unit) in enumerate(zip(args, found)):
            if hires and unit is not None and u.get("hr_option") not in (None, "", "Both", "both"):
                raise _bad(f"alwayson_scripts.controlnet.args[{i}].hr_option", u["hr_option"], "with the hires fix "
                           "a unit acts in both passes here; send 'Both'")
        units = [u for u in found if u is not None] or None
    if units:
        from latentgen.control import units as checks

        for i, u in enumerate(units):
            try:
                checks.check(u, i)
            except ValueError as e:
                raise ApiError(422, f"alwayson_scripts.controlnet.args: {e}") from None
    return units


def detect(body: dict, max_pixels: int) -> dict:
    """``/controlnet/detect``: each image's map by ``controlnet_module`` at ``controlnet_processor_res`` on its short
    side (-1 or 0: its own size), thresholds as the unit's."""
    from latentgen.control import preprocess

    from .codec import encode_png

    try:
        module = preprocess.name_of(body.get("controlnet_module") or "none")
    except ValueError as e:
        raise ApiError(422, f"controlnet_module: {e}") from None
    images = body.get("controlnet_input_images") or body.get("controlnet_images") or []
    if not isinstance(images, list) or not images:
        raise ApiError(422, "controlnet_input_images is empty: send at least one base64 image.")
    res = body.get("controlnet_processor_res", 512)
    a, b = (body.get(f"controlnet_threshold_{k}", -1) for k in "ab")
    out = []
    for i, data in enumerate(images):
        image = decode_image(data, f"controlnet_input_images[{i}]", max_pixels).convert("RGB")
        if isinstance(res, (int, float)) and res >= 64:  # the map at that size, as the extension returns it
            image = preprocess.short_side(image, int(res))
        try:
            out.append(encode_png(preprocess.run(module, image, a, b)))
        except ValueError as e:
            raise ApiError(422, str(e)) from None
    return {"images": out, "info": "Success"}


def add_routes(app, server) -> None:
    """The extension's own endpoints, at the server's root (as webuiapi calls them)."""
    from starlette.concurrency import run_in_threadpool

    from latentgen.control import preprocess

    @app.get("/controlnet/version")
    async def version():
        return {"version": 2}

    @app.get("/controlnet/model_list")
    async def model_list():
        return {"model_list": list(server.controlnets.known())}

    @app.get("/controlnet/module_list")
    async def module_list():
        detail = {n: {"sliders": [{"name": f"threshold_{k}", "value": v} for k, v in zip("ab", m[:2]) if v is not None]}
                  for n, m in preprocess.MODULES.items()}
        return {"module_list": list(preprocess.MODULES), "module_detail": detail}

    @app.post("/controlnet/detect")
    async def detect_maps(body: dict):
        return await run_in_threadpool(detect, body, server.limits.max_pixels)
