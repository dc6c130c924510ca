"""The five SD components, where they come from and whether they fit together.

Sources, all offline:
  * a diffusers folder: ``model_index.json`` with ``tokenizer/``, ``text_encoder/``, ``unet/``,
    ``vae/`` and ``scheduler/`` subfolders, plus an optional ``latentgen.json`` of defaults;
  * a single-file checkpoint (``.safetensors``, ``.ckpt``, ``.pt``) in the LDM layout
    (``latentgen.models.checkpoints``);
  * a preset name from ``pipelines/`` (random weights, or the trained folder it names in ``weights/``).

Any of them takes a separate VAE file (``vae=``) and a prediction type (``prediction_type=``).

Configs are read and checked before any weight is loaded, so a bad folder fails in milliseconds.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .. import precision, schedulers
from ..text import xl as sdxl
from .presets import Defaults, Preset, data_dir, load_preset

# subfolder -> files that must be there (any one of each tuple)
_REQUIRED = {
    "tokenizer": (("tokenizer.json", "vocab.json"),),
    "text_encoder": (("config.json",), ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")),
    "unet": (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                                "diffusion_pytorch_model.safetensors.index.json")),
    "vae": (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
    "scheduler": (("scheduler_config.json",),),
}
_REQUIRED_XL = {"tokenizer_2": _REQUIRED["tokenizer"], "text_encoder_2": _REQUIRED["text_encoder"]}  # SDXL's second


@dataclass
class Components:
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler: SchedulerMixin  # the model's own; each call builds a fresh one from it
    defaults: Defaults
    name: str  # shown in PNG metadata as "Model: ..."
    inpaint_unet: Path | None = None  # a 9-channel U-Net folder the model's inpaint() runs (see Pipeline.inpaint)
    placement: precision.Placement | None = None  # device, dtype and backend as latentgen.load decided them
    xl: sdxl.XL | None = None  # SDXL's second text encoder and tokenizer (latentgen.text.xl); None for SD 1.x/2.x

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell: 8 for SD's four-level VAE."""
        return vae_scale_factor(self.vae.config)

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype


def vae_scale_factor(vae_config) -> int:
    """2 ** (VAE levels - 1): each level but the last halves the size."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def check_fit(unet: dict, vae: dict, text_encoder: dict, text_encoder_2: dict | None = None, *,
              refiner: bool = False) -> None:
    """Raise a ValueError naming the part that does not fit the others (SDXL: ``text_encoder_2`` too; an SDXL
    refiner: its one encoder as ``text_encoder``)."""
    if sdxl.is_xl(unet) != (text_encoder_2 is not None or refiner):
        raise ValueError("an SDXL U-Net (addition_embed_type 'text_time') needs the model's text_encoder_2, and only "
                         "it takes one: load the U-Net with the text encoders of its own model.")
    width = text_encoder["hidden_size"] + (text_encoder_2["hidden_size"] if text_encoder_2 else 0)
    if width != unet["cross_attention_dim"]:
        raise ValueError(
            f"text encoder width {width} != U-Net cross_attention_dim "
            f"{unet['cross_attention_dim']}: the text encoder and U-Net come from different models; "
            f"use a text encoder whose hidden_size is {unet['cross_attention_dim']}."
        )
    c = vae["latent_channels"]
    # 2c + 1: inpainting U-Nets also take the mask and the masked image's latents (SD-inpainting).
    if unet["in_channels"] not in (c, 2 * c + 1) or unet["out_channels"] != c:
        raise ValueError(
            f"VAE latent_channels={c} does not fit U-Net in_channels={unet['in_channels']} / "
            f"out_channels={unet['out_channels']}: the VAE and U-Net come from different models; "
            f"use a VAE with latent_channels={unet['out_channels']}."
        )


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def check_folder(folder: Path) -> None:
    """Raise FileNotFoundError naming every missing part of a diffusers folder."""
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {str(folder)!r} does not exist; pass a diffusers folder "
                                f"(with model_index.json) or a preset name.")
    missing = [] if (folder / "model_index.json").is_file() else ["model_index.json"]
    parts = {**_REQUIRED, **(_REQUIRED_XL if _is_xl_folder(folder) else {})}
    if is_refiner_folder(folder):  # bigG alone: no tokenizer/ nor text_encoder/
        parts = {k: v for k, v in parts.items() if k not in ("tokenizer", "text_encoder")}
    for sub, groups in parts.items():
        for names in groups:
            if not any((folder / sub / n).is_file() for n in names):
                missing.append(f"{sub}/{' or '.join(names)}")
    if missing:
        raise FileNotFoundError(
            f"model folder {str(folder)!r} is incomplete, missing: {', '.join(missing)}. "
            f"Save the full pipeline there (StableDiffusionPipeline.save_pretrained)."
        )


def _is_xl_folder(folder: Path) -> bool:  # model_index.json names a second text encoder
    index = folder / "model_index.json"
    return index.is_file() and (_read_json(index).get("text_encoder_2") or [None])[0] is not None


def is_refiner_folder(folder: Path) -> bool:
    """An SDXL refiner's folder (``StableDiffusionXLImg2ImgPipeline``'s): text_encoder_2 and no text_encoder."""
    index = folder / "model_index.json"
    return _is_xl_folder(folder) and not (_read_json(index).get("text_encoder") or [None])[0]


@contextmanager
def quiet_loading():
    """transformers 5 draws a "Loading weights" progress bar for every model it loads: a library
    loads quietly, so it is switched off here (and back on after) through transformers' own API."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def vae_dtype(c: Components, dtype: torch.dtype) -> torch.dtype:
    """The VAE's dtype under the model's ``dtype``. fp16 too (latentgen.guard.decode redoes an overflow in fp32),
    but SDXL's VAE overflows fp16 on most latents: when its config says ``force_upcast`` (diffusers' SDXL pipelines
    then decode in fp32; an fp16-fixed VAE such as madebyollin's says False), it stays fp32 from the start, as
    A1111's --no-half-vae, instead of a wasted fp16 decode and a warning on the first image."""
    if c.xl is not None and dtype == torch.float16 and c.vae.config.get("force_upcast", True):
        return torch.float32
    return dtype


