"""latentgen.pipeline: txt2img against diffusers' StableDiffusionPipeline on the same tiny random folder
(within 1/255); seeds: image i of a call equals a one-image call with seed + i, bit for bit on CPU;
the progress callback; the parameters text on every image."""

import numpy as np
import pytest
import torch

from conftest import max_diff as _max_diff
from conftest import reference_images as _reference
from latentgen import schedulers


@pytest.mark.parametrize("name", ["ddim", "euler", "euler_a", "dpm++2m"])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("negative", [None, "blurry, low quality"])
def test_matches_diffusers(pipe, reference, name, n, negative):
    ours = pipe.generate("a red cat", seed=11, steps=4, guidance=6.0, negative_prompt=negative,
                         num_images=n, scheduler=name)
    ref = _reference(reference, pipe, name, "a red cat", 11, n, negative)
    assert _max_diff(ours, ref) <= 1
    # the comparison has teeth: the images are not flat, and another seed gives another image
    assert np.ptp(np.asarray(ours[0])) > 20
    other = pipe.generate("a red cat", seed=12, steps=4, guidance=6.0, negative_prompt=negative, scheduler=name)
    assert _max_diff(ours[:1], other) > 5


def test_no_guidance_and_prompt_lists_match_diffusers(pipe, reference):
    prompts = ["a red cat", "a green square"]
    ours = pipe.generate(prompts, seed=3, steps=3, guidance=1.0, num_images=2, scheduler="euler_a")
    reference.scheduler = schedulers.make("euler_a", pipe.scheduler.config)
    gens = [torch.Generator().manual_seed(3 + i) for i in range(4)]
    ref = reference(prompts, num_inference_steps=3, guidance_scale=1.0, num_images_per_prompt=2,
                    generator=gens, height=64, width=64).images
    assert _max_diff(ours, ref) <= 1


@pytest.mark.parametrize("scheduler", ["euler_a", "dpm++2m_sde", "ddim"])
def test_image_2_of_4_equals_single_call_with_seed_plus_2(pipe, scheduler):
    batch = pipe.generate("a yellow triangle", seed=40, steps=3, num_images=4, scheduler=scheduler)
    single = pipe.generate("a yellow triangle", seed=42, steps=3, scheduler=scheduler)[0]
    assert np.array_equal(np.asarray(batch[2]), np.asarray(single))
    assert not np.array_equal(np.asarray(batch[1]), np.asarray(batch[2]))


def test_prompt_list_images_follow_their_seed(pipe):
    batch = pipe.generate(["a cat", "a dog"], seed=7, steps=2, num_images=2, negative_prompt="ugly")
    single = pipe.generate("a dog", seed=10, steps=2, negative_prompt="ugly")[0]
    assert len(batch) == 4 and np.array_equal(np.asarray(batch[3]), np.asarray(single))


def test_an_image_does_not_depend_on_a_longer_prompt_in_its_batch():
    """docs/api.md: the same seed draws the same image whatever the batch. A prompt of 2 chunks (over 75
    tokens) beside a short one pads neither the short one's cond nor its uncond; on the embedded model."""
    import latentgen

    pipe = latentgen.load(backend="torch")
    short = "a red circle on a blue background"
    long = ", ".join(["a green square on a white background"] * 12)  # 2 chunks
    alone = pipe.generate([short, short], seed=0, steps=4)  # image i: seed i
    batched = pipe.generate([short, long], seed=0, steps=4, batch_size=2)
    assert np.array_equal(np.asarray(batched[0]), np.asarray(alone[0]))
    assert np.array_equal(np.asarray(batched[1]), np.asarray(pipe.generate(long, seed=1, steps=4)[0]))
    # and the short prompt with a long negative equals its one-image call too
    mixed = pipe.generate([short, short], seed=0, steps=4, batch_size=2, negative_prompt=["", long])
    assert np.array_equal(np.asarray(mixed[0]), np.asarray(alone[0]))
    assert _max_diff(mixed[1:], alone[1:]) > 0  # the long negative does change its own image


