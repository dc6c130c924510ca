"""The training recipe on tiny settings: deterministic given a seed, resumable after a kill, exportable."""

import json

import pytest
import torch
from safetensors.torch import load_file

from latentgen.training import loop as train
from latentgen.embedded import recipe

TINY = dict(vae_steps=2, vae_batch=2, decoder_steps=2, steps=4, batch=2, save_every=2, warmup=1, inpaint_steps=2)


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
    assert json.loads((first_run / "latentgen.json").read_text())["mask_blur"] == 2  # every default, the preset's


def test_the_export_writes_the_tokenizer_as_loaded(tmp_path):
    """Tokenizing captions leaves its padding on a fast tokenizer (transformers 5); the exported tokenizer
    files carry none of it (some runs wrote it into tokenizer.json, depending on which stages they resumed)."""
    cfg = recipe.RecipeConfig(out=tmp_path, **TINY)
    c = recipe.build(cfg)
    recipe.export(c, cfg, tmp_path / "before", seconds=0.0)
    train.tokenize(c.tokenizer, ["a red circle on a blue background"])
    recipe.export(c, cfg, tmp_path / "after", seconds=0.0)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "after" / "tokenizer" / name).read_bytes() == \
            (tmp_path / "before" / "tokenizer" / name).read_bytes(), name
    assert json.loads((tmp_path / "after" / "tokenizer" / "tokenizer.json").read_text())["padding"] is None


@pytest.mark.slow  # trains the three-stage recipe (tiny settings)
def test_killed_run_resumes_to_the_same_weights(first_run, tmp_path, monkeypatch):
    real_save, calls = train.save, []

    def save_then_die(acc, cfg, step, stamp, seconds=0.0, ema=None):
        real_save(acc, cfg, step, stamp, seconds, ema=ema)
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
    stages = ("vae", "diffusion", "inpainting", "decoder")
    assert total == pytest.approx(sum(train.elapsed_seconds(tmp_path / s) for s in stages), abs=0.11)


@pytest.mark.slow  # trains the three-stage recipe (tiny settings)
def test_a_vae_trained_alone_is_reused_by_the_full_run(first_run, tmp_path, monkeypatch):
    """Stage 1 depends only on the VAE settings: train it with a token stage 2, check it, then go on."""
    import shutil

    recipe.run(recipe.RecipeConfig(out=tmp_path, **{**TINY, "steps": 1}))
    for stage in ("diffusion", "inpainting"):  # the token stage 2 (and the variant made from it): start afresh
        shutil.rmtree(tmp_path / stage)
    stages = []
    real_run = train.run
    monkeypatch.setattr(train, "run", lambda cfg, *a, **k: stages.append(k["desc"]) or real_run(cfg, *a, **k))
    real_save = train.save
    saved = []
    monkeypatch.setattr(train, "save", lambda acc, cfg, step, *a, **k: saved.append(cfg.out.name) or real_save(acc, cfg, step, *a, **k))
    full = recipe.run(recipe.RecipeConfig(out=tmp_path, **TINY))
    assert stages == ["vae", "unet", "inpaint", "decoder"] and set(saved) == {"diffusion", "inpainting"}  # VAE, decoder loaded
    a, b = _weights(first_run), _weights(full)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.slow  # trains the three-stage recipe (tiny settings)
def test_resuming_another_run_is_refused(tmp_path):
    recipe.run(recipe.RecipeConfig(out=tmp_path, **TINY))
    with pytest.raises(ValueError, match="belongs to another run"):
        recipe.run(recipe.RecipeConfig(out=tmp_path, **{**TINY, "lr": 1e-2}))


@pytest.mark.parametrize("field, value", [("steps", 0), ("batch", -1), ("caption_dropout", 1.0),
                                          ("vae_open_colors", 1.5), ("decoder_open_colors", 2.0),
                                          ("decoder_steps", 0), ("decoder_line", -1.0), ("inpaint_steps", -1),
                                          ("decoder_open_shapes", 1.5), ("vae_open_shapes", -0.1), ("plain", 1.5),
                                          ("ema", 1.0), ("decoder_edge", -1.0), ("decoder_gan", -0.5),
                                          ("decoder_gan_start", -1), ("vae_line", -1.0),
                                          ("vae_autocast", "fp16"),
                                          ("vae_edge", -1.0)])