def finish(c: Components, device: torch.device, dtype: torch.dtype) -> Components:
    """The parts frozen for inference, on ``device`` in ``dtype`` (channels_last where it is faster)."""
    for m in (c.text_encoder, c.unet, c.vae, *(c.xl.encoders() if c.xl else [])):
        m.requires_grad_(False).eval()
    precision.cast(c.text_encoder, device, dtype)
    for m in c.xl.encoders() if c.xl else []:
        precision.cast(m, device, dtype)
    precision.cast(c.unet, device, dtype)
    finish_vae(c, device, dtype)
    if precision.wants_channels_last(device, dtype):
        c.unet.to(memory_format=torch.channels_last)
    precision.use_fast_attention(c.unet)
    return c


def finish_vae(c: Components, device: torch.device, dtype: torch.dtype) -> None:
    """``c.vae`` frozen, on ``device`` in its dtype under the model's ``dtype`` (``vae_dtype``), channels_last where
    that is faster."""
    c.vae.requires_grad_(False).eval()
    precision.cast(c.vae, device, vae_dtype(c, dtype))
    if precision.wants_channels_last(device, dtype):
        c.vae.to(memory_format=torch.channels_last)


def from_folder(folder: str | Path, *, device: str | torch.device, dtype: str | torch.dtype,
                defaults: Defaults | None = None, name: str | None = None) -> Components:
    """A diffusers folder's parts on ``device`` in ``dtype`` (``latentgen.load`` decides both: ``Placement``)."""
    folder = Path(folder)
    check_folder(folder)
    unet_cfg, vae_cfg = _read_json(folder / "unet/config.json"), _read_json(folder / "vae/config.json")
    xl, refiner = _is_xl_folder(folder), is_refiner_folder(folder)
    if refiner:  # bigG alone, as its text_encoder
        check_fit(unet_cfg, vae_cfg, _read_json(folder / "text_encoder_2/config.json"), None, refiner=True)
    else:
        check_fit(unet_cfg, vae_cfg, _read_json(folder / "text_encoder/config.json"),
                  _read_json(folder / "text_encoder_2/config.json") if xl else None)
    device, dtype = torch.device(device), precision.as_dtype(dtype)
    if defaults is None:
        extra = folder / "latentgen.json"
        size = unet_cfg.get("sample_size", 64) * vae_scale_factor(vae_cfg)
        base = {"width": size, "height": size, **({"guidance": 5.0} if xl else {})}  # SDXL: diffusers' 5
        defaults = Defaults.from_dict({**base, **(_read_json(extra) if extra.is_file() else {})})
    with quiet_loading():
        parts = dict(unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype),
                     vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype),
                     **(_refiner_text(folder, dtype) if refiner else _text(folder, dtype, xl)))
    if xl:
        sdxl.check_unet(unet_cfg, parts["text_encoder"], parts["xl"])
    return finish(Components(
        **parts, scheduler=schedulers.from_config_dict(_read_json(folder / "scheduler/scheduler_config.json")),
        defaults=defaults, name=name or folder.name), device, dtype)


