"""Memory plan and limits, decided from the request and the device before any model runs.

Peak memory above the loaded weights grows with the pixels of the image. Measured on SD 1.5's parts
(random weights, CPU, peak RSS above the baseline; tests/benchmarks/bench_txt2img.py reports the peaks
of whole calls):
  * VAE decoder: 768 elements per output pixel per image (3072 B/px in fp32, 1536 in bf16, the same at
    256, 512 and 768 px) for SD's 128-channel full-resolution level; it scales with that width.
  * U-Net: about 620 elements per output pixel per image of a CFG pair (2466 B/px fp32 at 256 px).
The plan decodes in VAE tiles (diffusers' tiling: 512 px tiles with blended seams, images differ slightly)
only when a whole decode would not fit, and decodes fewer images at once (slicing) when a batch would
not. ``Limits`` refuses at once what cannot fit: ``num_images`` whose pictures would not fit in memory,
images whose U-Net step would not, and more steps than every sampler can take from the model's
training timesteps (``max_sampler_steps``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import precision
from .images import MAX_INPUT_PIXELS

VAE_ELEMENTS_PER_PIXEL = 768  # SD's VAE decoder, 128 channels at full resolution
UNET_ELEMENTS_PER_PIXEL = 620  # SD's 320-wide U-Net, one image of a CFG pair
SHARE = 0.6  # of the free memory a call plans to use for the models' work
IMAGES_SHARE = 0.25  # of the free memory the images a call returns may take
IMAGE_OVERHEAD = 4096  # bytes of one returned PIL image besides its pixels (object, PNG parameters text)


@dataclass
class Limits:
    """What one call may ask for (``pipe.limits``). None: computed from the free memory at call time."""

    max_images: int | None = None  # images one call returns (each held in memory: width * height * 3 bytes)
    max_pixels: int | None = None  # width * height of one generated image
    max_steps: int | None = None  # denoising steps; None: what every sampler runs (998 of SD's 1000 timesteps)
    max_input_pixels: int = MAX_INPUT_PIXELS  # width * height of an img2img/inpaint input; larger: downscale it
    max_side: int = 8192  # pixels of a side: past it a call would run for many minutes, or hours, on any machine
    vae_tiling: bool | None = None  # decode in tiles; None: only when a whole decode would not fit
    vae_batch: int | None = None  # images the VAE decodes at once; None: as many as fit


@dataclass(frozen=True)
class Plan:
    vae_tiling: bool
    vae_batch: int  # images per VAE decode (slicing when below the batch size)


def free_bytes(device: torch.device) -> int:
    """Memory free for a call now: on CUDA the device's free memory plus what torch's allocator holds
    unused (its cache, reused before it asks the device for more), else the system's available RAM."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    import psutil

    return psutil.virtual_memory().available


