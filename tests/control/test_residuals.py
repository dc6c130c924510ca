"""latentgen.control.residuals through the pipeline: equal to diffusers' ControlNet pipelines on tiny random
ControlNets (one with weight, start and end; two at once; guess mode as "controlnet" mode; img2img; inpainting,
with latent blending on the 4-channel U-Net and with the 9-channel inpainting U-Net, whose ControlNet sees the 4
latent channels only: ``StableDiffusionControlNetInpaintPipeline``, compared before the pixel composite with
diffusers' nearest latent mask), the "prompt" mode's soft injection, and inpainting with control keeping every
pixel outside the mask."""

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


def _reference(folder, cls, controlnets, pipe):
    import diffusers
    from diffusers import ControlNetModel, StableDiffusionPipeline

    base = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
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


def test_a_pooling_controlnet_acts_on_the_conditional_half_only_as_diffusers(pipe, tiny_folder, controlnets):
    """A ControlNet with ``global_pool_conditions`` (the shuffle model): diffusers' guess mode, without its scales."""
    from diffusers import ControlNetModel

    ref = _reference(tiny_folder, "StableDiffusionControlNetPipeline", controlnets[:1], pipe)
    ref.controlnet = pooled = ControlNetModel.from_pretrained(controlnets[0], global_pool_conditions=True)
    want = ref(PROMPT, image=_hint(0), num_inference_steps=4, guidance_scale=6.0, height=64, width=64,
               generator=torch.Generator().manual_seed(4), controlnet_conditioning_scale=0.9).images
    got = _ours(pipe, Control(_hint(0), pooled, weight=0.9, resize_mode="just resize"))
    assert max_diff(got, want) <= 1 and max_diff(got, _ours(pipe, Control(_hint(0), controlnets[0], weight=0.9))) > 2


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


def _inpaint_pair(pipe, ref, hint, controlnet, scheduler, strength, weight=1.0, start=0.0, end=1.0):
    """Inpainting with one ControlNet, ours (before the composite, diffusers' nearest latent mask) and diffusers'
    ControlNet inpainting pipeline's, and ours without control."""
    ref.scheduler = schedulers.make(scheduler, pipe.scheduler.config)
    want = ref(PROMPT, image=photo(), mask_image=mask(), control_image=hint, strength=strength, num_inference_steps=5,
               guidance_scale=6.0, height=64, width=64, generator=torch.Generator().manual_seed(5),
               controlnet_conditioning_scale=weight,  # this pipeline's default is 0.5
               control_guidance_start=start, control_guidance_end=end).images

    def ours(control):
        return pipe.inpaint(PROMPT, photo(), mask(), strength=strength, seed=5, steps=5, guidance=6.0,
                            scheduler=scheduler, negative_prompt="", composite=False, latent_mask="nearest",
                            control=control)
    return ours(Control(hint, controlnet, weight=weight, start=start, end=end, resize_mode="just resize")), want, \
        ours(None)


@pytest.mark.parametrize("scheduler,strength,weight,end", [("ddim", 1.0, 1.0, 1.0), ("euler_a", 0.7, 0.8, 0.8)])
def test_inpaint_with_control_equals_diffusers(pipe, tiny_folder, controlnets, scheduler, strength, weight, end):
    """4-channel U-Net (latent blending); an 80x96 control map stretched to 64x64 ("just resize": diffusers'
    Lanczos resize without ``padding_mask_crop``; A1111's default is "crop and resize")."""
    ref = _reference(tiny_folder, "StableDiffusionControlNetInpaintPipeline", controlnets[:1], pipe)
    hint = _hint(3).resize((80, 96))
    got, want, plain = _inpaint_pair(pipe, ref, hint, controlnets[0], scheduler, strength, weight, end=end)
    assert max_diff(got, want) <= 1 and max_diff(got, plain) > 2


@pytest.mark.parametrize("scheduler,strength,weight,start", [("ddim", 1.0, 1.0, 0.0), ("euler_a", 0.7, 0.7, 0.3)])
def test_inpaint_9ch_with_control_equals_diffusers(folder9, controlnets, scheduler, strength, weight, start):
    """9-channel inpainting U-Net: the ControlNet sees the 4 latent channels only (the mask and the masked image's
    latents stay the U-Net's), as diffusers and sd-webui-controlnet (``x[:, :4]``) do."""
    import latentgen

    pipe9 = latentgen.load(folder9)
    assert pipe9.unet.config.in_channels == 9
    ref = _reference(folder9, "StableDiffusionControlNetInpaintPipeline", controlnets[:1], pipe9)
    got, want, plain = _inpaint_pair(pipe9, ref, _hint(4), controlnets[0], scheduler, strength, weight, start=start)
    assert max_diff(got, want) <= 1 and max_diff(got, plain) > 2


