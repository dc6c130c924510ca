"""latentgen.models.xl_file: SDXL single files. latentgen's export of the tiny SDXL folder is an SGM-layout file
that diffusers' own reader (``StableDiffusionXLPipeline.from_single_file``) loads to the folder's image, and that
latentgen loads to the same image, with its header and without it (sizes from the shapes over the closest SDXL
preset); a refiner and an incomplete file are refused by name."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import latentgen
from conftest import diffusers_pipeline, max_diff
from latentgen.models import export, xl_file

ARGS = dict(seed=4, steps=3, guidance=5.0, scheduler="euler")


@pytest.fixture(scope="module")
def xl_file_path(xl_folder, tmp_path_factory):
    return export.export(xl_folder, tmp_path_factory.mktemp("xl-file") / "tiny-xl.safetensors")


@pytest.fixture(scope="module")
def folder_images(xl_folder):
    return latentgen.load(xl_folder).generate("a red circle", negative_prompt="blurry", **ARGS)


def test_the_written_file_has_sgm_names_and_loads_to_the_folders_image(xl_file_path, folder_images):
    with safe_open(str(xl_file_path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert {"model.diffusion_model.label_emb.0.0.weight", xl_file.TE2 + "text_projection",
            xl_file.TE2 + "transformer.resblocks.0.attn.in_proj_weight", xl_file.TE2 + "ln_final.weight",
            xl_file.TE1 + "text_model.embeddings.token_embedding.weight",
            "first_stage_model.decoder.conv_in.weight"} <= keys
    assert not any(k.startswith(("cond_stage_model.", "model.diffusion_model.down_blocks")) for k in keys)
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    pipe = latentgen.load(xl_file_path)
    assert pipe.xl is not None and pipe.name == "tiny-xl"
    assert max_diff(pipe.generate("a red circle", negative_prompt="blurry", **ARGS), folder_images) == 0


def test_diffusers_reads_the_file_as_latentgen_does(xl_file_path, xl_folder, folder_images):
    """diffusers' own single-file reader, with the folder's configs (offline), draws the folder's image from it."""
    from diffusers import StableDiffusionXLPipeline

    ref = StableDiffusionXLPipeline.from_single_file(str(xl_file_path), config=str(xl_folder), local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    theirs = ref("a red circle", negative_prompt="blurry", num_inference_steps=3, guidance_scale=5.0,
                 generator=torch.Generator().manual_seed(4), height=64, width=64).images
    assert max_diff(theirs, folder_images) <= 1
    folder_ref = diffusers_pipeline("StableDiffusionXLPipeline", xl_folder)
    for name, a in ref.unet.state_dict().items():
        assert torch.equal(a, folder_ref.unet.state_dict()[name]), name


def test_without_a_header_the_sizes_come_from_the_shapes(xl_file_path, folder_images, tmp_path):
    bare = tmp_path / "bare.safetensors"
    save_file(load_file(str(xl_file_path)), str(bare))  # the tensors alone, as another tool writes them
    pipe = latentgen.load(bare)
    assert pipe.unet.config.addition_time_embed_dim == 8 and pipe.xl.text_encoder_2.config.projection_dim == 32
    assert pipe.xl.tokenizer_2.pad_token == "!" and pipe.defaults.guidance == 5.0  # the closest preset's
    assert max_diff(pipe.generate("a red circle", negative_prompt="blurry", **ARGS), folder_images) == 0


def test_a_refiner_and_an_incomplete_file_are_named(xl_file_path, tmp_path):
    tensors = load_file(str(xl_file_path))
    refiner = {k.replace(xl_file.TE2, xl_file.REFINER): v for k, v in tensors.items() if not k.startswith(xl_file.TE1)}
    save_file(refiner, str(tmp_path / "refiner.safetensors"))
    with pytest.raises(ValueError, match="is an SDXL refiner .* single files are not read yet"):
        latentgen.load(tmp_path / "refiner.safetensors")
    save_file({k: v for k, v in tensors.items() if not k.startswith(xl_file.TE2)}, str(tmp_path / "cut.safetensors"))
    with pytest.raises(ValueError, match=r"without OpenCLIP ViT-bigG .*conditioner.embedders.1.model.text_projection"):
        latentgen.load(tmp_path / "cut.safetensors")
    save_file({k: v for k, v in tensors.items() if not k.startswith("first_stage_model.")},
              str(tmp_path / "novae.safetensors"))
    with pytest.raises(ValueError, match="holds no VAE"):
        latentgen.load(tmp_path / "novae.safetensors")
    assert json.loads(safe_open(str(xl_file_path), "pt").metadata()["latentgen.configs"])["text_encoder_2"]
