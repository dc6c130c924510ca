"""Single-file checkpoints (latentgen.models.checkpoints, latentgen.models.single_file, latentgen.models.ldm): SD 1.x files
written in the LDM layout from diffusers folders load to the same images, through every file format
and key layout people have; what is not SD 1.x/2.x, unsafe or damaged is refused by name; export.

Files are written with latentgen.models.ldm's names, which diffusers' own readers (convert_ldm_*) invert
exactly (test_layout_is_what_diffusers_reads) and diffusers' from_single_file loads to the same images."""

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import max_diff
from safetensors.torch import load_file, save_file

import latentgen
from latentgen.models import export as ldm_export
from latentgen.models import checkpoints, ldm, loading
from latentgen.models.presets import load_preset

ARGS = dict(seed=3, steps=4, guidance=6.0, width=64, height=64, scheduler="ddim")


def ldm_file(c, path, *, flat_clip=False, extra=None, fmt="safetensors"):
    """Write components ``c`` as an LDM single file (no header: nothing but tensors)."""
    sd = ldm_export.ldm_state_dict(c)
    if flat_clip:  # transformers 5 names: cond_stage_model.transformer.encoder... (no text_model.)
        sd = {k.replace(ldm.CLIP + "text_model.", ldm.CLIP): v for k, v in sd.items()}
    sd.update(extra or {})
    if fmt == "ckpt":
        torch.save({"state_dict": sd, "global_step": np.int64(7)}, path)
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def tiny(tiny_folder):
    return loading.load_components(tiny_folder)


@pytest.fixture(scope="module")
def tiny_file(tiny, tmp_path_factory):
    return ldm_file(tiny, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def test_single_file_draws_what_the_folder_draws(pipe, tiny_file):
    single = latentgen.load(tiny_file)
    assert single.name == "tiny" and single.defaults == load_preset("tiny-random").defaults  # the closest preset
    assert max_diff(single.generate("a red cat", **ARGS), pipe.generate("a red cat", **ARGS)) <= 1
    assert single.scheduler.config.prediction_type == "epsilon"


def test_diffusers_from_single_file_agrees(pipe, tiny_folder, tiny_file):
    from diffusers import StableDiffusionPipeline

    ref = StableDiffusionPipeline.from_single_file(str(tiny_file), config=str(tiny_folder), local_files_only=True,
                                                   safety_checker=None)
    ref.set_progress_bar_config(disable=True)
    want = ref("a red cat", num_inference_steps=4, guidance_scale=6.0, height=64, width=64,
               generator=torch.Generator().manual_seed(3)).images
    assert max_diff(latentgen.load(tiny_file).generate("a red cat", **ARGS), want) <= 1


def test_both_clip_key_layouts(tiny, tmp_path):
    a = latentgen.load(ldm_file(tiny, tmp_path / "t4.safetensors"))
    b = latentgen.load(ldm_file(tiny, tmp_path / "t5.safetensors", flat_clip=True))
    assert any(k.startswith(ldm.CLIP + "encoder.") for k in load_file(tmp_path / "t5.safetensors"))
    sa, sb = a.text_encoder.state_dict(), b.text_encoder.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_inpainting_file(tmp_path):
    from diffusers import UNet2DConditionModel

    c = loading.load_components("tiny-random")
    torch.manual_seed(1)
    c = replace(c, unet=UNet2DConditionModel.from_config({**c.unet.config, "in_channels": 9}).eval())
    single = latentgen.load(ldm_file(c, tmp_path / "inpaint.safetensors"))
    assert single.unet.config.in_channels == 9
    folder = latentgen.Pipeline.from_components(c)
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    kw = dict(seed=1, steps=3, guidance=5.0, scheduler="ddim")
    assert max_diff(single.inpaint("a cat", image, mask, **kw), folder.inpaint("a cat", image, mask, **kw)) <= 1


def test_embedded_model_file(tmp_path):
    path = ldm_file(loading.load_components(None), tmp_path / "embedded.safetensors")
    single, default = latentgen.load(path), latentgen.load()
    assert single.vae.config.scaling_factor == default.vae.config.scaling_factor != 0.18215  # the trained folder's
    prompt = "a red circle on a blue background"
    assert max_diff(single.generate(prompt, seed=0), default.generate(prompt, seed=0)) <= 1


def test_ckpt_with_ema_through_weights_only(tiny, tmp_path):
    unet = {k: v for k, v in ldm_export.ldm_state_dict(tiny).items() if k.startswith(ldm.UNET)}
    ema = {"model_ema." + "".join(k.split(".")[1:]): v + 0.01 for k, v in unet.items()}
    path = ldm_file(tiny, tmp_path / "ema.ckpt", fmt="ckpt", extra={**ema, "model_ema.decay": torch.tensor(0.999)})
    single = latentgen.load(path)
    assert single.name == "ema (EMA)" and "EMA" in repr(single)
    got = single.unet.state_dict()["conv_in.weight"]
    assert torch.equal(got, tiny.unet.state_dict()["conv_in.weight"] + 0.01)


class _Trap:
    """Unpickling this would call _sprung: a pickle that needs code."""

    def __reduce__(self):
        return (_sprung, ())


SPRUNG = []


def _sprung():
    SPRUNG.append(1)


def test_pickle_with_code_is_refused_without_running_it(tiny, tmp_path):
    path = ldm_file(tiny, tmp_path / "evil.ckpt", fmt="ckpt", extra={"payload": _Trap()})
    with pytest.raises(ValueError, match=r"needs code.*_sprung.*safetensors"):
        latentgen.load(path)
    assert SPRUNG == []


def _keys_file(path, keys):
    save_file({k: torch.zeros(1) for k in keys}, str(path))
    return path


@pytest.mark.parametrize("keys, words", [
    (["conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
      "model.diffusion_model.input_blocks.0.0.weight"], "SDXL"),
    (["double_blocks.0.img_attn.norm.key_norm.scale", "img_in.weight"], "flux"),
    (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], "load_lora"),
    (["encoder.down.0.block.0.conv1.weight", "decoder.conv_in.weight"], "vae="),
    (["something.else"], "something.else"),
    # what diffusers' convert_diffusers_to_original_stable_diffusion.py writes from a model not shaped as SD
    (["model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.up_blocks.0.attentions.0.norm.bias"],
     "latentgen export FOLDER"),
])
def test_other_files_are_named(tmp_path, keys, words):
    with pytest.raises(ValueError, match=words):
        latentgen.load(_keys_file(tmp_path / "other.safetensors", keys))


