"""A1111's Extras over latentgen: upscaling pictures (``/sdapi/v1/extra-single-image``, ``/extra-batch-images``) with
the pixel upscalers and the model files of ``--upscalers-dir`` (``latentgen.upscale.upscalers``; on the worker, one
job at a time with the drawings), and the lists of upscalers (``/sdapi/v1/upscalers``, ``/latent-upscale-modes``).
Fields and defaults as A1111's ``modules/api/models.py``; its resize modes: 0 scales by ``upscaling_resize``, 1
scales to ``upscaling_resize_w`` x ``_h`` (covering them, cropped to them with ``upscaling_crop``); a second
upscaler is blended in at ``extras_upscaler_2_visibility``. Face restoration is refused (422), never silently
skipped."""

from __future__ import annotations

from PIL import Image
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from latentgen import checks

from .codec import decode_image, encode_png
from .errors import ApiError, unprocessable
from .settings import whole_in


class ExtrasFields(BaseModel):
    model_config = ConfigDict(extra="ignore")

    resize_mode: int = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = 0
    codeformer_visibility: float = 0
    codeformer_weight: float = 0
    upscaling_resize: float = 2
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0
    upscale_first: bool = False


class SingleImage(ExtrasFields):
    image: str = ""


class FileData(BaseModel):
    data: str
    name: str = ""


class BatchImages(ExtrasFields):
    imageList: list[FileData] = []  # noqa: N815 - A1111's field name


def _check(req: ExtrasFields, limits, folder) -> tuple[str, str]:
    """The two upscalers (names, or model files' paths) once every field is checked."""
    from latentgen.upscale import upscalers

    for name in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(req, name):
            raise ApiError(422, f"{name}={getattr(req, name)!r}: this server has no face restoration; send 0.")
    checks.choice("resize_mode", req.resize_mode, (0, 1), "use 0 (scale by upscaling_resize) or 1 (to a size)")
    checks.number("upscaling_resize", req.upscaling_resize, minimum=1, maximum=8, fix="use 1 to 8")
    for name in ("upscaling_resize_w", "upscaling_resize_h"):
        whole_in(name, getattr(req, name), 1, limits.max_pixels, "use a size in pixels")
    checks.number("extras_upscaler_2_visibility", req.extras_upscaler_2_visibility, minimum=0, maximum=1,
                  fix="use 0 to 1")
    names = []
    for field in ("upscaler_1", "upscaler_2"):
        name = getattr(req, field)
        if upscalers.is_latent(name):
            raise ApiError(422, f"{field}={name!r}: the latent ones work inside a hires fix only; use one of "
                                f"{', '.join(upscalers.PIXEL)} or a model file (GET /sdapi/v1/upscalers).")
        try:
            names.append(upscalers.check(name, field, folder))
        except (TypeError, ValueError) as e:
            raise ApiError(404, f"{e} (GET /sdapi/v1/upscalers)") from None
    return names[0], names[1]


def size_of(image: Image.Image, req: ExtrasFields, limits) -> tuple[int, int]:
    """The (w, h) a picture is upscaled to, within ``--max-pixels`` (checked before the job is queued)."""
    if req.resize_mode == 0:
        scale = req.upscaling_resize
    else:
        scale = max(req.upscaling_resize_w / image.width, req.upscaling_resize_h / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size[0] * size[1] > limits.max_pixels:
        raise ApiError(422, f"upscaled to {size[0]}x{size[1]}, above --max-pixels {limits.max_pixels}.")
    return size


def upscale(image: Image.Image, req: ExtrasFields, limits, names: tuple[str, str]) -> Image.Image:
    """One picture through A1111's Extras upscaling (the module docstring), by the upscalers ``names``."""
    from latentgen.upscale import upscalers

    image = image.convert("RGB")
    size = size_of(image, req, limits)
    out = upscalers.pixels(image, size, names[0])
    if names[1] != "None" and req.extras_upscaler_2_visibility > 0:
        out = Image.blend(out, upscalers.pixels(image, size, names[1]), req.extras_upscaler_2_visibility)
    if req.resize_mode == 1 and req.upscaling_crop:
        w, h = req.upscaling_resize_w, req.upscaling_resize_h
        left, top = (out.width - w) // 2, (out.height - h) // 2
        out = out.crop((left, top, left + w, top + h))
    return out


def _info(req: ExtrasFields, image: Image.Image) -> str:
    how = f"Postprocess upscale by: {req.upscaling_resize:g}" if req.resize_mode == 0 else \
        f"Postprocess upscale to: {req.upscaling_resize_w}x{req.upscaling_resize_h}"
    return f"<p>{how}, Postprocess upscaler: {req.upscaler_1}, size: {image.width}x{image.height}</p>"


@unprocessable()
def single(req: SingleImage, limits, folder=None):
    """The request checked and its picture decoded; returns the work (for the worker) that answers it."""
    names = _check(req, limits, folder)
    image = decode_image(req.image, "image", limits.max_pixels)
    size_of(image, req, limits)

    def work(_ctx=None) -> dict:
        out = upscale(image, req, limits, names)
        return {"html_info": _info(req, out), "image": encode_png(out)}
    return work


@unprocessable()
def batch(req: BatchImages, limits, folder=None):
    names = _check(req, limits, folder)
    if not req.imageList or len(req.imageList) > limits.max_images:
        raise ApiError(422, f"imageList has {len(req.imageList)} images: send 1 to {limits.max_images} (--max-images).")
    pictures = [decode_image(f.data, f"imageList[{i}]", limits.max_pixels) for i, f in enumerate(req.imageList)]
    for p in pictures:
        size_of(p, req, limits)

    def work(_ctx=None) -> dict:
        outs = [upscale(p, req, limits, names) for p in pictures]
        return {"html_info": _info(req, outs[0]), "images": [encode_png(o) for o in outs]}
    return work


def listed(folder) -> list[dict]:
    """GET /sdapi/v1/upscalers: the pixel ones, then each model file (A1111's fields; a file that cannot be
    read is listed without its architecture and scale)."""
    from latentgen.upscale import upscalers

    out = [{"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4} for n in upscalers.PIXEL]
    for name, path in upscalers.model_files(folder).items():
        try:
            arch, scale = upscalers.describe(path)
        except (OSError, ValueError):
            arch = scale = None
        out.append({"name": name, "model_name": arch, "model_path": str(path), "model_url": None, "scale": scale})
    return out


def add_routes(app, server) -> None:
    from latentgen.upscale import upscalers

    folder = server.config.upscalers_dir

    @app.get("/sdapi/v1/upscalers")
    async def list_upscalers():
        return await run_in_threadpool(listed, folder)

    @app.get("/sdapi/v1/latent-upscale-modes")
    def latent_modes():
        return [{"name": n} for n in upscalers.LATENT]

    @app.post("/sdapi/v1/extra-single-image")
    async def extra_single(req: SingleImage, request: Request):
        work = await run_in_threadpool(single, req, server.limits, folder)
        return await server.run(request, "extras", work)

    @app.post("/sdapi/v1/extra-batch-images")
    async def extra_batch(req: BatchImages, request: Request):
        work = await run_in_threadpool(batch, req, server.limits, folder)
        return await server.run(request, "extras", work)
