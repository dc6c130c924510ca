"""Samplers and options by A1111's names: ``/sdapi/v1/samplers``, ``/schedulers``, ``/options``."""

from __future__ import annotations

from latentgen import checks

from ..vae import preview
from .errors import ApiError, unprocessable


def whole_in(name: str, value, lo: int, hi: int, fix: str) -> int:
    """``value`` when it is a whole number in [lo, hi] (``latentgen.checks``)."""
    checks.whole(name, value, lo, fix)
    return checks.choice(name, value, range(lo, hi + 1), fix)


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

    sched = checks.choice("scheduler", (scheduler or "automatic").strip().lower(), ("automatic", "karras"),
                          "use 'automatic' (the sampler's own schedule) or 'karras'")
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
    "show_progress_type": "Approx cheap",  # how previews are drawn: latentgen.vae.preview.A1111
    "sd_vae": "Automatic",
    "sd_checkpoint_hash": None,
    "outdir_samples": "",
    "hires_fix_refiner_pass": "second pass",  # which pass of a hires call the refiner acts in (latentgen.Refiner)
}
FIXED = {"samples_format": ("png",), "eta_noise_seed_delta": (0,)}  # sd_vae: a name of catalog.Vaes


@unprocessable()
def check_option(key: str, value) -> None:
    """An option A1111 clients set: known, and, where it changes nothing here, the value latentgen works with."""
    if key not in OPTIONS and key != "sd_model_checkpoint":
        raise ApiError(422, f"option {key!r} is unknown to this server; known: {', '.join(['sd_model_checkpoint', *OPTIONS])}.")
    if key in FIXED:
        checks.choice(key, value, FIXED[key], f"latentgen works with {key}={FIXED[key][0]!r}")
    if key == "outdir_samples" and value:
        raise ApiError(422, "option outdir_samples cannot be set over the API: start the server with --outdir.")
    if key == "CLIP_stop_at_last_layers":
        whole_in(key, value, 1, 12, "use 1 (the last layer) to 12")
    if key == "live_previews_enable" and not isinstance(value, bool):
        raise ApiError(422, f"{key}={value!r} is invalid: use true or false.")
    if key == "show_progress_type":
        checks.choice(key, value, tuple(preview.A1111), "'Approx cheap' (a linear map), 'TAESD' (with --preview-vae) "
                                                        "or 'Full' (the VAE)")
    if key == "hires_fix_refiner_pass":
        checks.choice(key, value, ("first pass", "second pass", "both passes"), "use 'second pass' (A1111's default), "
                                                                               "'first pass' or 'both passes'")
    if key == "show_progress_every_n_steps":
        checks.whole(key, value, -1, "use a whole number >= 1 (-1: off)")
