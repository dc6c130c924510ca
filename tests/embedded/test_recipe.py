"""The training recipe on tiny settings: deterministic given a seed, resumable after a kill, exportable."""

import json

import pytest
import torch
from safetensors.torch import load_file

from latentgen import train
from latentgen.embedded import recipe

TINY = dict(vae_steps=2, vae_batch=2, decoder_steps=2, steps=4, batch=2, save_every=2, warmup=1)


def _weights(model_dir):
    return {f"{sub}.{k}": v for sub, name in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                                              ("text_encoder", "model"))
            for k, v in load_file(model_dir / sub / f"{name}.safetensors").items()}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run-a")
    return recipe.run(recipe.RecipeConfig(out=out, **TINY))


@pytest.mark.slow  # trains the three-stage recipe (tiny settings)
def test_same_seed_same_weights(first_run, tmp_path):
    again = recipe.run(recipe.RecipeConfig(out=tmp_path, **TINY))
    a, b = _weights(first_run), _weights(again)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = _weights(recipe.run(recipe.RecipeConfig(out=tmp_path / "seed1", seed=1, **TINY)))
    assert any(not torch.equal(a[k], other[k]) for k in a)


@pytest.mark.slow  # trains the three-stage recipe (tiny settings)
def test_export_is_a_diffusers_folder(first_run):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(first_run, safety_checker=None)
    assert pipe.vae.config.scaling_factor != 1.0  # measured from the latents
    info = json.loads((first_run / "recipe.json").read_text())
    assert info["config"]["steps"] == TINY["steps"] and info["data"]["held_out"] == ["purple", "star"]


@pytest.mark.slow  # trains the three-stage recipe (tiny settings)
def test_killed_run_resumes_to_the_same_weights(first_run, tmp_path, monkeypatch):
    real_save, calls = train.save, []

    def save_then_die(acc, cfg, step, stamp, seconds=0.0):
        real_save(acc, cfg, step, stamp, seconds)
        calls.append((step, seconds))
        if stamp["stage"] == "diffusion" and step == 2:
            raise KeyboardInterrupt("killed after the step-2 checkpoint")

    monkeypatch.setattr(train, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        recipe.run(recipe.RecipeConfig(out=tmp_path, **TINY))
    assert not (tmp_path / "model").exists()
    killed_at = train.elapsed_seconds(tmp_path / "diffusion")
    assert killed_at == round(calls[-1][1], 1) > 0
    monkeypatch.setattr(train, "save", real_save)
    resumed = recipe.run(recipe.RecipeConfig(out=tmp_path, **TINY))
    a, b = _weights(first_run), _weights(resumed)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # the time of the killed invocation counts in the total
    assert train.elapsed_seconds(tmp_path / "diffusion") > killed_at
    total = json.loads((resumed / "recipe.json").read_text())["train_seconds"]
    assert total == pytest.approx(sum(train.elapsed_seconds(tmp_path / s) for s in ("vae", "diffusion", "decoder")),
                                  abs=0.11)


@pytest.mark.slow  # trains the three-stage recipe (tiny settings)
def test_a_vae_trained_alone_is_reused_by_the_full_run(first_run, tmp_path, monkeypatch):
    """Stage 1 depends only on the VAE settings: train it with a token stage 2, check it, then go on."""
    import shutil

    recipe.run(recipe.RecipeConfig(out=tmp_path, **{**TINY, "steps": 1}))
    shutil.rmtree(tmp_path / "diffusion")  # the token stage 2 has other settings: start it afresh
    stages = []
    real_run = train.run
    monkeypatch.setattr(train, "run", lambda cfg, *a, **k: stages.append(k["desc"]) or real_run(cfg, *a, **k))
    real_save = train.save
    saved = []
    monkeypatch.setattr(train, "save", lambda acc, cfg, step, *a, **k: saved.append(cfg.out.name) or real_save(acc, cfg, step, *a, **k))
    full = recipe.run(recipe.RecipeConfig(out=tmp_path, **TINY))
    assert stages == ["vae", "unet", "decoder"] and set(saved) == {"diffusion"}  # VAE and decoder were loaded
    a, b = _weights(first_run), _weights(full)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.slow  # trains the three-stage recipe (tiny settings)
def test_resuming_another_run_is_refused(tmp_path):
    recipe.run(recipe.RecipeConfig(out=tmp_path, **TINY))
    with pytest.raises(ValueError, match="belongs to another run"):
        recipe.run(recipe.RecipeConfig(out=tmp_path, **{**TINY, "lr": 1e-2}))


@pytest.mark.parametrize("field, value", [("steps", 0), ("batch", -1), ("caption_dropout", 1.0),
                                          ("vae_open_colors", 1.5), ("decoder_open_colors", 2.0),
                                          ("decoder_steps", 0)])
def test_bad_recipe_settings(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        recipe.run(recipe.RecipeConfig(out=tmp_path, **{**TINY, field: value}))


@pytest.mark.slow  # trains the three-stage recipe (tiny settings)
def test_open_color_vae_images_change_the_vae(first_run, tmp_path):
    """vae_open_colors draws some VAE images in random RGB from a separate random stream."""
    assert recipe.RecipeConfig(out=tmp_path).vae_open_colors == 0.25  # the shipped model's setting
    run = recipe.run(recipe.RecipeConfig(out=tmp_path, vae_open_colors=1.0, **TINY))
    a, b = _weights(first_run), _weights(run)
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("vae."))
    assert json.loads((run / "recipe.json").read_text())["config"]["vae_open_colors"] == 1.0


@pytest.mark.slow  # trains the three-stage recipe (tiny settings)
def test_the_decoder_stage_keeps_the_encoder(first_run):
    """Stage 3 trains the decoder alone: the encoder, hence the U-Net's latents, stay as after stage 1."""
    stage1 = {k[len("vae."):]: v for k, v in
              load_file(train.latest_checkpoint(first_run.parent / "vae")[0] / "model.safetensors").items()}
    final = load_file(first_run / "vae" / "diffusion_pytorch_model.safetensors")
    assert final.keys() == stage1.keys()
    frozen = [k for k in final if not k.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and all(torch.equal(final[k], stage1[k]) for k in frozen)
    assert any(not torch.equal(final[k], stage1[k]) for k in final if k.startswith("decoder."))
