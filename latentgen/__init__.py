"""latentgen: latent text-to-image diffusion (Stable Diffusion 1.x/2.x and SDXL) on diffusers components.

    import latentgen
    pipe = latentgen.load()                      # the embedded default model, offline, CPU or CUDA
    images = pipe.generate("a red circle on a blue background", seed=1, steps=20)

Heavy imports (torch, diffusers) happen on first use, not on ``import latentgen``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from .control.units import Control
    from .pipeline import Pipeline
    from .models.refiner import Refiner
    from .starts import Variation
    from .request import Stop
    from .text.xl import SizeCond
    from .upscale.hires import Hires

__version__ = "0.1.0"
__all__ = ["Control", "Hires", "Pipeline", "Refiner", "SizeCond", "Stop", "Variation", "generate", "load", "load_tiny_vae"]


def load(source: str | Path | None = None, *, device: "str | torch.device | None" = None,
         dtype: "str | torch.dtype | None" = None, vae: str | Path | None = None,
         prediction_type: str | None = None, backend: str | None = None,
         zero_terminal_snr: bool | None = None) -> "Pipeline":
    """Load a pipeline: the one entry. It checks the arguments, reads the model's configs (no weights yet),
    decides device, dtype and backend once from the U-Net's config (``pipe.placement``; ``repr(pipe)`` says
    which and why), then loads the weights there (``latentgen.models.loading``).

    source: a diffusers folder (``model_index.json`` and its subfolders), a single-file checkpoint
        in the LDM layout (``.safetensors``, ``.ckpt``, ``.pt``: SD 1.x, SD 1.x inpainting, SD 2.x;
        see ``latentgen.models.checkpoints``), a preset name from ``pipelines/`` (``"sd15"``, ``"sd2"``,
        ``"sd21"``, ``"tiny-random"``: random weights), or None for the embedded default model.
        Everything loads offline.
    device: "cuda" when available, else "cpu"; "cuda" without a GPU is refused, naming the fix.
    dtype: fp16 on CUDA; on CPU bf16 for SD-sized U-Nets where the CPU has native bf16, else fp32
        (``latentgen.precision``); "fp32" (or torch.float32) is diffusers' exact arithmetic.
    vae: a VAE file (LDM or diffusers layout) used instead of the model's own; or a tiny autoencoder (TAESD:
        ``taesd_decoder.safetensors`` or an ``AutoencoderTiny`` folder, see ``load_tiny_vae``), which then
        decodes (and, with its encoder, encodes) in a fraction of the time, a little blurrier.
    prediction_type: "epsilon" or "v_prediction" (SD 2.x 768), over what the model says; single
        files otherwise read it from ``<name>.yaml`` beside them, a ``v_pred`` tensor, their header, or detect it.
    zero_terminal_snr: True for a model trained on a zero-terminal-SNR noise schedule (v-prediction models such
        as NoobAI-XL V-Pred; A1111's "Zero Terminal SNR" noise schedule): its samplers' betas rescaled so the last
        timestep is pure noise, timesteps "trailing" (``latentgen.models.prediction.zero_snr``). Default: what the
        model says (its scheduler config; a single file's ``ztsnr`` tensor).
    backend: where the U-Net runs: "torch"; "openvino" (CPU: the U-Net converted once, cached on
        disk, ~2.7x faster on the embedded model); "cudagraph" (CUDA: the eager kernels replayed as one
        graph per step, the same numbers); "compile" (CUDA: ``torch.compile``'s fused kernels, graphed; the
        first call per image size, batch size and prompt length compiles). Default: ``$LATENTGEN_BACKEND``,
        else on CUDA "compile" for SD-sized U-Nets and "cudagraph" for small ones, with ``dtype="fp32"`` or
        where torch.compile cannot run (no Triton); on CPUs OpenVINO unless ``dtype="fp32"`` is asked for;
        see ``latentgen.backends.runtime``. ``repr(pipe)`` says which and why.
    """
    from .models.loading import load_components
    from .pipeline import Pipeline

    return Pipeline.from_components(load_components(source, device=device, dtype=dtype, vae=vae,
                                                    prediction_type=prediction_type, backend=backend,
                                                    zero_terminal_snr=zero_terminal_snr))


def load_tiny_vae(path: str | Path, *, device: "str | torch.device | None" = None,
                  dtype: "str | torch.dtype | None" = None):
    """A tiny autoencoder (TAESD, diffusers' ``AutoencoderTiny``) from a diffusers folder, one diffusers-layout
    file, or the published ``taesd_decoder`` / ``taesd_encoder`` files (``latentgen.vae.tiny``). Use it as
    ``pipe.vae = vae`` (decode and encode) or ``pipe.preview_vae = vae`` (live previews only)."""
    from . import precision
    from .vae import tiny

    return tiny.load(path, device=device, dtype=None if dtype is None else precision.as_dtype(dtype))


@lru_cache(maxsize=1)
def _default_pipeline() -> "Pipeline":
    return load()


def generate(prompt, **kwargs):
    """``Pipeline.generate`` on the default model, loaded once per process."""
    return _default_pipeline().generate(prompt, **kwargs)


def __getattr__(name: str):
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    if name == "Control":  # a ControlNet unit: ``latentgen.control.units.Control``
        from .control.units import Control

        return Control
    if name == "Hires":  # A1111's hires fix: ``latentgen.upscale.hires.Hires``
        from .upscale.hires import Hires

        return Hires
    if name == "Refiner":  # SDXL's refiner hand-over: ``latentgen.models.refiner.Refiner``
        from .models.refiner import Refiner

        return Refiner
    if name == "SizeCond":  # SDXL's size conditioning: ``latentgen.text.xl.SizeCond``
        from .text.xl import SizeCond

        return SizeCond
    if name == "Stop":  # raised by a callback: the drawing ends there (``latentgen.request.Stop``)
        from .request import Stop

        return Stop
    if name == "Variation":  # A1111's variation seed and seed resize: ``latentgen.starts.Variation``
        from .starts import Variation

        return Variation
    raise AttributeError(f"module 'latentgen' has no attribute {name!r}")
