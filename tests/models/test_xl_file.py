"""latentgen.models.xl_file: SDXL single files. latentgen's export of the tiny SDXL folder is an SGM-layout file
that diffusers' own reader (``StableDiffusionXLPipeline.from_single_file``) loads to the folder's image, and that
latentgen loads to the same image, with its header and without it (sizes from the shapes over the closest SDXL
preset); a refiner's file (bigG alone) the same way, drawn as its folder and as diffusers' refiner reads it; an
incomplete file is refused by name."""

import json
from pathlib import Path

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


@pytest.fixture(scope="module")
def refiner_file(xl_refiner_folder, tmp_path_factory):
    return export.export(xl_refiner_folder, tmp_path_factory.mktemp("xl-refiner") / "tiny-refiner.safetensors")


REFINE = dict(strength=0.5, seed=2, steps=6, guidance=5.0, negative_prompt="blurry")


def test_a_refiner_file_is_read_as_its_folder_and_as_diffusers_reads_it(refiner_file, xl_refiner_folder, tmp_path):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from conftest import photo

    with safe_open(str(refiner_file), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert {xl_file.REFINER + "text_projection", xl_file.REFINER + "transformer.resblocks.0.attn.in_proj_weight",
            "model.diffusion_model.label_emb.0.0.weight", "first_stage_model.decoder.conv_in.weight"} <= keys
    assert not any(k.startswith((xl_file.TE1, xl_file.TE2)) for k in keys)
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-refiner"
    from latentgen.models import loading  # what trainers check before loading: from the header alone

    assert [loading.xl_kind(p) for p in (refiner_file, xl_refiner_folder, "tiny-random-xl", "tiny-random")] == \
        ["refiner", "refiner", "base", None]
    image = photo(64, 3)
    want = latentgen.load(xl_refiner_folder).img2img("a red cat", image, **REFINE)
    bare = tmp_path / "bare-refiner.safetensors"
    save_file(load_file(str(refiner_file)), str(bare))  # without latentgen's header: sizes from the shapes
    for path in (refiner_file, bare):
        pipe = latentgen.load(path)
        assert pipe.xl.refiner and pipe.xl.aesthetic == (6.0, 2.5) and not pipe.xl.force_zeros
        assert pipe.unet.config.addition_time_embed_dim == 8 and pipe.tokenizer.pad_token == "!"
        # <= 1: the same weights, but the folder's projection, mmapped unaligned from its file, takes another
        # matmul kernel (its pooled text differs by 1.6e-7)
        assert max_diff(pipe.img2img("a red cat", image, **REFINE), want) <= 1, path.name
    ref = StableDiffusionXLImg2ImgPipeline.from_single_file(str(bare), config=str(xl_refiner_folder),
                                                            local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    theirs = ref("a red cat", image=image, strength=0.5, num_inference_steps=6, guidance_scale=5.0,
                 negative_prompt="blurry", generator=torch.Generator().manual_seed(2)).images
    assert max_diff(theirs, want) <= 2


def test_a_refiner_file_takes_over_from_the_base_model(refiner_file, xl_refiner_folder, xl_folder):
    base = latentgen.load(xl_folder)
    kw = dict(seed=3, steps=6, guidance=5.0, width=64, height=64)
    want = base.generate("a red circle", refiner=latentgen.Refiner(latentgen.load(xl_refiner_folder), 0.6), **kw)
    got = base.generate("a red circle", refiner=latentgen.Refiner(latentgen.load(refiner_file), 0.6), **kw)
    assert max_diff(got, want) <= 1 and "Refiner: tiny-refiner, Refiner switch at: 0.6" in got[0].info["parameters"]


def test_an_incomplete_file_is_named(xl_file_path, refiner_file, tmp_path):
    tensors = load_file(str(xl_file_path))
    save_file({k: v for k, v in tensors.items() if not k.startswith(xl_file.TE2)}, str(tmp_path / "cut.safetensors"))
    with pytest.raises(ValueError, match=r"without OpenCLIP ViT-bigG .*conditioner.embedders.1.model.text_projection"):
        latentgen.load(tmp_path / "cut.safetensors")
    refiner = load_file(str(refiner_file))
    save_file({k: v for k, v in refiner.items() if k != xl_file.REFINER + "text_projection"},
              str(tmp_path / "cut-refiner.safetensors"))
    with pytest.raises(ValueError, match=r"without OpenCLIP ViT-bigG .*conditioner.embedders.0.model.text_projection"):
        latentgen.load(tmp_path / "cut-refiner.safetensors")
    save_file({k: v for k, v in tensors.items() if not k.startswith("first_stage_model.")},
              str(tmp_path / "novae.safetensors"))
    with pytest.raises(ValueError, match="holds no VAE"):
        latentgen.load(tmp_path / "novae.safetensors")
    assert json.loads(safe_open(str(xl_file_path), "pt").metadata()["latentgen.configs"])["text_encoder_2"]


def test_the_real_refiners_shapes_give_its_diffusers_config():
    """sd_xl_refiner_1.0's architecture (Stability's sd_xl_refiner.yaml: model_channels 384, channel_mult
    [1, 2, 4, 4], transformer_depth [0, 4, 4, 0], 64 channels a head, context 1280, adm_in_channels 2560), its
    tensors on the meta device in the file's names: the config read from the shapes is diffusers' refiner U-Net's."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from latentgen.models import checkpoints, ldm
    from latentgen.models.presets import load_preset

    sdxl = load_preset("sdxl")
    want = dict(block_out_channels=[384, 768, 1536, 1536], attention_head_dim=[6, 12, 24, 24],
                transformer_layers_per_block=4, cross_attention_dim=1280, addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2560, layers_per_block=2, use_linear_projection=True,
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"])
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config({**sdxl.unet, **want})
        vae = AutoencoderKL.from_config(sdxl.vae)
        big = CLIPTextModelWithProjection(CLIPTextConfig(**sdxl.text_encoder_2))
    state = big.state_dict()
    projection = state.pop("text_projection.weight")
    tensors = {**ldm.unet_to_ldm(unet.state_dict(), unet.config), **ldm.vae_to_ldm(vae.state_dict(), vae.config),
               **ldm.open_clip_to_ldm(state, prefix=xl_file.REFINER), xl_file.REFINER + "text_projection": projection.T}
    ck = checkpoints.Checkpoint(Path("sd_xl_refiner_1.0.safetensors"), {k: tuple(v.shape) for k, v in tensors.items()},
                                {}, tensors.__getitem__)
    arch = xl_file.architecture(ck)
    assert {k: arch.unet[k] for k in want} == want and arch.text_encoder_2 is None
    assert {k: arch.text_encoder[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                              "intermediate_size", "projection_dim")} == \
        {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 20, "intermediate_size": 5120,
         "projection_dim": 1280}
