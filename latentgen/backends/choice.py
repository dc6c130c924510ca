"""Which backend runs the U-Net, decided once by ``latentgen.load``: the one asked for (``backend=`` or
``$LATENTGEN_BACKEND``, checked against the device before anything is read: ``requested``), else by rule from
the device, whether fp32 was asked for and the U-Net's width (``default``). ``latentgen.backends.runtime``
runs it; ``repr(pipe)`` says which and why."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from .. import precision
from . import cache

BACKENDS = ("torch", "openvino", "cudagraph", "compile")
CPU_ONLY, CUDA_ONLY = ("openvino",), ("cudagraph", "compile")
ENV = "LATENTGEN_BACKEND"  # the default backend when load() is given none (one of BACKENDS)


@functools.cache
def available() -> bool:
    """Whether OpenVINO imports (it is a dependency; a platform without wheels, or an install whose native
    library fails to load, runs torch)."""
    try:
        import openvino  # noqa: F401
    except Exception:  # noqa: BLE001  (ImportError, or OSError from a missing shared library)
        return False
    return True


def compiler_missing(device: torch.device) -> str:
    """Why ``torch.compile`` cannot build CUDA kernels for ``device`` ("" when it can): inductor writes them
    in Triton, which needs the triton package and a GPU of compute capability 7.0 or later; and Dynamo
    must support this Python (not every torch supports the newest Python, or free-threaded builds)."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python"
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    if torch.cuda.is_available() and torch.cuda.get_device_capability(device) < (7, 0):
        return f"{torch.cuda.get_device_name(device)} is older than Triton supports (compute capability < 7.0)"
    return ""


def choose(backend: str | None, device: torch.device, exact: bool, unet_config: dict | None = None) -> tuple[str, str]:
    """(backend, why): the one asked for (``requested``), else the rule's (``default``)."""
    return requested(backend, device) or default(device, exact, unet_config)


def requested(backend: str | None, device: torch.device) -> tuple[str, str] | None:
    """(backend, why) when one is asked for (``backend``, else ``$LATENTGEN_BACKEND``), checked against the device;
    None when none is: ``latentgen.load`` asks this before it reads the model, and ``default`` after."""
    if backend is None and not os.environ.get(ENV):
        return None
    backend, why = (backend, "as asked") if backend is not None else (os.environ[ENV], f"${ENV}")
    name = f"backend={backend!r} ({why})"
    unset = f" (or unset ${ENV})" if why.startswith("$") else ""
    if backend not in BACKENDS:
        raise ValueError(f"{name} is not supported; use one of {', '.join(map(repr, BACKENDS))}{unset}.")
    if backend in CPU_ONLY and device.type != "cpu":
        raise ValueError(f"{name} runs on the CPU, but the model is on {device}; use backend='torch'{unset}.")
    if backend in CUDA_ONLY and device.type != "cuda":
        raise ValueError(f"{name} runs on CUDA GPUs, but the model is on {device}; use backend='torch'"
                         + (" or 'openvino'" if device.type == "cpu" else "") + f"{unset}.")
    if backend == "openvino" and not available():
        raise ValueError(f"{name} needs the openvino package, and it does not import: `pip install openvino`, or use "
                         f"backend='torch'{unset}.")
    if backend == "openvino":
        cache.limit_bytes()  # a bad $LATENTGEN_CACHE_GB fails now, not after a conversion
    return backend, why


XL_TORCH = ("SDXL runs on torch on CUDA by default for now: its CUDA graphs (the pooled text and size numbers in "
            "buffers of their own) are not yet checked on a GPU (tests/benchmarks/check_cuda.py); backend='compile' "
            "or 'cudagraph' asks for them")


def for_model(backend: tuple[str, str] | None, unet_config: dict) -> tuple[str, str] | None:
    """``requested``'s answer for this U-Net: SDXL's CUDA graphs run when asked for by name (``backend=``), while a
    CUDA backend that ``$LATENTGEN_BACKEND`` names for every model gives way to torch, as the default does."""
    if backend is None or backend[1] == "as asked" or backend[0] not in CUDA_ONLY or \
            unet_config.get("addition_embed_type") != "text_time":
        return backend
    return "torch", f"{XL_TORCH}; over ${ENV}={backend[0]}"


def default(device: torch.device, exact: bool, unet_config: dict | None = None) -> tuple[str, str]:
    """(backend, why) by rule. On CUDA ``torch.compile``'s kernels as a CUDA graph, except where a graph of the
    eager kernels is the better deal: ``exact`` (``dtype="fp32"`` asked for: diffusers' numbers), a small U-Net
    (``unet_config``: under ``precision.WIDE`` channels, where a compile would never pay back its time) or no
    Triton. On CPUs OpenVINO where it is installed unless ``exact`` (then torch); torch elsewhere. SDXL on CUDA: torch
    unless a CUDA backend is asked for (``XL_TORCH``).
    """
    if device.type == "cuda" and unet_config is not None and unet_config.get("addition_embed_type") == "text_time":
        return "torch", XL_TORCH
    if device.type == "cuda":
        return _cuda_default(device, exact, precision.unet_width(unet_config))
    if device.type != "cpu":
        return "torch", f"{device.type}: torch kernels"
    if exact:
        return "torch", "fp32 asked for: torch, diffusers' arithmetic exactly"
    if not available():
        return "torch", "OpenVINO is not installed or does not import"
    return "openvino", "CPU: the U-Net compiled as one graph, faster than torch eager"


def _cuda_default(device: torch.device, exact: bool, width: int) -> tuple[str, str]:
    graph = "CUDA: the U-Net's eager kernels replayed as one CUDA graph per step"
    if exact:
        return "cudagraph", f"{graph} (fp32 asked for: diffusers' arithmetic exactly)"
    if width < precision.WIDE:
        return "cudagraph", f"{graph} (a small U-Net, {width} wide: compiling would not pay back its time)"
    if missing := compiler_missing(device):
        return "cudagraph", f"{graph} ({missing}, so torch.compile cannot run)"
    return "compile", ("CUDA: torch.compile's fused kernels replayed as one CUDA graph per step; the first call "
                       "per image size compiles (about a minute; seconds in later processes, from inductor's cache)")
