"""Images in and out of the API: base64 PNG/JPEG/WebP in (size checked before decoding), base64 PNG with
its ``parameters`` chunk out, A1111's mask rule, and A1111's infotext parser for ``/sdapi/v1/png-info``."""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import warnings
from typing import Any

from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from .errors import ApiError


def decode_image(data, name: str, max_pixels: int) -> Image.Image:
    """A base64 image (optionally a ``data:image/...;base64,`` URL) -> a loaded PIL image, its size
    checked from the header before any pixel is decoded. URLs are refused: the server fetches nothing."""
    if not isinstance(data, str) or not data:
        raise ApiError(422, f"{name} is empty: send the image as base64 PNG/JPEG/WebP data.")
    if data.startswith(("http://", "https://")):
        raise ApiError(422, f"{name} is a URL; this server downloads nothing: send the image itself as base64.")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"{name} is not valid base64 (characters outside A-Z a-z 0-9 + / =, or a wrong "
                            f"length): send the image file's bytes base64-encoded.") from None
    too_big = (f"{name} is larger than this server's limit of {max_pixels} pixels (--max-pixels, about "
               f"{int(max_pixels ** 0.5)}x{int(max_pixels ** 0.5)}): downscale it")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(raw))
            if im.width * im.height > max_pixels:
                raise ApiError(422, f"{too_big} ({im.width}x{im.height}).")
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        m = re.search(r"\((\d+) pixels\)", str(e))  # Pillow refused it before we could read its size
        raise ApiError(422, f"{too_big}{f' ({m.group(1)} pixels)' if m else ''}.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ApiError(422, f"{name} is not an image Pillow can read ({type(e).__name__}: {str(e)[:200]}); "
                            f"send a PNG, JPEG or WebP file, base64-encoded.") from None
    return im


def encode_png(image: Image.Image) -> str:
    """PNG as base64 text, with the image's ``parameters`` (A1111's settings text) in a tEXt chunk."""
    info = PngImagePlugin.PngInfo()
    for k, v in image.info.items():
        if isinstance(k, str) and isinstance(v, str):
            info.add_text(k, v)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def a1111_mask(mask: Image.Image, size: tuple[int, int], invert: bool) -> Image.Image:
    """A1111's mask rule (``create_binary_mask``): an RGBA mask with real transparency is its alpha
    (opaque repaints), anything else its gray (white repaints). Resized to the image's size."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        mask = mask.split()[-1].point(lambda a: 255 if a > 128 else 0)
    else:
        mask = mask.convert("L")
    if invert:
        mask = ImageOps.invert(mask)
    return mask if mask.size == size else mask.resize(size, Image.Resampling.NEAREST)


_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(-?\d+)x(-?\d+)$")


def parse_infotext(text: str) -> dict:
    """A1111's ``parse_generation_parameters``, for the fields latentgen writes: Prompt, Negative prompt,
    then ``Key: value`` pairs (quoted values unquoted; ``Size: 64x64`` as ``Size-1``/``Size-2``)."""
    lines = text.strip().split("\n")
    last = lines[-1] if len(_PARAM.findall(lines[-1])) >= 3 else ""
    if last:
        lines = lines[:-1]
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    out: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for k, v in _PARAM.findall(last):
        if len(v) >= 2 and v[0] == v[-1] == '"':
            try:
                v = json.loads(v)
            except ValueError:
                pass
        m = _SIZE.match(v)
        if m:
            out[f"{k}-1"], out[f"{k}-2"] = m.group(1), m.group(2)
        else:
            out[k] = v
    return out


def png_info(image: Image.Image) -> dict:
    text = image.info.get("parameters")
    items = {k: v for k, v in image.info.items() if k != "parameters" and isinstance(k, str) and isinstance(v, str)}
    return {"info": text or "", "items": items, "parameters": parse_infotext(text) if text else {}}