def test_img2img_on_an_inpainting_unet_is_refused_before_the_image_is_read(pipe):
    from diffusers import UNet2DConditionModel

    import latentgen

    unet9 = UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 9})
    pipe9 = latentgen.Pipeline(pipe.tokenizer, pipe.text_encoder, unet9, pipe.vae, pipe.scheduler, name="nine")
    image = pipe.generate("a cat", steps=1)[0]
    for src in (image, "no/such/image.png"):  # the path is never opened
        with pytest.raises(ValueError, match=r"nine is an inpainting model \(its U-Net takes 9 channels\), which "
                                             r"img2img cannot run: use pipe.inpaint\(prompt, image, mask\)"):
            pipe9.img2img("a dog", src, steps=1)
    with pytest.raises(ValueError, match=r"which generate cannot run"):
        pipe9.generate("a dog", steps=1)


def test_larger_batch_size_matches_within_rounding(pipe):
    fast = pipe.generate("a cat", seed=1, steps=2, num_images=3, batch_size=3)
    exact = pipe.generate("a cat", seed=1, steps=2, num_images=3)
    for a, b in zip(fast, exact):
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1


def test_callback_counts_every_step(pipe):
    seen = []
    pipe.generate("a cat", steps=3, num_images=2, callback=lambda done, total, lat: seen.append((done, total)))
    assert seen == [(i, 6) for i in range(1, 7)]


def test_a_stop_from_the_callback_ends_the_drawing_with_the_picture_so_far(pipe):
    import latentgen

    estimates = []
    full = pipe.generate("a cat", seed=3, steps=4, num_images=3,
                         callback=lambda done, total, lat, x0: estimates.append(x0.clone()))

    def stop_in_image_2(done, total, latents):  # the calls' steps count on: image 2's second step is step 6
        if done == 6:
            raise latentgen.Stop()

    out = pipe.generate("a cat", seed=3, steps=4, num_images=3, callback=stop_in_image_2)
    assert len(out) == 2 and _max_diff(out[:1], full[:1]) == 0  # image 3 is not drawn, image 1 is whole
    assert _max_diff(out[1:], pipe.decode(estimates[5])) == 0  # image 2: its clean estimate at that step
    assert _max_diff(out[1:], full[1:2]) > 0 and out[1].info["parameters"] == full[1].info["parameters"]
    with pytest.raises(ValueError, match="boom"):  # any other exception still ends the call as an error
        pipe.generate("a cat", steps=2, callback=lambda d, t, x: (_ for _ in ()).throw(ValueError("boom")))


def test_a_stop_in_the_first_pass_skips_the_hires_pass(pipe):
    import latentgen

    def stop(done, total, latents, denoised):
        if done == 1:
            raise latentgen.Stop()

    out = pipe.generate("a cat", seed=1, steps=3, width=64, height=64, callback=stop,
                        hires=latentgen.Hires(scale=2, upscaler="Latent", steps=2))
    assert [im.size for im in out] == [(64, 64)]  # the first pass's picture; A1111 skips the second after an interrupt


def test_parameters_travel_with_the_image(pipe):
    im = pipe.generate("a cat", seed=5, steps=2, guidance=4.0, negative_prompt="dog", num_images=2,
                       scheduler="euler_a")[1]
    assert im.info["parameters"].splitlines() == [
        "a cat", "Negative prompt: dog",
        f"Steps: 2, Sampler: Euler a, CFG scale: 4.0, Seed: 6, Size: 64x64, Model: {pipe.name}"]


