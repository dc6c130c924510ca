"""latentgen.training.tiny_vae: distill-vae on the tiny model: the tiny VAE's shape follows the full one, bad input is
refused before any model loads, training moves it toward the full VAE (``distance``), the folder it writes loads as
a tiny VAE for previews and decoding, and a killed run resumes to the same weights."""

import json

import pytest
import torch
from safetensors.torch import load_file

from latentgen.training import tiny_vae
from latentgen.training.tiny_vae import TinyVaeConfig

TINY = dict(channels=8, steps=4, batch=2, save_every=2, resolution=64, lr=1e-3, warmup=0)


def _run(tiny_folder, data, out, **kw):
    return tiny_vae.run(TinyVaeConfig(data=data, out=out, model=str(tiny_folder), **{**TINY, **kw}))


def _weights(folder):
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def test_the_tiny_vae_has_the_full_ones_latent_shape(tiny_folder):
    """One level per halving: the tiny model's VAE (f = 2) gives 2 levels, SD's (f = 8) TAESD's 4 (blocks 1, 3, 3,
    3 and 3, 3, 3, 1, 64 channels: the published taesd_decoder's layout)."""
    from diffusers import AutoencoderKL

    from latentgen.models import loading

    vae = loading.load_components(str(tiny_folder), device="cpu", dtype="fp32", backend="torch").vae
    small = tiny_vae.tiny_for(vae, 8)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    z = small.encode(x).latents
    assert z.shape == vae.encode(x).latent_dist.mean.shape == (1, 4, 32, 32)
    assert small.decode(z).sample.shape == (1, 3, 64, 64) and small.config.scaling_factor == 1.0
    sd = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                       up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8)
    big = tiny_vae.tiny_for(sd)
    assert (big.config.num_encoder_blocks, big.config.num_decoder_blocks) == ((1, 3, 3, 3), (3, 3, 3, 1))
    assert big.config.decoder_block_out_channels == (64,) * 4
    assert big.encode(torch.zeros(1, 3, 64, 64)).latents.shape == (1, 4, 8, 8)


def test_bad_settings_and_data_are_refused_before_any_model_loads(tmp_path, data):
    no_model = str(tmp_path / "no-such-model")  # were it loaded, the error would name it instead
    for bad, error, message in [(dict(channels=0), ValueError, r"channels=0 is invalid.*such as 64"),
                                (dict(name="../up"), ValueError, r"name='../up' is invalid: use a plain folder name"),
                                (dict(lr=0.0), ValueError, r"lr=0.0"),
                                (dict(crop="zoom"), ValueError, r"crop='zoom'"),
                                (dict(data=tmp_path / "nope"), FileNotFoundError, r"data folder '.*nope' does not exist")]:
        with pytest.raises(error, match=message):
            tiny_vae.run(TinyVaeConfig(**{"data": data, "out": tmp_path / "o", "model": no_model, **TINY, **bad}))
    assert not (tmp_path / "o").exists()


def test_training_brings_it_toward_the_full_vae_and_it_loads_for_previews_and_decoding(tiny_folder, data, tmp_path):
    import latentgen
    from latentgen.training.captioned import prepare, read_dataset

    pipe = latentgen.load(tiny_folder)
    pixels = torch.cat([prepare(p, 64, "center") for p, _ in read_dataset(data, "")])  # (6, 3, 64, 64)
    torch.manual_seed(0)
    before = tiny_vae.distance(tiny_vae.tiny_for(pipe.vae, 8), pipe.vae, pixels)
    folder = _run(tiny_folder, data, tmp_path / "run", steps=30, save_every=30, lr=3e-3)
    assert folder == tmp_path / "run" / "taesd"
    info = json.loads((folder / "latentgen.json").read_text())
    assert info["steps"] == 30 and info["settings"]["channels"] == 8
    small = latentgen.load_tiny_vae(folder)
    after = tiny_vae.distance(small, pipe.vae, pixels)
    assert after["decode"]["mean_abs"] < 0.7 * before["decode"]["mean_abs"], (before, after)
    assert after["latent_rms"]["gap"] < 0.7 * before["latent_rms"]["gap"], (before, after)
    assert after["decode"]["psnr_db"] > before["decode"]["psnr_db"]
    pipe.preview_vae = small
    latents = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    assert pipe.preview(latents, "TAESD")[0].size == (64, 64)
    pipe.vae = small  # decodes and encodes in place of the full VAE
    image = pipe.generate("a purple circle", steps=2)[0]
    assert image.size == (64, 64)
    assert pipe.img2img("a purple circle", image, strength=0.5, steps=2)[0].size == (64, 64)


def test_resume_after_a_kill_is_bit_identical(tiny_folder, data, tmp_path, monkeypatch, kill_after):
    full = _weights(_run(tiny_folder, data, tmp_path / "full", grad_accum=2))
    kill_after(2)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_folder, data, tmp_path / "killed", grad_accum=2)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="--resume"):  # a second run into the same folder must opt in
        _run(tiny_folder, data, tmp_path / "killed", grad_accum=2)
    resumed = _weights(_run(tiny_folder, data, tmp_path / "killed", grad_accum=2, resume=True))
    assert resumed.keys() == full.keys() and all(torch.equal(resumed[k], full[k]) for k in full)
    with pytest.raises(ValueError, match="another run"):  # other settings, same folder
        _run(tiny_folder, data, tmp_path / "killed", grad_accum=2, resume=True, lr=2e-3)


def test_an_sdxl_models_vae_distills_and_serves_its_previews_and_decoding(xl_folder, data, tmp_path):
    """Only the VAE is read, so an SDXL model's distills as SD's does (TAESDXL's role): the result moves toward the
    full VAE and draws and previews in an SDXL pipeline."""
    import latentgen
    from latentgen.training.captioned import prepare, read_dataset

    pipe = latentgen.load(xl_folder)
    pixels = torch.cat([prepare(p, 64, "center") for p, _ in read_dataset(data, "")])
    torch.manual_seed(0)
    before = tiny_vae.distance(tiny_vae.tiny_for(pipe.vae, 8), pipe.vae, pixels)
    folder = _run(xl_folder, data, tmp_path / "run", steps=30, save_every=30, lr=3e-3)
    small = latentgen.load_tiny_vae(folder)
    after = tiny_vae.distance(small, pipe.vae, pixels)
    assert after["decode"]["mean_abs"] < 0.7 * before["decode"]["mean_abs"], (before, after)
    pipe.preview_vae = small
    seen = []
    pipe.generate("a cat", steps=2, callback=lambda i, n, z, d: seen.append(pipe.preview(d, "TAESD")[0].size))
    assert seen == [(64, 64)] * 2
    pipe.vae = small
    assert pipe.generate("a cat", steps=2)[0].size == (64, 64)
