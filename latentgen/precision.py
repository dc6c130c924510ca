"""The default number format and memory layout per device and model, measured rather than guessed.

Measured (tests/benchmarks/bench_txt2img.py, 2-core AMD EPYC with AVX512-BF16, torch 2.13 CPU):
  * SD 1.5 U-Net, 512x512, one CFG step (batch 2): fp32 ~10.3 s; bf16 ~6.2 s; bf16 + channels_last
    ~5.8 s. bf16 keeps fp32's exponent range, so nothing overflows; the images differ from fp32 by the
    rounding of the weights (PSNR in the README).
  * The embedded model (64-wide U-Net, 64x64 images): bf16 0.31 s per 20-step image, fp32 0.30 s: the
    time is per-op overhead, not arithmetic, so bf16 does not pay and fp32 stays exact.
So on a CPU with native bf16 (AVX512-BF16 or AMX) the default is bf16 with channels_last for U-Nets at
least ``WIDE`` channels wide (SD's are 320), fp32 otherwise; on CUDA, fp16 with channels_last. fp32
stays exactly diffusers' arithmetic: ``dtype="fp32"`` is the parity mode. ``Placement`` records what
``latentgen.load`` decided (device, dtype, backend), once, with why.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

WIDE = 192  # U-Net block_out_channels[0] from which bf16 wins on CPU (embedded: 64, SD 1.x/2.x: 320)
DTYPES = {"fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp32": torch.float32, "float32": torch.float32, "float": torch.float32}


@dataclass(frozen=True)
class Placement:
    """Where and how a loaded model runs, decided once by ``latentgen.load`` from the U-Net's config, each
    with the reason ``repr(pipe)`` shows."""

    device: torch.device
    dtype: torch.dtype
    dtype_why: str  # "the default here: <the rule>", or "as asked; the default here: <the rule>"
    backend: str  # where the U-Net runs: one of latentgen.backends.choice.BACKENDS
    backend_why: str


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (x86 flags avx512_bf16 or amx_bf16, read from Linux's
    /proc/cpuinfo). Elsewhere False: bf16 would be emulated, slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            return flags_have_bf16(f.read())
    except OSError:
        return False


def flags_have_bf16(cpuinfo: str) -> bool:
    """Whether the first "flags" line of /proc/cpuinfo text names a native bf16 instruction set."""
    line = next((ln for ln in cpuinfo.splitlines() if ln.startswith("flags")), "")
    return bool(set(line.partition(":")[2].split()) & {"avx512_bf16", "amx_bf16"})


def unet_width(unet_config: dict | None) -> int:
    """A U-Net's first block's channels (``block_out_channels[0]``); ``WIDE`` when the config is not known."""
    return (unet_config or {}).get("block_out_channels", [WIDE])[0]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device asked for, checked, or (None) CUDA when torch sees a GPU, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"device={device!r} is invalid: use 'cpu', 'cuda' or 'cuda:N' (a GPU's index), or leave "
                         f"it out to use a GPU when there is one.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} is invalid: torch {torch.__version__} sees no CUDA GPU here; use "
                         f"device='cpu', or leave it out.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device={str(device)!r} is invalid: torch sees {torch.cuda.device_count()} GPU(s); use "
                         f"'cuda:0' to 'cuda:{torch.cuda.device_count() - 1}'.")
    return device


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A dtype named as the user names it ("fp16", "bf16", "fp32", or the torch dtype), checked."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise ValueError(f"dtype={dtype!r} is not supported; use one of 'fp32', 'fp16', 'bf16'.")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device,
                  unet_config: dict | None = None) -> tuple[torch.dtype, str]:
    """(dtype, why): the one asked for, or (None) the fastest correct one for this device and U-Net
    (``default_dtype``: fp16 on CUDA, bf16 on CPUs with native bf16 for SD-sized U-Nets, fp32 otherwise)."""
    default, why = default_dtype(device, unet_config)
    chosen = default if dtype is None else as_dtype(dtype)
    return chosen, (f"the default here: {why}" if chosen == default else f"as asked; the default here: {why}")


def default_dtype(device: torch.device, unet_config: dict | None = None) -> tuple[torch.dtype, str]:
    """(dtype, why) for a model whose U-Net has ``unet_config`` on ``device``."""
    if device.type == "cuda":
        return torch.float16, "CUDA: fp16 kernels"
    if device.type != "cpu":
        return torch.float32, f"{device.type}: fp32"
    width = unet_width(unet_config)
    if not cpu_has_bf16():
        return torch.float32, "CPU without native bf16: fp32"
    if width < WIDE:
        return torch.float32, (f"CPU with native bf16, but a small U-Net ({width} wide < {WIDE}): "
                               f"fp32, as fast and exact")
    return torch.bfloat16, f"CPU with native bf16 and a {width}-wide U-Net: bf16 + channels_last"


def wants_channels_last(device: torch.device, dtype: torch.dtype) -> bool:
    """channels_last convolutions (oneDNN on CPU, cuDNN on CUDA) in the fast formats; fp32 keeps
    diffusers' own layout, so its arithmetic and images stay identical to diffusers'."""
    return dtype in (torch.bfloat16, torch.float16) and device.type in ("cpu", "cuda")


def use_fast_attention(unet) -> str:
    """xformers' memory-efficient attention on CUDA when it is installed (the ``[cuda]`` extra),
    otherwise torch's SDPA (diffusers' default processor). Returns the one in use."""
    if unet.device.type == "cuda":
        try:
            import xformers  # noqa: F401

            unet.enable_xformers_memory_efficient_attention()
            return "xformers"
        except Exception:  # not installed, or no kernel for this GPU: SDPA is as good on recent GPUs
            pass
    return "sdpa"


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a model's first parameter. diffusers' ``ModelMixin.device`` and ``.dtype`` walk every
    submodule for offload hooks (~1 ms on the U-Net, dozens of times per image): the loop uses these."""
    return next(module.parameters()).device


def dtype_of(module: torch.nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def describe(unet, vae, placement: Placement | None = None) -> str:
    """What runs and why, for ``repr(pipe)``: "bfloat16, channels_last (the default here: CPU with ...)". The
    reason is the one ``placement`` recorded at load while the U-Net keeps that dtype, else the rule's now."""
    parts = [str(unet.dtype).removeprefix("torch.")]
    if vae.dtype != unet.dtype:
        parts.append(f"VAE {str(vae.dtype).removeprefix('torch.')}")
    weight = next((p for p in unet.parameters() if p.dim() == 4), None)
    if weight is not None and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
        parts.append("channels_last")
    if placement is not None and placement.dtype == unet.dtype:
        return f"{', '.join(parts)} ({placement.dtype_why})"
    return f"{', '.join(parts)} ({resolve_dtype(unet.dtype, unet.device, dict(unet.config))[1]})"


def cast(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move ``model`` to device and dtype. diffusers' ``ModelMixin.to`` warns on any dtype cast that
    modules "should be kept in float32" even when that list is empty; its logger is quieted for
    the cast only in that case (a model that does keep fp32 modules still gets the warning)."""
    model.to(device)
    if model.dtype == dtype:
        return
    from diffusers.utils import logging as df_logging

    level = df_logging.get_verbosity()
    if not getattr(model, "_keep_in_fp32_modules", None):
        df_logging.set_verbosity_error()
    try:
        model.to(dtype)
    finally:
        df_logging.set_verbosity(level)
