"""Loading a model from whatever the user holds, in one place: a diffusers folder, a preset, the embedded
model (``latentgen.models.components``), or a single-file checkpoint (``latentgen.models.checkpoints`` reads it,
``latentgen.models.single_file`` builds it, ``latentgen.models.xl_file`` for SDXL); optionally with a separate VAE
file and a prediction type.

``load_components`` runs in four steps: the arguments are checked; the source's configs are read, without
weights; device, dtype and backend are decided once, from the U-Net's config (``precision.Placement``, each with
why); the parts are built there. ``latentgen.load`` wraps the result in a ``Pipeline``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .. import files, precision
from ..backends import choice
from . import checkpoints, components, ldm, prediction, single_file, xl_file
from .components import Components
from .presets import load_preset
from ..text import xl as sdxl
from ..vae import tiny


def load_components(source: str | Path | None = None, *, device=None, dtype=None, vae: str | Path | None = None,
                    prediction_type: str | None = None, backend: str | None = None,
                    zero_terminal_snr: bool | None = None) -> Components:
    """The parts of a model (arguments as ``latentgen.load``'s), with ``placement``: what was decided and why."""
    # 1. the arguments, checked before anything is read
    device = precision.resolve_device(device)
    asked = None if dtype is None else precision.as_dtype(dtype)
    backend = choice.requested(backend, device)
    kind = prediction.normalize(prediction_type)
    if zero_terminal_snr not in (None, True, False):
        raise ValueError(f"zero_terminal_snr={zero_terminal_snr!r} is invalid: use True, False or None (the model's).")
    small = vae is not None and tiny.is_tiny(vae)  # a TAESD file or folder
    vae_file = checkpoints.read_vae(vae) if vae is not None and not small else None  # a bad VAE file fails first
    # 2. what the source is, and its U-Net's config, read without weights
    path = Path(source) if source is not None else Path()
    single = source is not None and not path.is_dir() and (path.is_file() or path.suffix.lower() in checkpoints.SUFFIXES)
    if single:
        ck = checkpoints.read(path)
        reader = xl_file if xl_file.is_xl(ck.shapes) else single_file  # SDXL's layout, or SD 1.x/2.x's
        kind = kind or ("v_prediction" if prediction.MARKERS[0] in ck.shapes else None)  # v_pred: NoobAI's marker
        if zero_terminal_snr is None and prediction.MARKERS[1] in ck.shapes:  # ztsnr: its zero terminal SNR
            zero_terminal_snr = True
        arch = reader.architecture(ck, vae=vae_file)
        unet_config = arch.unet
    else:
        unet_config, vae_config, _ = components.part_configs(source, path)
        if vae_file is not None:  # does it fit? before any weight is loaded (the folder's own parts: from_folder)
            fit_vae(unet_config, {**vae_config, **ldm.vae_sizes(vae_file.part(ldm.VAE))}, vae_file)
    # 3. device, dtype and backend, decided once
    backend = choice.for_model(backend, unet_config)  # SDXL: $LATENTGEN_BACKEND's CUDA graphs give way to torch
    dtype, dtype_why = precision.resolve_dtype(asked, device, unet_config)
    name, why = backend or choice.default(device, asked == torch.float32, unet_config)
    place = precision.Placement(device, dtype, dtype_why, name, why)
    # 4. the parts, built there
    if single:
        c = reader.build(ck, arch, device=device, dtype=dtype, vae=vae_file, prediction_type=kind)
        if vae_file is not None:
            c.vae.infotext = vae_fields(vae_file.path)
        c = replace(with_tiny_vae(c, vae) if small else c, placement=place)
        return c if zero_terminal_snr is None else replace(c, scheduler=prediction.zero_snr(c.scheduler,
                                                                                              zero_terminal_snr))
    if source is None or not components.folder_like(source, path):
        c = components.from_preset(load_preset("default" if source is None else str(source)), device=device,
                                   dtype=dtype)
    else:
        c = components.from_folder(path, device=device, dtype=dtype)
    if vae_file is not None:
        c = swap_vae(c, vae_file)
    if small:
        c = with_tiny_vae(c, vae)
    if kind is not None:
        c.scheduler = type(c.scheduler).from_config(c.scheduler.config, prediction_type=kind)
    if zero_terminal_snr is not None:
        c.scheduler = prediction.zero_snr(c.scheduler, zero_terminal_snr)
    return replace(c, placement=place)


def swap_vae(c: Components, vae_file) -> Components:
    """``c`` with the VAE of ``vae_file`` (a ``checkpoints.read_vae`` result), on c's device and dtype; the VAE
    carries its PNG fields (``vae_fields``) as ``infotext``."""
    cfg = {**c.vae.config, **ldm.vae_sizes(vae_file.part(ldm.VAE))}
    fit_vae(c.unet.config, cfg, vae_file)
    vae = single_file.build_vae(vae_file, cfg, c.unet.dtype)
    vae.infotext = vae_fields(vae_file.path)
    c = replace(c, vae=vae)
    components.finish_vae(c, c.unet.device, c.unet.dtype)
    return c


def fit_vae(unet: dict, cfg: dict, vae_file) -> None:
    """A VAE file's config ``cfg`` fits the U-Net's latents (SD 1.x/2.x and SDXL alike), else a ValueError naming it."""
    c = cfg["latent_channels"]
    if unet["in_channels"] not in (c, 2 * c + 1) or unet["out_channels"] != c:
        raise ValueError(f"vae={vae_file.path.name}: VAE latent_channels={c} does not fit U-Net in_channels="
                         f"{unet['in_channels']} / out_channels={unet['out_channels']}: use a VAE of the model's "
                         f"family (latent_channels={unet['out_channels']}).")


def vae_for(pipe, path) -> torch.nn.Module:
    """The VAE of a VAE file (A1111's "SD VAE") for a loaded pipeline, checked to fit it, on its device and dtype,
    with its PNG fields; the pipeline is not changed (the server swaps it in for a job). A pipeline whose own VAE is
    a tiny one is refused: the file's VAE would take the tiny VAE's config (its scaling factor)."""
    if tiny.is_loaded(pipe.vae):
        raise ValueError(f"{pipe.name!r} was loaded with a tiny VAE (vae=taesd...): a VAE file needs the model's own "
                         f"full VAE config; load the model without the tiny VAE.")
    c = Components(pipe.tokenizer, pipe.text_encoder, pipe.unet, pipe.vae, pipe.scheduler, pipe.defaults, pipe.name,
                   xl=pipe.xl)
    return swap_vae(c, checkpoints.read_vae(path)).vae


def vae_fields(path) -> dict:
    """A1111's PNG fields of a VAE file: "VAE hash" (its sha256's first 10 hex digits) and "VAE" (its file name)."""
    return {"VAE hash": files.sha256(path)[:10], "VAE": Path(path).name}


def with_tiny_vae(c: Components, path) -> Components:
    """``c`` with the tiny autoencoder at ``path`` as its VAE, on c's device and the model's dtype (TAESD does not
    overflow fp16, so it does not follow an SDXL VAE kept in fp32); its latent channels must be the U-Net's."""
    vae = tiny.load(path, device=c.vae.device, dtype=c.unet.dtype)
    if vae.config.latent_channels != c.vae.config.latent_channels:
        raise ValueError(f"vae={str(path)!r} is a tiny VAE for {vae.config.latent_channels}-channel latents; this "
                         f"model's are {c.vae.config.latent_channels}: use the tiny VAE of its family (taesd for SD "
                         f"1.x/2.x, taesdxl for SDXL).")
    return replace(c, vae=vae)


def xl_kind(source) -> str | None:
    """"base" or "refiner" for an SDXL folder, preset or single file, None for SD 1.x/2.x, from configs and
    file headers alone: commands that do not take SDXL refuse it before any weight is loaded."""
    path = Path(source) if source is not None else Path()
    if path.is_file():
        shapes = checkpoints.read(path).shapes
        return None if not xl_file.is_xl(shapes) else "refiner" if xl_file.is_refiner(shapes) else "base"
    if not sdxl.is_xl(components.part_configs(source, path)[0]):
        return None
    return "refiner" if path.is_dir() and components.is_refiner_folder(path) else "base"
