"""Export: any model latentgen loads, written as one LDM-layout ``.safetensors`` file (the layout
A1111 and ComfyUI open), with a header that makes ``latentgen.load`` of it exact.

    latentgen export runs/default/model default.safetensors

Key names are the inverse of diffusers' ``convert_ldm_*`` functions (``latentgen.models.ldm``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import ldm, loading, prediction, xl_file
from .checkpoints import HEADER
from .. import precision
from ..files import atomic_path
from ..schedulers import SAMPLERS


# -- export ----------------------------------------------------------------------------------
def _sampler_name(scheduler) -> str | None:
    return next((n for n, s in SAMPLERS.items() if type(scheduler) is s.cls
                 and all(scheduler.config.get(k) == v for k, v in s.options.items())), None)


def _config(model) -> dict:
    """A model's config as plain JSON data, without class names or private entries."""
    cfg = model.config.to_diff_dict() if hasattr(model.config, "to_diff_dict") else dict(model.config)
    drop = {"architectures", "transformers_version", "model_type", "dtype", "torch_dtype"}
    return json.loads(json.dumps({k: v for k, v in cfg.items() if not k.startswith("_") and k not in drop}))


def header(c) -> dict[str, str]:
    """Header entries of an exported file: ModelSpec's architecture and prediction type (read by
    kohya's scripts and latentgen) and latentgen's configs, which make the round trip exact."""
    from dataclasses import asdict

    pred = c.scheduler.config.get("prediction_type", "epsilon")
    sd2 = c.text_encoder.config.hidden_act == "gelu"  # OpenCLIP; SD 1.x's CLIP ViT-L uses quick_gelu
    arch = ("stable-diffusion-v2-768-v" if pred == "v_prediction" else "stable-diffusion-v2-512") if sd2 \
        else "stable-diffusion-v1"
    if c.xl is not None:
        arch = xl_file.REFINER_ARCHITECTURE if c.xl.refiner else xl_file.ARCHITECTURE
    configs = {"unet": _config(c.unet), "vae": _config(c.vae), "text_encoder": _config(c.text_encoder),
               "scheduler": _config(c.scheduler),
               "defaults": {**asdict(c.defaults), "scheduler": c.defaults.scheduler or _sampler_name(c.scheduler)},
               "tokenizer": {"pad_token": str(c.tokenizer.pad_token)}}
    if c.xl is not None and not c.xl.refiner:  # SDXL's second text encoder and its tokenizer
        configs.update(text_encoder_2=_config(c.xl.text_encoder_2), tokenizer_2={"pad_token": str(c.xl.tokenizer_2.pad_token)})
    return {"modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": arch, "modelspec.title": c.name,
            "modelspec.prediction_type": "v" if pred == "v_prediction" else "epsilon",
            "modelspec.resolution": f"{c.defaults.width}x{c.defaults.height}", HEADER: json.dumps(configs)}


def ldm_state_dict(c) -> dict[str, torch.Tensor]:
    """All tensors of ``c`` (a Components record) under their LDM names (SDXL: ``xl_file.to_ldm``)."""
    if c.xl is not None:
        return xl_file.to_ldm(c)
    open_clip = c.text_encoder.config.hidden_act == "gelu"
    return {**ldm.unet_to_ldm(c.unet.state_dict(), c.unet.config),
            **ldm.vae_to_ldm(c.vae.state_dict(), c.vae.config),
            **ldm.text_to_ldm(c.text_encoder.state_dict(), open_clip)}


def export(source, out: str | Path, *, force: bool = False, dtype: str | torch.dtype | None = None,
           vae: str | Path | None = None, prediction_type: str | None = None, loras: list | tuple = (),
           zero_terminal_snr: bool | None = None) -> Path:
    """Write what ``latentgen.load(source, vae=..., prediction_type=...)`` gives as one LDM-layout
    ``.safetensors`` file, atomically; an existing ``out`` is replaced only with ``force``.

    zero_terminal_snr: as ``latentgen.load``'s. A v-prediction model gets the empty ``v_pred`` tensor, a
    zero-terminal-SNR one ``ztsnr``, the markers ComfyUI reads (``latentgen.models.prediction``).
    loras: (path, scale) pairs (a scale: a number or per part, ``latentgen.lora.adapters.check_scale``) baked into
    the weights, as kohya's ``merge_lora.py`` does: the file draws what the model draws with those LoRAs loaded.

    dtype: of the tensors written (default: as loaded, fp32); "fp16" halves the file, as the
    shared SD files are. SD 2.x text encoders are written as the 23 OpenCLIP blocks SD 2 uses
    (OpenCLIP's unused last block and text projection are not in a diffusers model to write)."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"output {str(out)!r} must end in .safetensors: latentgen writes safetensors only "
                         f"(a pickle could carry code).")
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force (force=True) to replace it.")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder {str(out.parent)!r} does not exist; create it first.")
    cast = None if dtype is None else precision.as_dtype(dtype)
    c = loading.load_components(source, device="cpu", dtype="fp32", vae=vae, prediction_type=prediction_type,
                                backend="torch", zero_terminal_snr=zero_terminal_snr)
    if loras:
        from ..lora.adapters import LoraAdapters

        adapters = LoraAdapters({"unet": c.unet, "text_encoder": c.text_encoder,
                                 **({"text_encoder_2": c.xl.text_encoder_2} if c.xl and not c.xl.refiner else {})})
        for path, scale in loras:
            adapters.load(path, scale=scale)
        adapters.bake()
    tensors = {k: (v if cast is None else v.to(cast)).contiguous() for k, v in ldm_state_dict(c).items()}
    sched = c.scheduler.config  # the markers ComfyUI (and latentgen) read: v-prediction, zero terminal SNR
    tensors.update({m: torch.tensor([]) for m, on in zip(prediction.MARKERS, (
        sched.get("prediction_type") == "v_prediction", bool(sched.get("rescale_betas_zero_snr")))) if on})
    with atomic_path(out, overwrite=force) as tmp:
        save_file(tensors, str(tmp), metadata=header(c))
    return out
