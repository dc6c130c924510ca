"""latentgen.upscale.hires: A1111's hires fix. The second pass equals diffusers' img2img pipeline run on the first
pass's latents upscaled (latent upscalers) or on its decoded picture upscaled (pixel upscalers), with the same
seed, and with another model (A1111's hr_checkpoint_name) img2img on that model; sizes as A1111 computes them; the
PNG's lines; bad settings refused before any model runs."""

import pytest
import torch
import torch.nn.functional as F

import latentgen
from conftest import diffusers_pipeline, max_diff
from latentgen import Hires, schedulers
from latentgen.upscale.hires import sizes

PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def refs(tiny_folder):
    return diffusers_pipeline("StableDiffusionPipeline", tiny_folder), \
        diffusers_pipeline("StableDiffusionImg2ImgPipeline", tiny_folder)


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos", "2x-compact"])
def test_the_second_pass_is_img2img_from_the_upscaled_first(pipe, refs, upscaler, upscaler_folder, monkeypatch):
    from latentgen.upscale import upscalers

    monkeypatch.setenv(upscalers.ENV, str(upscaler_folder))  # model files by stem, as A1111's models/ESRGAN
    txt, img = refs
    txt.scheduler = img.scheduler = schedulers.make("ddim", pipe.scheduler.config)
    common = dict(num_inference_steps=6, guidance_scale=5.0, negative_prompt="green")
    base = txt(PROMPT, height=64, width=64, generator=torch.Generator().manual_seed(3), output_type="latent",
               **common).images  # (1, 4, h, w), scaled latents
    if upscaler == "Latent":
        image = F.interpolate(base, scale_factor=2, mode="bilinear")
    elif upscaler == "Lanczos":
        image = pipe.decode(base)[0].resize((128, 128), 1)
    else:  # the model's x2 pass on the decoded picture
        image = upscalers.run(upscalers.model(upscaler_folder / "2x-compact.safetensors"), pipe.decode(base)[0])
    want = img(PROMPT, image=image, strength=0.55, generator=torch.Generator().manual_seed(3), **common).images
    got = pipe.generate(PROMPT, negative_prompt="green", seed=3, steps=6, guidance=5.0, scheduler="ddim", width=64,
                        height=64, hires=Hires(scale=2, strength=0.55, upscaler=upscaler))
    assert got[0].size == (128, 128) and max_diff(got, want) <= 1
    assert got[0].info["parameters"].endswith(f"Size: 64x64, Model: {pipe.name}, Denoising strength: 0.55, "
                                              f"Hires upscale: 2, Hires upscaler: {upscaler}")


@pytest.mark.parametrize("h, up, final", [
    (Hires(scale=2), (128, 96), (128, 96)), (Hires(scale=1.5), (96, 72), (96, 72)),
    (Hires(width=256), (256, 192), (256, 192)), (Hires(height=144), (192, 144), (192, 144)),
    (Hires(width=128, height=128), (168, 128), (128, 128)),  # cover, then crop
    (Hires(scale=1.3), (80, 60), (80, 60)),  # 83.2 x 62.4, down to multiples of 4
])
def test_sizes_are_a1111s(h, up, final):
    assert sizes(h, 64, 48, 4) == (up, final)


def test_own_steps_sampler_prompts_and_sizes(pipe):
    kw = dict(seed=1, steps=3, guidance=4.0, width=64, height=48)
    plain = pipe.generate(PROMPT, **kw, hires=Hires(scale=1.5, strength=0.6))
    own = pipe.generate(PROMPT, **kw, hires=Hires(scale=1.5, strength=0.6, steps=5, scheduler="euler",
                                                  prompt="a blue circle", negative_prompt="red"))
    assert plain[0].size == own[0].size == (96, 72) and max_diff(plain, own) > 0
    assert own[0].info["parameters"].endswith(
        "Denoising strength: 0.6, Hires sampler: Euler, Hires prompt: a blue circle, Hires negative prompt: red, "
        "Hires upscale: 1.5, Hires steps: 5, Hires upscaler: Latent")  # A1111's order
    cropped = pipe.generate(PROMPT, **kw, hires=Hires(width=64, height=64, upscaler="Nearest"))
    assert cropped[0].size == (64, 64) and "Hires resize: 64x64" in cropped[0].info["parameters"]
    seen = []
    pipe.generate(PROMPT, **kw, num_images=2, hires=Hires(steps=4, strength=0.5),
                  callback=lambda done, total, _: seen.append((done, total)))
    assert seen[-1] == (2 * (3 + 2), 2 * (3 + 2))  # two images, each 3 steps then int(4 * 0.5) = 2


