"""The NaN guard: non-finite numbers never become a black image.

Half precision overflows: SD's VAE decoder reaches activations above fp16's 65504 on some latents, and the
image comes out black (A1111's "NansException"; its fix is ``--no-half-vae``). A U-Net makes NaNs when
guidance is extreme, a LoRA is broken or scaled far out, or a checkpoint is damaged. So:

* after the denoising loop, latents (B, C, h, w) that are not all finite raise ``NonFiniteError`` naming
  the likely causes (``check_latents``);
* the VAE decode (``decode``) runs in the VAE's dtype; when a half-precision VAE (fp16) gives non-finite
  pixels, it is moved to fp32 for good (A1111's "automatically revert VAE to 32-bit floats") with a
  warning, and the latents are decoded again; non-finite pixels from an fp32 VAE raise.
"""

from __future__ import annotations

import warnings

import torch

from . import precision


class NonFiniteError(RuntimeError):
    """Latents or pixels became NaN or infinite."""


def check_latents(latents: torch.Tensor, *, guidance: float, loras: list[str], dtype: torch.dtype) -> None:
    """Raise ``NonFiniteError`` when the denoised latents (B, C, h, w) hold NaN or inf."""
    if torch.isfinite(latents).all():
        return
    bad = [i for i in range(latents.shape[0]) if not torch.isfinite(latents[i]).all()]
    causes = [f"guidance={guidance:g} may be too high (7.5 is usual; try <= 20)"] if abs(guidance) > 30 else []
    if loras:
        causes.append(f"a LoRA may be broken or its scale too large (loaded: {', '.join(loras)}; try "
                      f"pipe.set_lora_scale(name, 0.5) or pipe.unload_lora())")
    if dtype in (torch.float16, torch.bfloat16):
        causes.append(f"{str(dtype).removeprefix('torch.')} may overflow in this model: try dtype='fp32'")
    causes.append("the checkpoint's U-Net weights may be damaged (does another model work with these settings?)")
    raise NonFiniteError(f"the U-Net produced NaN/inf latents for image(s) {bad} of this batch, so there is no "
                         f"picture to decode. Likely causes: " + "; ".join(causes) + ".")


def decode(vae, z: torch.Tensor, *, tiled: bool = False) -> torch.Tensor:
    """``vae.decode`` of scaled latents z (B, C, h, w) -> pixels (B, 3, H, W) in about [-1, 1], all finite.

    ``tiled``: decode in overlapping tiles (diffusers' VAE tiling; less memory, seams blended)."""
    pixels = _decode(vae, z, tiled)
    if torch.isfinite(pixels).all():
        return pixels
    if precision.dtype_of(vae) == torch.float16:
        warnings.warn("the fp16 VAE overflowed (NaN/inf pixels, which would be a black image); it now runs in "
                      "fp32 for the rest of this pipeline's life (as A1111's --no-half-vae) and decoded again.",
                      RuntimeWarning, stacklevel=3)
        precision.cast(vae, vae.device, torch.float32)
        pixels = _decode(vae, z, tiled)
        if torch.isfinite(pixels).all():
            return pixels
    raise NonFiniteError(f"the VAE ({str(vae.dtype).removeprefix('torch.')}) decoded NaN/inf pixels from finite "
                         f"latents: its weights are likely damaged; try another VAE with vae='file.safetensors'.")


def _decode(vae, z: torch.Tensor, tiled: bool) -> torch.Tensor:
    z = z.to(precision.dtype_of(vae))
    if tiled and hasattr(vae, "tiled_decode"):  # a tiny VAE (64 channels) decodes whole
        return vae.tiled_decode(z).sample
    return vae.decode(z).sample
