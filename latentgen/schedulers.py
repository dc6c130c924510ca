"""Samplers by name, built from diffusers schedulers.

Every named sampler is built from the model's own scheduler config, so the training betas,
``num_train_timesteps``, ``prediction_type`` and ``timestep_spacing`` carry over; the entry only
picks the class and the options that define the sampler (Karras sigmas, the DPM-Solver variant).
The A1111 label is what goes in the PNG metadata (``Sampler: Euler a``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import diffusers
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin


@dataclass(frozen=True)
class Sampler:
    cls: type
    label: str  # A1111's name for it
    options: dict = field(default_factory=dict)


_DPMPP = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_DPMPP_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
_KARRAS = {"use_karras_sigmas": True}  # Karras et al. 2022, https://arxiv.org/abs/2206.00364
_PLAIN = {"use_karras_sigmas": False}

SAMPLERS: dict[str, Sampler] = {
    # Song et al. 2020, DDIM, https://arxiv.org/abs/2010.02502
    "ddim": Sampler(DDIMScheduler, "DDIM"),
    # Liu et al. 2022, PNDM/PLMS, https://arxiv.org/abs/2202.09778 (PLMS steps only, as SD uses it)
    "pndm": Sampler(PNDMScheduler, "PLMS", {"skip_prk_steps": True}),
    "lms": Sampler(LMSDiscreteScheduler, "LMS", _PLAIN),
    "lms_karras": Sampler(LMSDiscreteScheduler, "LMS Karras", _KARRAS),
    "euler": Sampler(EulerDiscreteScheduler, "Euler", _PLAIN),
    "euler_karras": Sampler(EulerDiscreteScheduler, "Euler Karras", _KARRAS),
    "euler_a": Sampler(EulerAncestralDiscreteScheduler, "Euler a"),
    "heun": Sampler(HeunDiscreteScheduler, "Heun", _PLAIN),
    "dpm2": Sampler(KDPM2DiscreteScheduler, "DPM2", _PLAIN),
    "dpm2_a": Sampler(KDPM2AncestralDiscreteScheduler, "DPM2 a", _PLAIN),
    # Lu et al. 2022, DPM-Solver++, https://arxiv.org/abs/2211.01095
    "dpm++2m": Sampler(DPMSolverMultistepScheduler, "DPM++ 2M", {**_DPMPP, **_PLAIN}),
    "dpm++2m_karras": Sampler(DPMSolverMultistepScheduler, "DPM++ 2M Karras", {**_DPMPP, **_KARRAS}),
    "dpm++2m_sde": Sampler(DPMSolverMultistepScheduler, "DPM++ 2M SDE", {**_DPMPP_SDE, **_PLAIN}),
    "dpm++2m_sde_karras": Sampler(
        DPMSolverMultistepScheduler, "DPM++ 2M SDE Karras", {**_DPMPP_SDE, **_KARRAS}
    ),
    # Zhao et al. 2023, UniPC, https://arxiv.org/abs/2302.04867
    "unipc": Sampler(UniPCMultistepScheduler, "UniPC"),
    # Ho et al. 2020, DDPM, https://arxiv.org/abs/2006.11239
    "ddpm": Sampler(DDPMScheduler, "DDPM"),
}


def check_name(name: str) -> None:
    """Raise a ValueError listing the known samplers if ``name`` is not one of them."""
    if name not in SAMPLERS:
        raise ValueError(f"scheduler={name!r} is unknown; use one of: {', '.join(SAMPLERS)}")


def make(name: str | SchedulerMixin, base_config) -> SchedulerMixin:
    """A fresh scheduler for one call: ``name`` built on ``base_config``, or a copy of an instance.

    Schedulers keep per-run state (step index, multistep history), so each call gets its own.
    """
    if isinstance(name, SchedulerMixin):
        return type(name).from_config(name.config)
    check_name(name)
    s = SAMPLERS[name]
    return s.cls.from_config(base_config, **s.options)


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
    """A1111's sampler label for a scheduler instance (its class name if none fits)."""
    for s in SAMPLERS.values():
        if type(scheduler) is s.cls and all(scheduler.config.get(k) == v for k, v in s.options.items()):
            return s.label
    return type(scheduler).__name__