@pytest.mark.parametrize("h, error, match", [
    (Hires(scale=0.5), ValueError, r"hires.scale=0.5 is invalid"),
    (Hires(strength=1.5), ValueError, r"hires.strength=1.5 is invalid"),
    (Hires(steps=0), ValueError, r"hires.steps=0 is invalid"),
    (Hires(upscaler="4x-UltraSharp"), ValueError, r"hires.upscaler='4x-UltraSharp' is not an upscaler here"),
    (Hires(scheduler="nope"), ValueError, r"nope"),
    (Hires(width=1), ValueError, r"hires.width=1 is invalid"),
    (Hires(prompt="x <lora:purple:1>"), ValueError, r"other <lora:...> tags"),
    (Hires(model="other-model"), TypeError, r"hires.model must be a loaded model or None, got str"),
    (2, TypeError, r"hires must be a latentgen.Hires"),
])
def test_bad_hires_settings_are_refused_before_any_model_runs(pipe, monkeypatch, h, error, match):
    monkeypatch.setattr(pipe.text_encoder, "forward", lambda *a, **k: pytest.fail("encoded before refusing"))
    with pytest.raises(error, match=match):
        pipe.generate(PROMPT, steps=2, width=64, height=64, hires=h)


def test_controlnet_units_act_in_both_passes_as_diffusers_controlnet_pipelines(pipe, tiny_folder, controlnets):
    """The first pass as StableDiffusionControlNetPipeline, the second as StableDiffusionControlNetImg2ImgPipeline
    from the upscaled latents, the control image fitted to each pass's size."""
    import diffusers
    import numpy as np
    from PIL import Image

    from latentgen import Control
    from latentgen.canvas import resize

    base = diffusers.StableDiffusionPipeline.from_pretrained(tiny_folder, safety_checker=None).components
    net = diffusers.ControlNetModel.from_pretrained(controlnets[0])
    parts = {k: v for k, v in base.items() if k != "image_encoder"}
    txt = diffusers.StableDiffusionControlNetPipeline(**parts, controlnet=net, requires_safety_checker=False)
    img = diffusers.StableDiffusionControlNetImg2ImgPipeline(**parts, controlnet=net, requires_safety_checker=False)
    for p in (txt, img):
        p.scheduler = schedulers.make("ddim", pipe.scheduler.config)
        p.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    hint = Image.fromarray((rng.random((16, 16)) > 0.5).astype(np.uint8) * 255).resize((64, 64)).convert("RGB")
    big = resize.resize(hint, (128, 128), "just resize")
    common = dict(num_inference_steps=6, guidance_scale=5.0, negative_prompt="green", controlnet_conditioning_scale=0.7)
    z = txt(PROMPT, hint, height=64, width=64, generator=torch.Generator().manual_seed(3), output_type="latent",
            **common).images
    want = img(PROMPT, image=F.interpolate(z, scale_factor=2, mode="bilinear"), control_image=big, strength=0.55,
               generator=torch.Generator().manual_seed(3), **common).images
    unit = Control(hint, controlnets[0], weight=0.7, resize_mode="just resize")
    kw = dict(negative_prompt="green", seed=3, steps=6, guidance=5.0, scheduler="ddim", width=64, height=64,
              hires=Hires(scale=2, strength=0.55))
    got = pipe.generate(PROMPT, control=unit, **kw)
    assert got[0].size == (128, 128) and max_diff(got, want) <= 1
    assert max_diff(got, pipe.generate(PROMPT, **kw)) > 2
    assert 'ControlNet 0: "Module: none' in got[0].info["parameters"]


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_another_model_draws_the_second_pass_as_img2img_on_that_model(pipe, refs, tiny_other, upscaler):
    """A1111's hr_checkpoint_name: the first pass on the model, decoded by its VAE (pixel upscalers); the second
    pass is diffusers' img2img on the other model (its text encoder, U-Net, VAE encode and decode)."""
    txt, img = refs[0], diffusers_pipeline("StableDiffusionImg2ImgPipeline", tiny_other)
    txt.scheduler, img.scheduler = schedulers.make("ddim", txt.scheduler.config), schedulers.make("ddim", img.scheduler.config)
    common = dict(num_inference_steps=6, guidance_scale=5.0, negative_prompt="green")
    base = txt(PROMPT, height=64, width=64, generator=torch.Generator().manual_seed(3), output_type="latent",
               **common).images
    image = F.interpolate(base, scale_factor=2, mode="bilinear") if upscaler == "Latent" else \
        pipe.decode(base)[0].resize((128, 128), 1)
    want = img(PROMPT, image=image, strength=0.55, generator=torch.Generator().manual_seed(3), **common).images
    second = latentgen.load(tiny_other)
    kw = dict(negative_prompt="green", seed=3, steps=6, guidance=5.0, scheduler="ddim", width=64, height=64)
    got = pipe.generate(PROMPT, **kw, hires=Hires(scale=2, strength=0.55, upscaler=upscaler, model=second))
    assert got[0].size == (128, 128) and max_diff(got, want) <= 1
    assert got[0].info["parameters"].endswith(f"Model: {pipe.name}, Denoising strength: 0.55, Hires checkpoint: "
                                              f"{second.name}, Hires upscale: 2, Hires upscaler: {upscaler}")
    same = pipe.generate(PROMPT, **kw, hires=Hires(scale=2, strength=0.55, upscaler=upscaler, model=pipe))
    assert max_diff(got, same) > 2 and "Hires checkpoint" not in same[0].info["parameters"]  # the model itself: None


