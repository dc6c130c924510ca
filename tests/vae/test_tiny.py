"""latentgen.vae.tiny: TAESD as diffusers' AutoencoderTiny, from every layout it is published in, decoding and
encoding in the loop as diffusers' pipelines do with it (within 1/255), and refusals that name the fix."""

from pathlib import Path

import pytest
import torch
import diffusers
from conftest import max_diff, photo
from diffusers import AutoencoderTiny
from safetensors.torch import save_file

import latentgen
from latentgen.models.presets import data_dir
from latentgen.vae import tiny


@pytest.fixture(scope="module")
def taesd(tmp_path_factory):
    """A seeded random AutoencoderTiny, saved as a diffusers folder, one diffusers file and TAESD's part files."""
    torch.manual_seed(0)
    vae = AutoencoderTiny().eval()
    for p in vae.parameters():  # random init decodes near-constant pictures; spread the weights a little
        p.data.add_(torch.randn_like(p) * 0.02)
    root = tmp_path_factory.mktemp("taesd")
    vae.save_pretrained(root / "folder")
    state = vae.state_dict()
    save_file(state, root / "diffusers.safetensors")
    dec = {f"{int(k.split('.')[2]) + 1}.{k.split('.', 3)[3]}": v for k, v in state.items() if k.startswith("decoder.")}
    enc = {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith("encoder.")}
    (root / "pair").mkdir()
    save_file(dec, root / "pair" / "taesd_decoder.safetensors")
    save_file(enc, root / "pair" / "taesd_encoder.safetensors")
    (root / "alone").mkdir()
    torch.save(dec, root / "alone" / "taesd_decoder.pth")
    return vae, root


def reference_with(vae, cls_name, folder):
    """diffusers' pipeline built with the tiny VAE (it reads its scale factor, 8, when built)."""
    ref = getattr(diffusers, cls_name).from_pretrained(folder, vae=vae, safety_checker=None)
    ref.set_progress_bar_config(disable=True)
    return ref


@pytest.mark.parametrize("where", ["folder", "diffusers.safetensors", "pair/taesd_decoder.safetensors",
                                   "pair/taesd_encoder.safetensors"])
def test_every_layout_loads_the_same_weights(taesd, where):
    vae, root = taesd
    assert tiny.is_tiny(root / where)
    got = tiny.load(root / where).state_dict()
    assert got.keys() == vae.state_dict().keys()
    assert all(torch.equal(got[k], v) for k, v in vae.state_dict().items())


def test_a_decoder_alone_decodes_and_refuses_to_encode_up_front(taesd, tiny_folder):
    vae, root = taesd
    path = root / "alone" / "taesd_decoder.pth"
    pipe = latentgen.load(tiny_folder, vae=path)
    assert tiny.is_loaded(pipe.vae) and pipe.vae_scale_factor == 8
    z = torch.randn(1, 4, 8, 8)
    assert torch.equal(pipe.vae.decode(z).sample, vae.decode(z).sample)
    for call in (lambda: pipe.img2img("x", photo()), lambda: pipe.inpaint("x", photo(), photo())):
        with pytest.raises(ValueError, match="taesd_decoder.pth is a decoder only.*taesd_encoder"):
            call()


def test_generate_with_a_tiny_vae_matches_diffusers(taesd, tiny_folder, fresh):
    vae, _ = taesd
    fresh.vae = vae
    ref = reference_with(vae, "StableDiffusionPipeline", tiny_folder)
    gens = [torch.Generator().manual_seed(s) for s in (3, 4)]
    want = ref("a cat", num_inference_steps=3, guidance_scale=6.0, num_images_per_prompt=2, generator=gens,
               height=64, width=64).images
    got = fresh.generate("a cat", seed=3, steps=3, guidance=6.0, num_images=2)
    assert max_diff(got, want) <= 1
    assert len(set(im.tobytes() for im in got)) == 2  # the images differ: the test can fail


def test_img2img_encodes_with_the_tiny_encoder_as_diffusers(taesd, tiny_folder, fresh):
    vae, _ = taesd
    fresh.vae = vae
    ref = reference_with(vae, "StableDiffusionImg2ImgPipeline", tiny_folder)
    want = ref("a cat", image=photo(), strength=0.6, num_inference_steps=5, guidance_scale=6.0,
               generator=torch.Generator().manual_seed(7)).images
    got = fresh.img2img("a cat", photo(), strength=0.6, seed=7, steps=5, guidance=6.0)
    assert max_diff(got, want) <= 1


def test_bad_files_are_refused_naming_the_fix(taesd, tmp_path, tiny_folder):
    vae, root = taesd
    with pytest.raises(FileNotFoundError, match="taesd_decoder.safetensors"):
        tiny.load(tmp_path / "missing.safetensors")
    save_file({"weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    assert not tiny.is_tiny(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not a tiny autoencoder"):
        tiny.load(tmp_path / "other.safetensors")
    wide = {k: v for k, v in vae.state_dict().items() if k.startswith("decoder.")}
    wide["decoder.layers.0.weight"] = torch.zeros(64, 16, 3, 3)  # a 16-channel (SD3/Flux) decoder
    save_file(wide, tmp_path / "taesd3_decoder.safetensors")
    with pytest.raises(ValueError, match="vae=.*16-channel latents.*4"):
        latentgen.load(tiny_folder, vae=tmp_path / "taesd3_decoder.safetensors")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(ValueError, match="not an AutoencoderTiny folder"):
        tiny.load(tmp_path / "folder")


def test_the_shipped_tiny_vae_is_found_by_name_wherever_a_tiny_vae_is_taken(tmp_path, monkeypatch):
    """"default-tiny-vae" names weights/default-tiny-vae for ``load_tiny_vae``, ``load(vae=)``, ``--vae`` and the
    server's ``--preview-vae``; a file or folder of that name in the working directory wins."""
    import argparse

    import latentgen
    from latentgen import vae
    from latentgen.cli.args import vae_file
    from latentgen.serve import ServeConfig

    assert vae.resolve("default-tiny-vae") == data_dir("weights") / "default-tiny-vae"
    assert tiny.is_tiny("default-tiny-vae") and vae_file("default-tiny-vae") == "default-tiny-vae"
    ServeConfig(preview_vae="default-tiny-vae").check()
    small = latentgen.load_tiny_vae("default-tiny-vae")
    assert small.config.latent_channels == 4 and small.config.scaling_factor == 1.0
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default-tiny-vae").mkdir()  # the user's own folder of that name: taken as a path, and not tiny
    assert vae.resolve("default-tiny-vae") == Path("default-tiny-vae") and not tiny.is_tiny("default-tiny-vae")
    with pytest.raises(argparse.ArgumentTypeError, match="no VAE file at 'nope'.*default-tiny-vae"):
        vae_file("nope")
