"""latentgen against diffusers' StableDiffusionPipeline on the same tiny random folder: within 1/255."""

import numpy as np
import pytest
import torch

from latentgen import schedulers


def _max_diff(a_images, b_images):
    assert len(a_images) == len(b_images)
    return max(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() for a, b in zip(a_images, b_images))


def _reference(reference, pipe, name, prompt, seed, n, negative, guidance=6.0, steps=4):
    reference.scheduler = schedulers.make(name, pipe.scheduler.config)
    gens = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    return reference(prompt, num_inference_steps=steps, guidance_scale=guidance, negative_prompt=negative,
                     num_images_per_prompt=n, generator=gens[0] if n == 1 else gens,
                     height=64, width=64).images


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


@pytest.mark.parametrize("name", ["pndm", "lms", "heun", "dpm++2m_karras", "dpm++2m_sde", "unipc", "ddpm", "dpm2_a"])
def test_more_samplers_match_diffusers(pipe, reference, name):
    ours = pipe.generate("a blue dog", seed=5, steps=4, guidance=6.0, scheduler=name)
    assert _max_diff(ours, _reference(reference, pipe, name, "a blue dog", 5, 1, None)) <= 1


def test_no_guidance_and_prompt_lists_match_diffusers(pipe, reference):
    prompts = ["a red cat", "a green square"]
    ours = pipe.generate(prompts, seed=3, steps=3, guidance=1.0, num_images=2, scheduler="euler_a")
    reference.scheduler = schedulers.make("euler_a", pipe.scheduler.config)
    gens = [torch.Generator().manual_seed(3 + i) for i in range(4)]
    ref = reference(prompts, num_inference_steps=3, guidance_scale=1.0, num_images_per_prompt=2,
                    generator=gens, height=64, width=64).images
    assert _max_diff(ours, ref) <= 1


def test_default_scheduler_is_the_folders(pipe, reference):
    reference.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    ref = reference("a cat", num_inference_steps=3, guidance_scale=7.5, generator=torch.Generator().manual_seed(0),
                    height=64, width=64).images
    assert _max_diff(pipe.generate("a cat", steps=3), ref) <= 1