def test_the_prompts_loras_and_tiling_act_on_the_second_passs_model(pipe, tiny_other, lora_files):
    """A tag's LoRA is applied to both models while the call runs (A1111 activates the hires pass's extra networks
    on the model it switched to), then parked on both; tiling wraps the other model's U-Net and VAE too."""
    second = latentgen.load(tiny_other)
    second.load_lora(lora_files[0], name="a", scale=0.0)
    pipe.load_lora(lora_files[0], name="a", scale=0.0)
    try:
        kw = dict(seed=2, steps=3, guidance=5.0, width=64, height=64)
        plain = pipe.generate(PROMPT, **kw, hires=Hires(model=second))
        seen = []
        wraps = lambda *a: seen.append(sum(m.padding_mode == "zeros" for net in (second.unet, second.vae)  # noqa: E731
                                           for m in net.modules() if isinstance(m, torch.nn.Conv2d) and any(m.padding)))
        tagged = pipe.generate(PROMPT + " <lora:a:1>", **kw, hires=Hires(model=second), tiling=True, callback=wraps)
        assert seen and set(seen) == {0}  # every zero-padded convolution of the other model wraps while it draws
        assert second.loras.loaded["a"].scale == 0.0 and pipe.loras.loaded["a"].scale == 0.0  # as before the call
        for model in (pipe, second):  # the LoRA set on both models by hand draws the tagged picture
            model.set_lora_scale("a", 1.0)
        by_hand = pipe.generate(PROMPT, **kw, tiling=True, hires=Hires(model=second))
        second.unload_lora("a")  # the tag now names no LoRA of the second model: refused before drawing
        with pytest.raises(FileNotFoundError, match=r"hires.model '[\w-]+': prompt tag <lora:a>.*load_lora"):
            pipe.generate(PROMPT + " <lora:a:1>", **kw, hires=Hires(model=second))
        assert max_diff(tagged, plain) > 2 and max_diff(tagged, by_hand) == 0
    finally:
        pipe.unload_lora("a")
    assert all(m.padding_mode == "zeros" for m in second.unet.modules() if isinstance(m, torch.nn.Conv2d))


def test_a_model_of_another_latent_space_or_an_inpainting_one_is_refused_before_any_model_runs(pipe, folder9,
                                                                                                monkeypatch):
    embedded = latentgen.load()  # another VAE: its scaling factor and channels
    monkeypatch.setattr(pipe.text_encoder, "forward", lambda *a, **k: pytest.fail("encoded before refusing"))
    with pytest.raises(ValueError, match=r"hires.model '\w+' works in another latent space.*hr_checkpoint_name"):
        pipe.generate(PROMPT, steps=2, width=64, height=64, hires=Hires(model=embedded))
    with pytest.raises(ValueError, match=r"hires.model '[\w-]+' is an inpainting model \(its U-Net takes 9 channels\)"):
        pipe.generate(PROMPT, steps=2, width=64, height=64, hires=Hires(model=latentgen.load(folder9)))