def test_bad_recipe_settings(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        recipe.run(recipe.RecipeConfig(out=tmp_path, **{**TINY, field: value}))
    assert not any(tmp_path.iterdir())  # refused before any stage ran


@pytest.mark.slow  # trains the recipe (tiny settings)
def test_ema_exports_averaged_stage_2_weights(first_run, tmp_path):
    """ema averages the U-Net and text encoder of stage 2; stage 1's VAE, which it does not touch, is reused."""
    run = recipe.run(recipe.RecipeConfig(out=tmp_path, ema=0.5, **TINY))
    a, b = _weights(first_run), _weights(run)
    for part in ("unet.", "text_encoder."):
        assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith(part)), part
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("vae.encoder."))
    assert json.loads((run / "recipe.json").read_text())["config"]["ema"] == 0.5


@pytest.mark.slow  # trains the recipe (tiny settings)
def test_bf16_autocast_of_the_vae_stages_keeps_fp32_weights(first_run, tmp_path):
    """vae_autocast='bf16' runs the VAE stages under autocast: other numbers than fp32, weights still fp32."""
    run = recipe.run(recipe.RecipeConfig(out=tmp_path, vae_autocast="bf16", **TINY))
    a, b = _weights(first_run), _weights(run)
    assert a.keys() == b.keys() and all(v.dtype == torch.float32 for v in b.values())
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("vae.encoder."))
    assert json.loads((run / "recipe.json").read_text())["config"]["vae_autocast"] == "bf16"


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


@pytest.mark.slow  # trains the recipe's last two stages (tiny settings)
def test_a_continued_run_starts_from_its_init(first_run, tmp_path, monkeypatch):
    """init=RUN/model: stages 1-2 are not run; the text encoder and U-Net stay the init's, the decoder stage
    (here with the off-blend penalty) and the inpainting variant start from it; the time adds up."""
    stages = []
    real_run = train.run
    monkeypatch.setattr(train, "run", lambda cfg, *a, **k: stages.append(k["desc"]) or real_run(cfg, *a, **k))
    run = recipe.run(recipe.RecipeConfig(out=tmp_path, init=first_run, decoder_line=4.0, decoder_open_shapes=1.0,
                                         **TINY))
    assert stages == ["inpaint", "decoder"]
    a, b = _weights(first_run), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("unet.", "text_encoder.", "vae.encoder.")))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("vae.decoder."))
    info = json.loads((run / "recipe.json").read_text())
    before = json.loads((first_run / "recipe.json").read_text())["train_seconds"]
    assert info["init"]["recipe"]["train_seconds"] == before and len(info["init"]["sha256"]) == 64
    assert info["train_seconds"] > before and info["config"]["decoder_line"] == 4.0
    nine = load_file(tmp_path / "inpainting-model" / "unet" / "diffusion_pytorch_model.safetensors")
    assert nine["conv_in.weight"].shape[1] == 9
    with pytest.raises(FileNotFoundError, match="init"):
        recipe.run(recipe.RecipeConfig(out=tmp_path / "x", init=tmp_path, **TINY))


def test_open_shapes_draw_stars_and_plain_frames_have_one_color(tmp_path):
    """open_shapes: some VAE/decoder images take any shape (the star LoRA needs a VAE that draws stars);
    plain: some are the background alone, their two colors the same; 0 leaves the batches as they were."""
    import numpy as np
    from PIL import Image

    from latentgen.embedded import autoencoder, shapes

    acc = type("A", (), {"process_index": 0, "device": "cpu"})()
    cfg = recipe.RecipeConfig(out=tmp_path, vae_batch=64)
    plain = autoencoder.pixel_batches(cfg, "decoder", 64, 0.0)(3, 0, acc)["pixels"]
    same = autoencoder.pixel_batches(cfg, "decoder", 64, 0.0, 0.0, 0.0)(3, 0, acc)["pixels"]
    opened = autoencoder.pixel_batches(cfg, "decoder", 64, 0.0, 1.0)(3, 0, acc)["pixels"]
    assert torch.equal(plain, same) and not torch.equal(plain, opened)
    read = lambda x: [shapes.read(Image.fromarray(a)).shape for a in  # noqa: E731
                      ((x + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy().astype(np.uint8)]
    assert "star" not in read(plain) and read(opened).count("star") >= 8
    flat = autoencoder.pixel_batches(cfg, "vae", 64, 0.25, 0.0, 1.0)(3, 0, acc)
    assert all(len(torch.unique(x.reshape(3, -1), dim=1).T) == 1 for x in flat["pixels"])  # one color each
    assert torch.equal(flat["colors"][:, 0], flat["colors"][:, 1])
    assert torch.allclose(flat["pixels"][:, :, 0, 0], flat["colors"][:, 1], atol=1e-6)  # the background's
    some = autoencoder.pixel_batches(cfg, "vae", 64, 0.0, 0.0, 0.3)(3, 0, acc)["pixels"]
    flats = sum(len(torch.unique(x.reshape(3, -1), dim=1).T) == 1 for x in some)
    assert 8 <= flats <= 32