def test_damaged_files(tiny_file, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(tiny_file.read_bytes()[: os.path.getsize(tiny_file) // 2])
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"PK\x03\x04" + bytes(100))
    for path in (cut, junk, tmp_path / "empty.safetensors"):
        path.touch()
        with pytest.raises(ValueError, match="truncated"):
            latentgen.load(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        latentgen.load(tmp_path / "missing.safetensors")


def test_formats_are_sniffed_by_structure_not_one_byte(tiny_file, tmp_path):
    """A safetensors header whose length's low byte is 0x80 (a pickle's first byte), cut short: still read as
    safetensors, and refused as truncated, never handed to torch.load (1 file in 256 was before)."""
    def header_of_length(n):
        pad = " " * 200
        for extra in range(256):  # metadata that brings the header's length to n mod 256
            text = json.dumps({"__metadata__": {"pad": pad + " " * extra}, "w": {"dtype": "F32", "shape": [2],
                                                                                   "data_offsets": [0, 8]}})
            if len(text) % 256 == n:
                return text.encode()
    header = header_of_length(0x80)
    for name, data in [("whole", header), ("cut", header[:-40])]:
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(len(header).to_bytes(8, "little") + data + (bytes(8) if name == "whole" else b""))
        assert path.read_bytes()[0] == 0x80 and checkpoints.sniff(path) == "safetensors"
    with pytest.raises(ValueError, match=r"cut.safetensors is not a readable .safetensors file \(truncated"):
        latentgen.load(tmp_path / "cut.safetensors")
    torch.save({"w": torch.zeros(2)}, tmp_path / "a.ckpt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "b.pt", _use_new_zipfile_serialization=False)
    assert (checkpoints.sniff(tmp_path / "a.ckpt"), checkpoints.sniff(tmp_path / "b.pt")) == ("torch zip", "pickle")
    assert checkpoints.sniff(tiny_file) == "safetensors"
    (tmp_path / "text.ckpt").write_text("hello, not weights")
    with pytest.raises(ValueError, match=r"text.ckpt is neither a .safetensors file nor a torch checkpoint"):
        checkpoints.sniff(tmp_path / "text.ckpt")


@pytest.mark.parametrize("missing", [ldm.UNET + "out.2.weight", ldm.VAE + "encoder.conv_in.weight",
                                     ldm.CLIP + "text_model.embeddings.token_embedding.weight",
                                     ldm.UNET + "input_blocks.1.0.out_layers.3.weight"])
def test_a_file_without_a_tensor_every_model_has_is_named_incomplete(tiny, tmp_path, missing):
    sd = {k: v for k, v in ldm_export.ldm_state_dict(tiny).items() if k != missing}
    path = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    with pytest.raises(ValueError, match=r"partial\.safetensors: no tensor .* the file is incomplete"):
        latentgen.load(path)


def test_vae_files_in_three_layouts(tiny, tiny_folder, tmp_path):
    vae = {k: v + 0.01 for k, v in tiny.vae.state_dict().items()}
    ldm_vae = ldm.vae_to_ldm(vae, tiny.vae.config, prefix="")
    files = {"bare": ldm_vae, "prefixed": {ldm.VAE + k: v for k, v in ldm_vae.items()}, "diffusers": vae}
    for name, tensors in files.items():
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / f"{name}.safetensors"))
        got = latentgen.load(tiny_folder, vae=tmp_path / f"{name}.safetensors").vae.state_dict()
        assert all(torch.equal(got[k], vae[k]) for k in vae), name


def test_vae_of_another_shape_is_refused(tmp_path, tiny_folder, tiny_file):
    from diffusers import AutoencoderKL

    wide = AutoencoderKL(block_out_channels=(32, 64), latent_channels=16, norm_num_groups=32,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    path = tmp_path / "flux-like-vae.safetensors"
    save_file({k: v.contiguous() for k, v in ldm.vae_to_ldm(wide.state_dict(), wide.config).items()}, str(path))
    for source in (tiny_folder, tiny_file, "tiny-random"):
        with pytest.raises(ValueError, match="vae=flux-like-vae.safetensors: VAE latent_channels=16"):
            latentgen.load(source, vae=path)