def _text(folder: Path, dtype, xl: bool) -> dict:
    """A folder's tokenizer and text encoder, and SDXL's second ones (``xl``)."""
    parts = dict(tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"),
                 text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=dtype))
    if xl:
        zeros = _read_json(folder / "model_index.json").get("force_zeros_for_empty_prompt", True)
        parts["xl"] = sdxl.XL(CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
                              CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2", dtype=dtype),
                              force_zeros=zeros)
    return parts


def _refiner_text(folder: Path, dtype) -> dict:
    """An SDXL refiner's text side: its one encoder (bigG, with the projection) as ``text_encoder``, and the
    aesthetic scores its U-Net takes as a fifth size number (``latentgen.text.xl``). The refiner then draws alone
    (img2img, as diffusers' refiner pipeline) or after a base model (``latentgen.Refiner``)."""
    index = _read_json(folder / "model_index.json")
    return dict(tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
                text_encoder=CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2", dtype=dtype),
                xl=sdxl.XL(None, None, force_zeros=index.get("force_zeros_for_empty_prompt", False),
                           aesthetic=(6.0, 2.5) if index.get("requires_aesthetics_score", True) else None))


def from_preset(preset: Preset, *, device: str | torch.device, dtype: str | torch.dtype, seed: int = 0) -> Components:
    """Build a preset: its trained folder when it names one, else random weights seeded by ``seed``."""
    if preset.weights is not None:
        c = from_folder(data_dir("weights") / preset.weights, device=device, dtype=dtype,
                        defaults=preset.defaults, name=preset.name)
        if preset.inpainting is not None:
            c.inpaint_unet = data_dir("weights") / preset.inpainting / "unet"
        return c
    check_fit(preset.unet, preset.vae, preset.text_encoder, preset.text_encoder_2)
    device, dtype = torch.device(device), precision.as_dtype(dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**preset.text_encoder))
        unet = UNet2DConditionModel.from_config(preset.unet)
        vae = AutoencoderKL.from_config(preset.vae)
        xl = None if preset.text_encoder_2 is None else sdxl.XL(
            CLIPTokenizer.from_pretrained(preset.tokenizer_dir, **preset.tokenizer_2_options),
            CLIPTextModelWithProjection(CLIPTextConfig(**preset.text_encoder_2)))
    return finish(Components(
        tokenizer=CLIPTokenizer.from_pretrained(preset.tokenizer_dir, **preset.tokenizer_options),
        text_encoder=text_encoder,
        unet=unet,
        vae=vae,
        scheduler=schedulers.make(preset.defaults.scheduler or "ddim", preset.scheduler),
        defaults=preset.defaults,
        name=preset.name,
        xl=xl,
    ), device, dtype)


def load_unet(folder, like: UNet2DConditionModel) -> UNet2DConditionModel:
    """A U-Net folder (config.json + safetensors) on ``like``'s device, dtype and memory format (a U-Net: itself)."""
    if isinstance(folder, UNet2DConditionModel):
        return folder
    with quiet_loading():
        unet = UNet2DConditionModel.from_pretrained(folder, torch_dtype=like.dtype).to(like.device).eval()
    if like.conv_in.weight.is_contiguous(memory_format=torch.channels_last):
        unet = unet.to(memory_format=torch.channels_last)
    return unet


def folder_like(source, path: Path) -> bool:
    return path.is_dir() or path.is_absolute() or str(source).startswith(".") or len(path.parts) > 1


def part_configs(source, path: Path) -> tuple[dict, dict, dict]:
    """(unet, vae, text encoder) configs of a folder or preset, read without loading weights."""
    if source is not None and folder_like(source, path):
        check_folder(path)
        text = "text_encoder_2" if is_refiner_folder(path) else "text_encoder"  # a refiner's one encoder
        return tuple(_read_json(path / part / "config.json") for part in ("unet", "vae", text))
    preset = load_preset("default" if source is None else str(source))
    if preset.weights is not None:
        return part_configs(preset.weights, data_dir("weights") / preset.weights)
    return preset.unet, preset.vae, preset.text_encoder