def test_prompt_mode_scales_the_shallow_residuals_down_and_inpainting_keeps_the_outside(pipe, controlnets):
    balanced = _ours(pipe, Control(_hint(0), controlnets[0]))
    soft = _ours(pipe, Control(_hint(0), controlnets[0], mode="prompt"))
    assert max_diff(soft, balanced) > 0 and max_diff(soft, _ours(pipe, None)) > 0
    out = pipe.inpaint(PROMPT, photo(), mask(), seed=2, steps=4, mask_blur=0,
                       control=Control(_hint(0), controlnets[0]))
    outside = np.asarray(mask()) < 128
    assert np.array_equal(np.asarray(out[0])[outside], np.asarray(photo())[outside])
    assert max_diff(out, pipe.inpaint(PROMPT, photo(), mask(), seed=2, steps=4, mask_blur=0)) > 0


def test_an_sdxl_controlnet_equals_diffusers_sdxl_controlnet_pipeline(xl_folder, xl_controlnet, controlnets):
    """The pooled text and size numbers reach the ControlNet too (the conditional rows' alone in guess mode); an
    SD 1.x ControlNet on SDXL is refused, naming what differs."""
    import latentgen
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline

    pipe = latentgen.load(xl_folder)
    base = StableDiffusionXLPipeline.from_pretrained(xl_folder)
    ref = StableDiffusionXLControlNetPipeline(**base.components, controlnet=ControlNetModel.from_pretrained(xl_controlnet))
    ref.set_progress_bar_config(disable=True)
    args = dict(num_inference_steps=4, guidance_scale=5.0, height=64, width=64)
    want = ref(PROMPT, image=_hint(0), generator=torch.Generator().manual_seed(4), controlnet_conditioning_scale=0.8,
               control_guidance_start=0.25, control_guidance_end=0.75, **args).images
    ours = dict(seed=4, steps=4, guidance=5.0, scheduler="euler")
    got = pipe.generate(PROMPT, control=Control(_hint(0), xl_controlnet, weight=0.8, start=0.25, end=0.75), **ours)
    assert max_diff(got, want) <= 2 and max_diff(got, pipe.generate(PROMPT, **ours)) > 2
    guess = ref(PROMPT, image=_hint(0), generator=torch.Generator().manual_seed(4), guess_mode=True, **args).images
    assert max_diff(pipe.generate(PROMPT, control=Control(_hint(0), xl_controlnet, mode="controlnet"), **ours),
                    guess) <= 2
    with pytest.raises(ValueError, match="was made for another U-Net: its cross_attention_dim is 32, this model's 96"):
        pipe.generate(PROMPT, control=Control(_hint(0), controlnets[0]), **ours)


def test_an_sdxl_controlnet_on_openvino_draws_as_on_torch(xl_folder, xl_controlnet):
    """On OpenVINO the SDXL ControlNet runs compiled with the pooled text and size numbers as inputs (its residuals
    equal torch's), and the SDXL U-Net takes its residuals beside them (its second conversion)."""
    import torch
    from diffusers import ControlNetModel

    import latentgen
    from latentgen.backends import control_graph

    fast, slow = latentgen.load(xl_folder, backend="openvino"), latentgen.load(xl_folder, backend="torch")
    kw = dict(seed=4, steps=4, guidance=5.0, control=Control(_hint(0), xl_controlnet, weight=0.8, start=0.25))
    got = fast.generate(PROMPT, **kw)
    assert max_diff(got, slow.generate(PROMPT, **kw)) <= 2
    assert max_diff(got, fast.generate(PROMPT, **{**kw, "control": None})) > 2  # the control matters
    assert "last call ran torch" not in repr(fast)
    assert fast.runtime.for_unet(fast.unet, residuals=True).controlled is not None  # the U-Net with residuals ran
    net = ControlNetModel.from_pretrained(xl_controlnet)
    run = fast.runtime.for_controlnet(net)
    assert isinstance(run, control_graph.CompiledControlNet)
    g = torch.Generator().manual_seed(0)
    x, ctx, hint = torch.randn(2, 4, 32, 32, generator=g), torch.randn(2, 77, net.config.cross_attention_dim, generator=g), \
        torch.rand(2, 3, 64, 64, generator=g)
    added = {"text_embeds": torch.randn(2, net.config.projection_class_embeddings_input_dim
                                        - 6 * net.config.addition_time_embed_dim, generator=g),
             "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    with torch.no_grad():
        want = control_graph.run_torch(net, x, torch.tensor(500), ctx, hint, added)
    got = run(x, torch.tensor(500), ctx, hint, added)
    for a, b in zip([*got[0], got[1]], [*want[0], want[1]]):
        assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()
    other = dict(added, time_ids=torch.tensor([[128.0, 128, 0, 0, 64, 64]] * 2))  # the size numbers are inputs
    assert not torch.allclose(run(x, torch.tensor(500), ctx, hint, other)[1], got[1], atol=1e-4)
