"""Samplers and options by A1111's names: ``/sdapi/v1/samplers``, ``/schedulers``, ``/options``."""

from __future__ import annotations

from .errors import ApiError


def sampler_list() -> list[dict]:
    """A1111's ``GET /sdapi/v1/samplers``: its names, latentgen's as aliases."""
    from latentgen.schedulers import SAMPLERS

    return [{"name": s.label, "aliases": [key],
             "options": {"scheduler": "karras"} if s.options.get("use_karras_sigmas") else {}}
            for key, s in SAMPLERS.items()]


SCHEDULERS = [{"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1.0, "need_inner_model": False},
              {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False}]


def sampler_key(name: str | None, scheduler: str | None = None) -> str | None:
    """A1111's sampler name (``"DPM++ 2M Karras"``, or ``"DPM++ 2M"`` with ``scheduler="karras"``) or a
    latentgen name (``"dpm++2m_karras"``) -> latentgen's name; None: the model's default."""
    from latentgen.schedulers import SAMPLERS

    sched = (scheduler or "automatic").strip().lower()
    if sched not in ("automatic", "karras"):
        raise ApiError(422, f"scheduler {scheduler!r} is not available: use 'automatic' (the sampler's own "
                            f"schedule) or 'karras'.")
    if not name:
        if sched == "karras":
            raise ApiError(422, "scheduler 'karras' needs a sampler_name, such as 'DPM++ 2M'.")
        return None
    by_label = {s.label.lower(): k for k, s in SAMPLERS.items()}
    key = name if name in SAMPLERS else by_label.get(name.strip().lower())
    if key is None:  # A1111 answers 404 "Sampler not found"
        raise ApiError(404, f"Sampler not found: {name!r}; use one of: {', '.join(s.label for s in SAMPLERS.values())} "
                            f"(GET /sdapi/v1/samplers).")
    if sched == "karras" and not key.endswith("_karras"):
        if key + "_karras" not in SAMPLERS:
            raise ApiError(422, f"sampler {SAMPLERS[key].label!r} has no Karras schedule here; with scheduler "
                                f"'karras' use one of: "
                                f"{', '.join(s.label.removesuffix(' Karras') for k, s in SAMPLERS.items() if k.endswith('_karras'))}.")
        key += "_karras"
    return key


OPTIONS = {  # A1111 option names this server knows, with their defaults; sd_model_checkpoint is added live
    "CLIP_stop_at_last_layers": 1,
    "samples_format": "png",
    "eta_noise_seed_delta": 0,
    "live_previews_enable": True,
    "show_progress_every_n_steps": 5,
    "sd_vae": "Automatic",
    "sd_checkpoint_hash": None,
    "outdir_samples": "",
}


def check_option(key: str, value) -> None:
    """Options A1111 clients set that change nothing here must hold the value latentgen works with."""
    fixed = {"samples_format": "png", "eta_noise_seed_delta": 0, "sd_vae": "Automatic"}
    if key not in OPTIONS and key != "sd_model_checkpoint":
        raise ApiError(422, f"option {key!r} is unknown to this server; known: {', '.join(['sd_model_checkpoint', *OPTIONS])}.")
    if key in fixed and value != fixed[key] and not (key == "sd_vae" and value in ("None", None)):
        raise ApiError(422, f"option {key}={value!r} is not supported: latentgen works with {key}={fixed[key]!r}.")
    if key == "outdir_samples" and value:
        raise ApiError(422, "option outdir_samples cannot be set over the API: start the server with --outdir.")
    if key == "CLIP_stop_at_last_layers" and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12):
        raise ApiError(422, f"CLIP_stop_at_last_layers={value!r} is invalid: use 1 (the last layer) to 12.")
    if key in ("live_previews_enable",) and not isinstance(value, bool):
        raise ApiError(422, f"{key}={value!r} is invalid: use true or false.")
    if key == "show_progress_every_n_steps" and (isinstance(value, bool) or not isinstance(value, int) or value < -1):
        raise ApiError(422, f"{key}={value!r} is invalid: use a whole number >= 1 (-1: off).")

