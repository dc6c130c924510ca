"""ControlNet preprocessors that need no neural network: a picture -> the control map a ControlNet was trained on.

Each is a pure function of (RGB image, threshold_a, threshold_b) -> RGB image of the same size, under the names and
with the threshold defaults of A1111's sd-webui-controlnet (``/controlnet/module_list``):

    none            the image is the map
    invert          255 - image: a black-on-white drawing -> the white-on-black lines ControlNets read
                    (A1111's "invert (from white bg & black line)")
    canny           Canny edges (OpenCV), hysteresis thresholds a (low, 100) and b (high, 200): white on black
    threshold       white where every channel is above a (127), black elsewhere
    scribble_xdog   extended difference of Gaussians (sigma 0.5 and 5): white strokes where it exceeds a (32)
    tile_resample   downsampled by a (1.0 keeps it; 2.0 halves each side): the tile model's blurred picture

Preprocessors that run an annotator network (depth, pose, segmentation, soft edges, line art, ...) are refused by
name: send the map they would make (``module="none"``). ``run`` takes the picture at the size it is drawn at
(A1111's "pixel perfect") or at ``resolution`` on its short side (A1111's ``processor_res``) when given.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .. import checks

# name -> (threshold_a default, threshold_b default, A1111's aliases)
MODULES: dict[str, tuple[float | None, float | None, tuple[str, ...]]] = {
    "none": (None, None, ()),
    "invert": (None, None, ("invert (from white bg & black line)",)),
    "canny": (100.0, 200.0, ()),
    "threshold": (127.0, None, ("binary",)),
    "scribble_xdog": (32.0, None, ()),
    "tile_resample": (1.0, None, ()),
}
NETWORKS = ("depth", "openpose", "dw_openpose", "lineart", "softedge", "hed", "pidinet", "mlsd", "normal", "seg",
            "shuffle", "reference", "ip-adapter", "inpaint", "recolor", "blur_gaussian", "mediapipe", "scribble_hed",
            "scribble_pidinet", "t2ia", "clip_vision", "densepose", "anime_face", "instant_id", "revision")


def name_of(module: str | None) -> str:
    """A preprocessor's name as ``MODULES`` keys it (A1111's aliases read too); one that needs an annotator network,
    or that does not exist, is refused, naming what to send instead."""
    if module is None:
        return "none"
    key = str(module).strip().lower()
    for name, (_, _, aliases) in MODULES.items():
        if key == name or key in aliases:
            return name
    if any(key == n or key.startswith(n + "_") or key.startswith(n) for n in NETWORKS):
        raise ValueError(f"preprocessor {module!r} runs an annotator network, which latentgen does not ship: make the "
                         f"map elsewhere and send it with preprocessor 'none'.")
    raise ValueError(f"preprocessor {module!r} is unknown: use one of {', '.join(MODULES)} (or send the map itself "
                     f"with 'none').")


def thresholds(module: str | None, a: float | None = None, b: float | None = None) -> tuple[float | None, float | None]:
    """(threshold_a, threshold_b) of ``module``: the given ones, or its defaults where a value is None or A1111's -1."""
    da, db, _ = MODULES[name_of(module)]
    a = da if a is None or a == -1 else checks.number("threshold_a", a, minimum=0, fix="use a number >= 0")
    b = db if b is None or b == -1 else checks.number("threshold_b", b, minimum=0, fix="use a number >= 0")
    return a, b


def run(module: str | None, image: Image.Image, threshold_a: float | None = None, threshold_b: float | None = None,
        resolution: int | None = None) -> Image.Image:
    """The control map of ``image`` by ``module``, an RGB image of the input's size (``resolution``: processed with
    its short side at that many pixels, then brought back)."""
    name = name_of(module)
    a, b = thresholds(name, threshold_a, threshold_b)
    image = image.convert("RGB")
    if name == "none":
        return image
    size = image.size
    if resolution is not None:
        checks.whole("processor_res", resolution, 64, "use a whole number >= 64, such as 512")
        image = short_side(image, resolution)
    out = Image.fromarray(_FUNCTIONS[name](np.asarray(image), a, b))
    if out.size == size:
        return out
    return out.resize(size, Image.BOX if out.width > size[0] else Image.BICUBIC)  # area when shrinking: thin lines stay


def short_side(image: Image.Image, pixels: int) -> Image.Image:
    """``image`` resized (bicubic) so that its short side is ``pixels``."""
    s = pixels / min(image.size)
    return image.resize((max(1, round(image.width * s)), max(1, round(image.height * s))), Image.BICUBIC)


def _invert(x: np.ndarray, a, b) -> np.ndarray:
    return 255 - x


def _canny(x: np.ndarray, low: float, high: float) -> np.ndarray:
    import cv2

    edges = cv2.Canny(x, low, high)  # (H, W) 0 or 255
    return np.repeat(edges[..., None], 3, axis=2)


def _threshold(x: np.ndarray, a: float, b) -> np.ndarray:
    on = x.min(axis=2) > a  # (H, W)
    return np.repeat((on * 255).astype(np.uint8)[..., None], 3, axis=2)


def _xdog(x: np.ndarray, a: float, b) -> np.ndarray:
    import cv2

    f = x.astype(np.float32)
    fine, coarse = cv2.GaussianBlur(f, (0, 0), 0.5), cv2.GaussianBlur(f, (0, 0), 5.0)
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255)  # (H, W): darker where a line is
    on = 2 * (255 - dog) > a
    return np.repeat((on * 255).astype(np.uint8)[..., None], 3, axis=2)


def _tile(x: np.ndarray, rate: float, b) -> np.ndarray:
    import cv2

    if rate < 1.1:
        return x
    h, w = x.shape[:2]
    return cv2.resize(x, (max(1, int(w / rate)), max(1, int(h / rate))), interpolation=cv2.INTER_AREA)


_FUNCTIONS = {"invert": _invert, "canny": _canny, "threshold": _threshold, "scribble_xdog": _xdog,
              "tile_resample": _tile}
