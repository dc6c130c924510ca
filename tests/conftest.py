"""Shared fixtures: a tiny random SD-shaped model saved as a diffusers folder (diffusers' dummy-component
pattern), latentgen's pipeline on it, and diffusers' reference pipeline on the same folder."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    from latentgen import components

    c = components.load("tiny-random")  # seeded random weights
    folder = tmp_path_factory.mktemp("tiny-sd")
    StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                            scheduler=c.scheduler, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def pipe(tiny_folder):
    import latentgen

    return latentgen.load(tiny_folder)


@pytest.fixture(scope="session")
def reference(tiny_folder):
    from diffusers import StableDiffusionPipeline

    ref = StableDiffusionPipeline.from_pretrained(tiny_folder, safety_checker=None)
    ref.set_progress_bar_config(disable=True)
    return ref
