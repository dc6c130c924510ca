"""AUTOMATIC1111's request fields and defaults (``modules/api/models.py``: the processing classes'
arguments plus the API's own), as pydantic models. Defaults where latentgen's model default serves
better than A1111's (steps 50, CFG 7, 512x512) are None: the model's own then apply. Unknown fields are
ignored, as A1111 ignores them; ``latentgen.serve.a1111`` refuses the known ones latentgen cannot honour."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class CommonFields(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)  # A1111 ignores unknown fields too

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None  # A1111's old name for sampler_name
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int | None = None  # None: the model's default (A1111: 50)
    cfg_scale: float | None = None  # None: the model's default (A1111: 7.0)
    width: int | None = None  # None: the model's default size (A1111: 512)
    height: int | None = None
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict | None = None
    script_name: str | None = None
    script_args: list = []
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict = {}
    force_task_id: str | None = None
    infotext: str | None = None


class Txt2ImgRequest(CommonFields):
    enable_hr: bool = False
    denoising_strength: float | None = None
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""


class Img2ImgRequest(CommonFields):
    init_images: list[str] | None = None
    resize_mode: int = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    denoising_strength: float = 0.75
    include_init_images: bool = False


class PngInfoRequest(BaseModel):
    image: str