def _elem(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def vae_bytes(vae, pixels: int) -> int:
    """Peak bytes of one image's VAE decode of ``pixels`` output pixels."""
    width = vae.config.block_out_channels[0] / 128
    return int(VAE_ELEMENTS_PER_PIXEL * width * pixels * _elem(precision.dtype_of(vae)))


def unet_bytes(unet, pixels: int, images: int, cfg: bool) -> int:
    """Peak bytes of one U-Net call on ``images`` images (twice as many inputs with CFG)."""
    width = unet.config.block_out_channels[0] / 320
    return int(UNET_ELEMENTS_PER_PIXEL * width * pixels * images * (2 if cfg else 1) * _elem(precision.dtype_of(unet)))


def plan(vae, limits: Limits, *, width: int, height: int, batch: int) -> Plan:
    """VAE tiling and slicing for ``batch`` images of width x height, from the free memory now."""
    budget = SHARE * free_bytes(precision.device_of(vae))  # the U-Net's activations are gone by decode time
    one = vae_bytes(vae, width * height)
    tiling = limits.vae_tiling if limits.vae_tiling is not None else one > budget
    tile = vae_bytes(vae, min(width * height, 512 * 512)) if tiling else one
    fits = max(1, int(budget // max(tile, 1)))
    return Plan(bool(tiling), limits.vae_batch or min(batch, fits))


def max_sampler_steps(train_steps: int) -> int:
    """The most steps every sampler of ``latentgen.schedulers`` runs: 2 fewer than the training timesteps.
    At train_steps - 1 DPM++ 2M (SDE) and UniPC give NaN, at train_steps DDIM, PNDM, DDPM, LMS and Euler
    step past the last timestep (IndexError, NaN); tests/test_memory.py runs every sampler at the bound."""
    return max(1, train_steps - 2)


def check(limits: Limits, unet, *, num_images: int, steps: int, width: int, height: int, batch: int, cfg: bool,
          train_steps: int) -> None:
    """Refuse, before any model runs, a call whose images, size or steps this machine cannot hold; each
    error gives the number that fits and how to raise the bound."""
    free, ram = free_bytes(precision.device_of(unet)), free_bytes(torch.device("cpu"))  # images sit in RAM
    max_steps = limits.max_steps or max_sampler_steps(train_steps)
    if steps > max_steps and limits.max_steps:
        raise ValueError(f"steps={steps} is more than pipe.limits.max_steps={max_steps}; use steps <= {max_steps}, "
                         f"or raise pipe.limits.max_steps.")
    if steps > max_steps:
        raise ValueError(f"steps={steps} is more than this model's {train_steps} training timesteps allow (every "
                         f"sampler works up to {max_steps}); use steps <= {max_steps} (20-50 is usual), or raise "
                         f"pipe.limits.max_steps.")
    if max(width, height) > limits.max_side:
        raise ValueError(f"{width}x{height} has a side above pipe.limits.max_side={limits.max_side} pixels; ask for a "
                         f"smaller size (SD 1.x draws best near 512, SD 2.x near 768), or raise pipe.limits.max_side.")
    held = width * height * 3 + IMAGE_OVERHEAD  # one RGB image kept in memory until the call returns
    max_images = limits.max_images or max(1, int(IMAGES_SHARE * ram // held))
    if num_images > max_images:
        raise ValueError(f"num_images={num_images} would hold {num_images * held / 2**30:.1f} GiB of images in "
                         f"memory; {max_images} images of {width}x{height} fit in a quarter of the "
                         f"{ram / 2**30:.1f} GiB of RAM free. Ask "
                         f"for at most {max_images}, use `latentgen batch` (images stream to disk), or set "
                         f"pipe.limits.max_images.")
    per_pixel = unet_bytes(unet, 1, batch, cfg)
    max_pixels = limits.max_pixels or int(SHARE * free // max(per_pixel, 1))
    if width * height > max_pixels:
        side = int(max_pixels ** 0.5) // 64 * 64
        raise ValueError(f"{width}x{height} needs about {per_pixel * width * height / 2**30:.1f} GiB for one U-Net "
                         f"step of {batch} image(s) and {free / 2**30:.1f} GiB are free: at most {max_pixels} "
                         f"pixels fit (about {side}x{side}); ask for a smaller size or batch_size, or set "
                         f"pipe.limits.max_pixels.")


def give_back() -> None:
    """Return freed memory to the OS after a large temporary (an OpenVINO conversion's float32 copy of the U-Net:
    10 GiB for SDXL): collect cycles, then ask glibc to trim its heap (``malloc_trim``), which otherwise keeps
    the freed small blocks of thousands of weight tensors and lets the next big allocation go past RAM. A no-op
    where glibc is not the allocator."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def conversion_bytes(module: torch.nn.Module) -> int:
    """RAM an OpenVINO conversion of ``module`` takes at its peak beyond what is already held (measured on SDXL's
    2.6B-parameter U-Net in bf16: +11.3 GiB while tracing its float32 twin, 4.4 bytes a parameter; a float32 model
    is traced as it is and compiles to float32): 4.5 bytes a parameter, 4 for float32."""
    params = sum(p.numel() for p in module.parameters())
    return int(params * (4.0 if precision.dtype_of(module) == torch.float32 else 4.5))
