"""Loading a model from whatever the user holds: a diffusers folder, a preset, the embedded model
(``latentgen.components``), or a single-file checkpoint (``latentgen.checkpoints`` reads it,
``latentgen.single_file`` builds it); optionally with a separate VAE file and a prediction type.
``latentgen.load`` is this, wrapped in a ``Pipeline``."""

from __future__ import annotations

from pathlib import Path

from . import checkpoints, components, ldm, prediction, single_file
from .components import Components


def swap_vae(c: Components, vae_file) -> Components:
    """``c`` with the VAE of ``vae_file`` (a ``checkpoints.read_vae`` result), on c's device and dtype."""
    from dataclasses import replace

    cfg = {**c.vae.config, **ldm.vae_sizes(vae_file.part(ldm.VAE))}
    vae = single_file.build_vae(vae_file, cfg, c.unet.dtype)
    return components.finish(replace(c, vae=vae), c.unet.device, c.unet.dtype)


def load(source: str | Path | None, *, device=None, dtype=None, vae: str | Path | None = None,
         prediction_type: str | None = None) -> components.Components:
    """Components from a diffusers folder, a single-file checkpoint, a preset name, or (None) the
    embedded default model. ``vae``: a VAE file used instead of the model's own; ``prediction_type``:
    'epsilon' or 'v_prediction' over what the model says (single files: see ``latentgen.prediction``)."""
    kind = prediction.normalize(prediction_type)
    vae_file = checkpoints.read_vae(vae) if vae is not None else None  # a bad VAE file fails first
    path = Path(source) if source is not None else Path()
    single = path.is_file() or path.suffix.lower() in checkpoints.SUFFIXES
    if source is not None and not path.is_dir() and single:
        return single_file.build(checkpoints.read(path), device=device, dtype=dtype, vae=vae_file,
                                 prediction_type=kind)
    if vae_file is not None:  # does it fit? before any weight is loaded
        unet_cfg, vae_cfg, text_cfg = components.part_configs(source, path)
        single_file.fit_vae(unet_cfg, {**vae_cfg, **ldm.vae_sizes(vae_file.part(ldm.VAE))}, text_cfg, vae_file)
    c = components.load(source, device=device, dtype=dtype)
    if vae_file is not None:
        c = swap_vae(c, vae_file)
    if kind is not None:
        c.scheduler = type(c.scheduler).from_config(c.scheduler.config, prediction_type=kind)
    return c
