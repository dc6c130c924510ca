"""Samplers by name, built from diffusers schedulers.

Every named sampler is built from the model's own scheduler config, so the training betas,
``num_train_timesteps``, ``prediction_type`` and ``timestep_spacing`` carry over; the entry only
picks the class and the options that define the sampler (the DPM-Solver variant), and the name alone
sets the sigma schedule: plain unless it says Karras, whatever Karras/exponential/beta sigmas the
model's config asks for, so "unipc" on a DPM++ 2M Karras config is plain UniPC. ``clip_sample``
(DDIM, DDPM) is False unless the model's config sets it: diffusers' default True would clip the
predicted x0 to [-1, 1] in latent space, where SD's latents are not bounded by 1.
The A1111 label is what goes in the PNG metadata (``Sampler: Euler a``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import diffusers
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    TCDScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin


_DPMPP = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_DPMPP_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
# the sigma schedules diffusers offers besides the plain one; a config may set any of them
_PLAIN = dict.fromkeys(("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas"), False)
_KARRAS = {**_PLAIN, "use_karras_sigmas": True}  # Karras et al. 2022, https://arxiv.org/abs/2206.00364


def _accepts(cls: type, key: str) -> bool:
    return key in inspect.signature(cls.__init__).parameters


@dataclass(frozen=True)
class Sampler:
    cls: type
    label: str  # A1111's name for it
    options: dict = field(default_factory=dict)  # what defines it (the DPM-Solver variant), plus its sigmas:
    karras: bool = False  # Karras sigmas if True, else plain ones, for every class that takes these options

    def __post_init__(self):  # options += the sigma flags of _KARRAS / _PLAIN that the class takes
        sigmas = _KARRAS if self.karras else _PLAIN
        object.__setattr__(self, "options", {**{k: v for k, v in sigmas.items() if _accepts(self.cls, k)},
                                             **self.options})


SAMPLERS: dict[str, Sampler] = {
    # Song et al. 2020, DDIM, https://arxiv.org/abs/2010.02502
    "ddim": Sampler(DDIMScheduler, "DDIM"),
    # Liu et al. 2022, PNDM/PLMS, https://arxiv.org/abs/2202.09778 (PLMS steps only, as SD uses it)
    "pndm": Sampler(PNDMScheduler, "PLMS", {"skip_prk_steps": True}),
    "lms": Sampler(LMSDiscreteScheduler, "LMS"),
    "lms_karras": Sampler(LMSDiscreteScheduler, "LMS Karras", karras=True),
    "euler": Sampler(EulerDiscreteScheduler, "Euler"),
    "euler_karras": Sampler(EulerDiscreteScheduler, "Euler Karras", karras=True),
    "euler_a": Sampler(EulerAncestralDiscreteScheduler, "Euler a"),
    "heun": Sampler(HeunDiscreteScheduler, "Heun"),
    "dpm2": Sampler(KDPM2DiscreteScheduler, "DPM2"),
    "dpm2_a": Sampler(KDPM2AncestralDiscreteScheduler, "DPM2 a"),
    # Lu et al. 2022, DPM-Solver++, https://arxiv.org/abs/2211.01095
    "dpm++2m": Sampler(DPMSolverMultistepScheduler, "DPM++ 2M", _DPMPP),
    "dpm++2m_karras": Sampler(DPMSolverMultistepScheduler, "DPM++ 2M Karras", _DPMPP, karras=True),
    "dpm++2m_sde": Sampler(DPMSolverMultistepScheduler, "DPM++ 2M SDE", _DPMPP_SDE),
    "dpm++2m_sde_karras": Sampler(DPMSolverMultistepScheduler, "DPM++ 2M SDE Karras", _DPMPP_SDE, karras=True),
    # Zhao et al. 2023, UniPC, https://arxiv.org/abs/2302.04867
    "unipc": Sampler(UniPCMultistepScheduler, "UniPC"),
    # Ho et al. 2020, DDPM, https://arxiv.org/abs/2006.11239
    "ddpm": Sampler(DDPMScheduler, "DDPM"),
    # few steps, for consistency-distilled models and LoRAs (LCM-LoRA): Luo et al. 2023, Latent Consistency
    # Models, https://arxiv.org/abs/2310.04378; Zheng et al. 2024, Trajectory Consistency Distillation (TCD),
    # https://arxiv.org/abs/2402.19159 (its gamma, the step's eta, at the paper's 0.3)
    "lcm": Sampler(LCMScheduler, "LCM"),
    "tcd": Sampler(TCDScheduler, "TCD"),
}


def check_name(name: str) -> None:
    """Raise a ValueError listing the known samplers if ``name`` is not one of them."""
    if name not in SAMPLERS:
        raise ValueError(f"scheduler={name!r} is unknown; use one of: {', '.join(SAMPLERS)}")


def make(name: str | SchedulerMixin, base_config) -> SchedulerMixin:
    """A fresh scheduler for one call: ``name`` built on ``base_config``, or a copy of an instance.

    Schedulers keep per-run state (step index, multistep history), so each call gets its own.
    ``clip_sample`` is False unless ``base_config`` sets it (see the module docstring).
    """
    if isinstance(name, SchedulerMixin):
        return type(name).from_config(name.config)
    check_name(name)
    s = SAMPLERS[name]
    if base_config.get("rescale_betas_zero_snr") and not _accepts(s.cls, "rescale_betas_zero_snr"):
        takes = [n for n, x in SAMPLERS.items() if _accepts(x.cls, "rescale_betas_zero_snr")]
        raise ValueError(f"scheduler={name!r} has no zero-terminal-SNR schedule, which this model was trained on "
                         f"(diffusers' {s.cls.__name__} takes none); use one of: {', '.join(takes)}.")
    options = dict(s.options)
    if _accepts(s.cls, "clip_sample") and not _sets(base_config, "clip_sample"):
        options["clip_sample"] = False
    return s.cls.from_config(base_config, **options)


def step_bound(name, base_config) -> int | None:
    """The most steps sampler ``name`` runs on ``base_config``, where it has a bound of its own: LCM and TCD pick
    their steps among ``original_inference_steps`` (50 unless the config says) of the distillation schedule."""
    if isinstance(name, str) and name in SAMPLERS and _accepts(SAMPLERS[name].cls, "original_inference_steps"):
        return int(base_config.get("original_inference_steps") or 50)
    return None


def _sets(config, key: str) -> bool:
    """Whether a scheduler config (a dict, or a scheduler's config) gives ``key`` itself, not
    diffusers' default (a scheduler's config lists the defaults it filled in ``_use_default_values``)."""
    return key in config and key not in (config.get("_use_default_values") or ())


def from_config_dict(config: dict) -> SchedulerMixin:
    """Build the scheduler a diffusers ``scheduler_config.json`` names in ``_class_name``."""
    cls_name = config.get("_class_name", "")
    cls = getattr(diffusers, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ValueError(
            f"scheduler_config.json names _class_name={cls_name!r}, which is not a diffusers "
            f"scheduler; set it to one such as 'PNDMScheduler' or 'DDIMScheduler'."
        )
    return cls.from_config(config)


def label(scheduler: SchedulerMixin) -> str:
    """A1111's sampler label for a scheduler instance: that of the sampler whose options (sigma schedule
    included) it has, so ``make(name)`` is labelled ``name``'s label; its class name if none fits (a
    UniPC with Karras sigmas is no "UniPC")."""
    for s in SAMPLERS.values():
        if type(scheduler) is s.cls and all(scheduler.config.get(k) == v for k, v in s.options.items()):
            return s.label
    return type(scheduler).__name__


def step_kwargs(scheduler: SchedulerMixin, generators: list) -> dict:
    """What ``scheduler.step`` takes beside (model output, t, latents): the images' generators where it draws
    fresh noise (ancestral, SDE, LCM, TCD). A step's eta stays the sampler's own: DDIM's 0 (deterministic), TCD's
    gamma 0.3."""
    params = inspect.signature(scheduler.step).parameters
    return {"generator": generators} if "generator" in params else {}


def denoised(sched: SchedulerMixin, out, model_output: torch.Tensor, t, x: torch.Tensor) -> torch.Tensor:
    """A step's estimate of the clean latents x0 (B, C, h, w), what live previews show (as A1111's): the
    sampler's own (``pred_original_sample``, LCM's ``denoised``), else, for the samplers that keep DDPM's x_t
    (DPM++, UniPC, PNDM, DEIS, TCD), from the model output and alpha-bar at t (Ho et al. 2020, eq. 15; v:
    Salimans & Ho 2022): x0 = (x - sqrt(1 - a) eps) / sqrt(a), or sqrt(a) x - sqrt(1 - a) v. ``x``: the
    latents the step started from."""
    for name in ("pred_original_sample", "denoised"):
        x0 = getattr(out, name, None)
        if x0 is not None:
            return x0
    a = sched.alphas_cumprod[int(round(float(t)))].to(x.device, torch.float32)
    kind = sched.config.prediction_type
    if kind == "epsilon":
        return ((x.float() - (1 - a).sqrt() * model_output.float()) / a.sqrt()).to(x.dtype)
    if kind == "v_prediction":
        return (a.sqrt() * x.float() - (1 - a).sqrt() * model_output.float()).to(x.dtype)
    return model_output


def rescaled(guided: torch.Tensor, text: torch.Tensor, phi: float) -> torch.Tensor:
    """CFG rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", sec. 3.4,
    https://arxiv.org/abs/2305.08891): the guided output (B, C, h, w) brought toward the text prediction's std per
    image, phi * guided * std(text) / std(guided) + (1 - phi) * guided, as diffusers' ``rescale_noise_cfg``. Strong
    guidance on a zero-terminal-SNR model otherwise overexposes."""
    dims = list(range(1, guided.dim()))
    return phi * guided * (text.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True)) + (1 - phi) * guided
