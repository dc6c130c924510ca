"""The default number format and memory layout per device and model, measured rather than guessed.

Measured (tests/benchmarks/bench_txt2img.py, 2-core AMD EPYC with AVX512-BF16, torch 2.13 CPU):
  * SD 1.5 U-Net, 512x512, one CFG step (batch 2): fp32 ~10.3 s; bf16 ~6.2 s; bf16 + channels_last
    ~5.8 s. bf16 keeps fp32's exponent range, so nothing overflows; the images differ from fp32 by the
    rounding of the weights (PSNR in the README).
  * The embedded model (64-wide U-Net, 64x64 images): bf16 0.31 s per 20-step image, fp32 0.30 s: the
    time is per-op overhead, not arithmetic, so bf16 does not pay and fp32 stays exact.
So on a CPU with native bf16 (AVX512-BF16 or AMX) the default is bf16 with channels_last for U-Nets at
least ``WIDE`` channels wide (SD's are 320), fp32 otherwise; on CUDA, fp16 with channels_last. fp32
stays exactly diffusers' arithmetic: ``dtype="fp32"`` is the parity mode.
"""

from __future__ import annotations

import functools

import torch

WIDE = 192  # U-Net block_out_channels[0] from which bf16 wins on CPU (embedded: 64, SD 1.x/2.x: 320)


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


def describe(unet, vae) -> str:
    """What runs and why, for ``repr(pipe)``: "bfloat16, channels_last (the default here: CPU with ...)"."""
    parts = [str(unet.dtype).removeprefix("torch.")]
    if vae.dtype != unet.dtype:
        parts.append(f"VAE {str(vae.dtype).removeprefix('torch.')}")
    weight = next((p for p in unet.parameters() if p.dim() == 4), None)
    if weight is not None and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
        parts.append("channels_last")
    dtype, why = default_dtype(unet.device, dict(unet.config))
    if dtype == unet.dtype:
        return f"{', '.join(parts)} (the default here: {why})"
    return f"{', '.join(parts)} (as asked; the default here: {why})"