# -- the loop's named extension points (latentgen.starts.Hooks) ------------------------------------------
def _with_hooks(pipe, **hooks):
    """txt2img's start with ``hooks`` added: what a feature entering the loop (prompt editing, ControlNet) builds."""
    from dataclasses import replace
    from functools import partial

    from latentgen import starts

    f = pipe.vae_scale_factor
    plain = partial(starts.from_noise, shape=(pipe.vae.config.latent_channels, 64 // f, 64 // f), device=pipe.device)
    return lambda sched, generators, dtype: replace(plain(sched, generators, dtype), hooks=starts.Hooks(**hooks))


def _draw(pipe, start, prompt="a cat", seed=5):
    from latentgen import request

    s = pipe.settings(steps=3, guidance=6.0, width=64, height=64, seed=seed)
    return pipe.sample(request.draws(prompt, None, 1, seed, s), s, start)


def test_a_context_hook_changes_the_text_by_step(pipe):
    dog = torch.cat([pipe.encode_prompt(""), pipe.encode_prompt("a dog")])  # (2, 77, D): [uncond; cond]
    as_dog = _draw(pipe, _with_hooks(pipe, context=lambda i, context: dog))
    dog_image = pipe.generate("a dog", seed=5, steps=3, guidance=6.0, width=64, height=64)
    assert _max_diff(as_dog, dog_image) == 0  # the hook's context is what the U-Net saw, at every step
    switched = _draw(pipe, _with_hooks(pipe, context=lambda i, context: dog if i >= 1 else context))
    cat_image = pipe.generate("a cat", seed=5, steps=3, guidance=6.0, width=64, height=64)
    assert _max_diff(switched, dog_image) > 0 and _max_diff(switched, cat_image) > 0  # A1111's [cat:dog:1]


def test_unet_inputs_reach_the_unet_at_every_step(pipe):
    """A ControlNet (diffusers', built from the tiny U-Net) through the hook: its residuals are extra U-Net inputs."""
    from diffusers import ControlNetModel

    levels = pipe.vae_scale_factor.bit_length()  # its hint encoder downsamples as the VAE does
    controlnet = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=(16,) * levels).eval()
    hint = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # the control image, CFG's halves
    # zero convolutions at first: residuals of 0, the plain image
    seen = []

    def unet_inputs(i, x, t, context, added):
        seen.append((i, x.shape[0], context.shape[0], added))  # added: SDXL's pooled text and sizes, None here
        down, mid = controlnet(x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    cat = pipe.generate("a cat", seed=5, steps=3, guidance=6.0, width=64, height=64)
    assert _max_diff(_draw(pipe, _with_hooks(pipe, unet_inputs=unet_inputs)), cat) == 0
    assert seen == [(0, 2, 2, None), (1, 2, 2, None), (2, 2, 2, None)]  # each step, with CFG's two halves
    with torch.no_grad():
        for p in controlnet.controlnet_mid_block.parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    assert _max_diff(_draw(pipe, _with_hooks(pipe, unet_inputs=unet_inputs)), cat) > 0


def test_after_step_sees_every_step_and_its_latents_go_on(pipe):
    steps = []

    def after_step(i, latents):
        steps.append(i)
        return torch.zeros_like(latents) if i == 2 else latents
    zeroed = _draw(pipe, _with_hooks(pipe, after_step=after_step))
    assert steps == [0, 1, 2]
    h = 64 // pipe.vae_scale_factor
    assert _max_diff(zeroed, pipe.decode(torch.zeros(1, pipe.vae.config.latent_channels, h, h))) == 0  # the hook's


def test_a_loras_recommended_sampler_steps_and_guidance_fill_what_the_call_leaves_out(fresh, tmp_path):
    from conftest import random_lora

    from latentgen.lora import formats

    lora = random_lora(fresh, magnitude=0.01)
    lora.metadata.update(formats.Recommendation("lcm", "lcm", 4, 1.0).metadata())
    fresh.load_lora(formats.save(lora, tmp_path / "fast.safetensors"), name="fast")
    assert "Steps: 4, Sampler: LCM, CFG scale: 1.0" in fresh.generate("a cat")[0].info["parameters"]
    assert "Steps: 6, Sampler: LCM, CFG scale: 2.0" in fresh.generate("a cat", steps=6, guidance=2)[0].info["parameters"]
    fresh.set_lora_scale("fast", 0.0)  # an inactive LoRA recommends nothing: the model's defaults again
    assert "Sampler: LCM" not in fresh.generate("a cat", steps=2)[0].info["parameters"]
    # a prompt tag's weight counts in place of the scale: on for its call, off again after
    assert "Steps: 4, Sampler: LCM, CFG scale: 1.0" in fresh.generate("a cat <lora:fast:0.5>")[0].info["parameters"]
    assert fresh.loras.recommended() is None
    fresh.set_lora_scale("fast", 1.0)
    assert "Sampler: LCM" not in fresh.generate("a cat <lora:fast:0>", steps=2)[0].info["parameters"]
    # a tag that names a file not loaded: its header is read before the call's settings
    fresh.unload_lora()
    other = formats.save(lora, tmp_path / "other.safetensors")
    got = fresh.img2img(f"a cat <lora:{other}>", fresh.generate("a cat", steps=2)[0], strength=1.0)[0]
    assert "Steps: 4, Sampler: LCM, CFG scale: 1.0" in got.info["parameters"]
    assert fresh.settings(prompt=f"a cat <lora:{other}>", prompt_syntax="plain").scheduler != "lcm"  # no tags read
