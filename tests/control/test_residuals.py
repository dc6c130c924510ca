"""latentgen.control.residuals through the pipeline: equal to diffusers' ControlNet pipelines on tiny random
ControlNets (one with weight, start and end; two at once; guess mode as "controlnet" mode; img2img), the
"prompt" mode's soft injection, and inpainting with control keeping every pixel outside the mask."""

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import mask, max_diff, photo
from latentgen import Control, schedulers

PROMPT = "a red circle on a blue background"


def _hint(seed):
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((16, 16)) > 0.5).astype(np.uint8) * 255).resize((64, 64)).convert("RGB")


def _reference(tiny_folder, cls, controlnets, pipe):
    import diffusers
    from diffusers import ControlNetModel, StableDiffusionPipeline

    base = StableDiffusionPipeline.from_pretrained(tiny_folder, safety_checker=None)
    nets = [ControlNetModel.from_pretrained(c) for c in controlnets]
    ref = getattr(diffusers, cls)(**{k: v for k, v in base.components.items() if k != "image_encoder"},
                                  controlnet=nets[0] if len(nets) == 1 else nets, requires_safety_checker=False)
    ref.scheduler = schedulers.make("ddim", pipe.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    return ref


def _ours(pipe, controls, **kw):
    return pipe.generate(PROMPT, negative_prompt="", seed=4, steps=4, guidance=6.0, scheduler="ddim", width=64,
                         height=64, control=controls, **kw)


def test_one_controlnet_with_weight_start_and_end_equals_diffusers(pipe, tiny_folder, controlnets):
    ref = _reference(tiny_folder, "StableDiffusionControlNetPipeline", controlnets[:1], pipe)
    want = ref(PROMPT, image=_hint(0), num_inference_steps=4, guidance_scale=6.0, height=64, width=64,
               generator=torch.Generator().manual_seed(4), controlnet_conditioning_scale=0.8,
               control_guidance_start=0.25, control_guidance_end=0.75).images
    got = _ours(pipe, Control(_hint(0), controlnets[0], weight=0.8, start=0.25, end=0.75, resize_mode="just resize"))
    assert max_diff(got, want) <= 1 and max_diff(got, _ours(pipe, None)) > 2
    assert got[0].info["parameters"].endswith(
        f'ControlNet 0: "Module: none, Model: {controlnets[0].name}, Weight: 0.8, Resize Mode: Just Resize, '
        f'Guidance Start: 0.25, Guidance End: 0.75, Control Mode: Balanced"')
    guess = ref(PROMPT, image=_hint(0), num_inference_steps=4, guidance_scale=6.0, height=64, width=64,
                generator=torch.Generator().manual_seed(4), guess_mode=True).images
    got = _ours(pipe, Control(_hint(0), controlnets[0], mode="controlnet"))
    assert max_diff(got, guess) <= 1


def test_two_controlnets_at_once_equal_diffusers(pipe, tiny_folder, controlnets):
    ref = _reference(tiny_folder, "StableDiffusionControlNetPipeline", controlnets, pipe)
    want = ref(PROMPT, image=[_hint(0), _hint(1)], num_inference_steps=4, guidance_scale=6.0, height=64, width=64,
               generator=torch.Generator().manual_seed(4), controlnet_conditioning_scale=[0.8, 0.5],
               control_guidance_start=[0.0, 0.5], control_guidance_end=[1.0, 1.0]).images
    got = _ours(pipe, [Control(_hint(0), controlnets[0], weight=0.8), Control(_hint(1), controlnets[1], weight=0.5,
                                                                              start=0.5)])
    assert max_diff(got, want) <= 1


def test_img2img_with_control_equals_diffusers(pipe, tiny_folder, controlnets):
    ref = _reference(tiny_folder, "StableDiffusionControlNetImg2ImgPipeline", controlnets[:1], pipe)
    want = ref(PROMPT, image=photo(), control_image=_hint(2), strength=0.6, num_inference_steps=5, guidance_scale=6.0,
               controlnet_conditioning_scale=1.0,  # this pipeline's default is 0.8
               generator=torch.Generator().manual_seed(3)).images
    got = pipe.img2img(PROMPT, photo(), strength=0.6, seed=3, steps=5, guidance=6.0, scheduler="ddim",
                       negative_prompt="", control=Control(_hint(2), controlnets[0]))
    assert max_diff(got, want) <= 1


def test_prompt_mode_scales_the_shallow_residuals_down_and_inpainting_keeps_the_outside(pipe, controlnets):
    balanced = _ours(pipe, Control(_hint(0), controlnets[0]))
    soft = _ours(pipe, Control(_hint(0), controlnets[0], mode="prompt"))
    assert max_diff(soft, balanced) > 0 and max_diff(soft, _ours(pipe, None)) > 0
    out = pipe.inpaint(PROMPT, photo(), mask(), seed=2, steps=4, mask_blur=0,
                       control=Control(_hint(0), controlnets[0]))
    outside = np.asarray(mask()) < 128
    assert np.array_equal(np.asarray(out[0])[outside], np.asarray(photo())[outside])
    assert max_diff(out, pipe.inpaint(PROMPT, photo(), mask(), seed=2, steps=4, mask_blur=0)) > 0
    with pytest.raises(ValueError, match="control with hires"):
        import latentgen

        pipe.generate(PROMPT, hires=latentgen.Hires(), control=Control(_hint(0), controlnets[0]))
