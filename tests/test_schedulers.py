"""latentgen.schedulers: every sampler against diffusers' on the same tiny random folder (within 1/255),
and the folder's own scheduler as the default."""

import pytest
import torch

from conftest import max_diff as _max_diff
from conftest import reference_images as _reference


@pytest.mark.parametrize("name", ["pndm", "lms", "heun", "dpm++2m_karras", "dpm++2m_sde", "unipc", "ddpm", "dpm2_a"])
def test_more_samplers_match_diffusers(pipe, reference, name):
    ours = pipe.generate("a blue dog", seed=5, steps=4, guidance=6.0, scheduler=name)
    assert _max_diff(ours, _reference(reference, pipe, name, "a blue dog", 5, 1, None)) <= 1


def test_default_scheduler_is_the_folders(pipe, reference):
    reference.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    ref = reference("a cat", num_inference_steps=3, guidance_scale=7.5, generator=torch.Generator().manual_seed(0),
                    height=64, width=64).images
    assert _max_diff(pipe.generate("a cat", steps=3), ref) <= 1
