"""The training recipe on tiny settings: deterministic given a seed, resumable after a kill, exportable."""

import json

import pytest
import torch
from safetensors.torch import load_file

from latentgen import recipe, train

TINY = dict(vae_steps=2, vae_batch=2, steps=4, batch=2, save_every=2, warmup=1)


def _weights(model_dir):
    return {f"{sub}.{k}": v for sub, name in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                                              ("text_encoder", "model"))
            for k, v in load_file(model_dir / sub / f"{name}.safetensors").items()}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run-a")
    return recipe.run(recipe.RecipeConfig(out=out, **TINY))


def test_same_seed_same_weights(first_run, tmp_path):
    again = recipe.run(recipe.RecipeConfig(out=tmp_path, **TINY))
    a, b = _weights(first_run), _weights(again)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = _weights(recipe.run(recipe.RecipeConfig(out=tmp_path / "seed1", seed=1, **TINY)))
    assert any(not torch.equal(a[k], other[k]) for k in a)


def test_export_is_a_diffusers_folder(first_run):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(first_run, safety_checker=None)
    assert pipe.vae.config.scaling_factor != 1.0  # measured from the latents
    info = json.loads((first_run / "recipe.json").read_text())
    assert info["config"]["steps"] == TINY["steps"] and info["data"]["held_out"] == ["purple", "star"]


def test_killed_run_resumes_to_the_same_weights(first_run, tmp_path, monkeypatch):
    real_save, calls = train.save, []

    def save_then_die(acc, cfg, step, stamp):
        real_save(acc, cfg, step, stamp)
        calls.append(step)
        if stamp["stage"] == "diffusion" and step == 2:
            raise KeyboardInterrupt("killed after the step-2 checkpoint")

    monkeypatch.setattr(train, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        recipe.run(recipe.RecipeConfig(out=tmp_path, **TINY))
    assert not (tmp_path / "model").exists()
    monkeypatch.setattr(train, "save", real_save)
    resumed = recipe.run(recipe.RecipeConfig(out=tmp_path, **TINY))
    a, b = _weights(first_run), _weights(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_resuming_another_run_is_refused(tmp_path):
    recipe.run(recipe.RecipeConfig(out=tmp_path, **TINY))
    with pytest.raises(ValueError, match="belongs to another run"):
        recipe.run(recipe.RecipeConfig(out=tmp_path, **{**TINY, "lr": 1e-2}))


@pytest.mark.parametrize("field, value", [("steps", 0), ("batch", -1), ("caption_dropout", 1.0),
                                          ("vae_open_colors", 1.5)])
def test_bad_recipe_settings(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        recipe.run(recipe.RecipeConfig(out=tmp_path, **{**TINY, field: value}))


def test_open_color_vae_images_change_the_vae_only(first_run, tmp_path):
    """vae_open_colors draws some VAE images in random RGB from a separate random stream."""
    import json

    run = recipe.run(recipe.RecipeConfig(out=tmp_path, vae_open_colors=1.0, **TINY))
    a, b = _weights(first_run), _weights(run)
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("vae."))
    assert json.loads((run / "recipe.json").read_text())["config"]["vae_open_colors"] == 1.0
