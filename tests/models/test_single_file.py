"""SD 2.x: the sd2 / sd21 presets, parity with diffusers on tiny SD 2-shaped models (linear-projection
attention, 64-channel heads, a gelu text encoder, "!" padding; epsilon and v), single files in the
OpenCLIP layout, and where the prediction type comes from (argument, yaml, header, detection)."""

import numpy as np
import pytest
import torch
from conftest import max_diff
from safetensors.torch import save_file

import latentgen
from latentgen import schedulers
from latentgen.models import checkpoints, components, ldm
from latentgen.models import export as ldm_export
from latentgen.models.presets import load_preset

ARGS = dict(seed=3, steps=4, guidance=6.0, width=64, height=64, scheduler="ddim")
PREDICTIONS = ("epsilon", "v_prediction")


def tiny_sd2(pred: str, seed: int = 0, heads=(1, 2), layers: int = 2):
    """A diffusers StableDiffusionPipeline with SD 2's structure at tiny sizes."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    p = load_preset("sd2")
    torch.manual_seed(seed)
    widths = (64, 128) if heads == (1, 2) else (32, 64)
    unet = UNet2DConditionModel(block_out_channels=widths, layers_per_block=1, sample_size=8, cross_attention_dim=64,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), attention_head_dim=heads,
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), use_linear_projection=True)
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32, sample_size=64)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=64, intermediate_size=256, num_attention_heads=1,
                                        num_hidden_layers=layers, hidden_act="gelu", bos_token_id=0, eos_token_id=2))
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(p.tokenizer_dir, **p.tokenizer_options),
        unet=unet, scheduler=schedulers.make("ddim", {**p.scheduler, "prediction_type": pred}),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{prediction type: (diffusers pipeline, its saved folder)}"""
    out = {}
    for i, pred in enumerate(PREDICTIONS):
        ref = tiny_sd2(pred, seed=i)
        ref.save_pretrained(folder := tmp_path_factory.mktemp(f"sd2-{pred}"))
        out[pred] = ref, folder
    return out


def sd2_file(ref, path, *, full_open_clip=False):
    """An LDM file of a tiny SD 2 pipeline; ``full_open_clip``: as released SD 2 files, with OpenCLIP's last
    block (unused by SD 2) and its text projection."""
    c = components.Components(ref.tokenizer, ref.text_encoder, ref.unet, ref.vae, ref.scheduler, None, "x")
    sd = ldm_export.ldm_state_dict(c)
    if full_open_clip:
        last = len(ldm._indices(sd, ldm.OPEN_CLIP + "transformer.resblocks."))
        sd.update({k.replace(".resblocks.0.", f".resblocks.{last}."): torch.randn_like(v)
                   for k, v in sd.items() if ".resblocks.0." in k})
        sd[ldm.OPEN_CLIP + "text_projection"] = torch.randn(64, 32)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def test_presets():
    sd2, sd21 = load_preset("sd2"), load_preset("sd21")
    for p in (sd2, sd21):
        components.check_fit(p.unet, p.vae, p.text_encoder)
        assert p.unet["attention_head_dim"] == [5, 10, 20, 20] and p.unet["use_linear_projection"]
        assert p.unet["cross_attention_dim"] == 1024 and p.tokenizer_options == {"pad_token": "!"}
        t = p.text_encoder
        assert (t["hidden_size"], t["num_hidden_layers"], t["intermediate_size"], t["num_attention_heads"],
                t["hidden_act"], t["projection_dim"]) == (1024, 23, 4096, 16, "gelu", 512)
    assert (sd2.defaults.width, sd2.scheduler["prediction_type"]) == (512, "epsilon")
    assert (sd21.defaults.width, sd21.defaults.height, sd21.scheduler["prediction_type"]) == (768, 768, "v_prediction")


def test_tokenizer_pads_with_bang(folders):
    pipe = latentgen.load(folders["epsilon"][1])
    ids = pipe.tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert pipe.tokenizer.pad_token == "!" and ids[-1] == 0 and ids[3] == pipe.tokenizer.eos_token_id


@pytest.mark.parametrize("pred", PREDICTIONS)
def test_parity_with_diffusers(folders, pred):
    ref, folder = folders[pred]
    want = ref("a red cat", num_inference_steps=4, guidance_scale=6.0, height=64, width=64,
               generator=torch.Generator().manual_seed(3)).images
    pipe = latentgen.load(folder)
    assert pipe.scheduler.config.prediction_type == pred
    assert max_diff(pipe.generate("a red cat", **ARGS), want) <= 1


@pytest.mark.parametrize("pred", PREDICTIONS)
def test_single_file_matches_folder(folders, tmp_path, pred):
    ref, folder = folders[pred]
    want = latentgen.load(folder).generate("a red cat", **ARGS)
    for full in (False, True):
        single = latentgen.load(sd2_file(ref, tmp_path / f"m{full}.safetensors", full_open_clip=full),
                                prediction_type=pred)
        assert single.text_encoder.config.num_hidden_layers == 2 and single.tokenizer.pad_token == "!"
        assert max_diff(single.generate("a red cat", **ARGS), want) <= 1
    assert single.defaults.width == (768 if pred == "v_prediction" else 512)  # sd21 or sd2


def test_sd2_in_clip_names_is_still_sd2(tmp_path):
    """diffusers' conversion script, given an SD 2 folder saved by transformers 5 (no ``text_model.`` level),
    misses SD 2 and writes the text encoder in CLIP's names, transformers 5 style: read as SD 2 all the same
    (gelu, "!" padding, SD 2's heads) by its depth (23 layers) or its width (1024)."""
    ref = tiny_sd2("epsilon", seed=5, layers=23)
    ref.save_pretrained(folder := tmp_path / "folder")
    c = components.Components(ref.tokenizer, ref.text_encoder, ref.unet, ref.vae, ref.scheduler, None, "x")
    sd = {k: v for k, v in ldm_export.ldm_state_dict(c).items() if not k.startswith(ldm.OPEN_CLIP)}
    sd.update({ldm.CLIP + k.removeprefix("text_model."): v for k, v in ref.text_encoder.state_dict().items()
               if not k.endswith("position_ids")})
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path := tmp_path / "clip-names.safetensors"))
    single = latentgen.load(path, prediction_type="epsilon")
    t = single.text_encoder.config
    assert (t.hidden_act, t.num_hidden_layers, single.tokenizer.pad_token) == ("gelu", 23, "!")
    assert max_diff(single.generate("a red cat", **ARGS), latentgen.load(folder).generate("a red cat", **ARGS)) <= 1
    shapes = {k: tuple(v.shape) for k, v in sd.items() if ".layers.2." not in k}  # 22 layers: depth says nothing
    assert ldm.family(shapes, "x") == "sd1"
    shapes[ldm.CLIP + "embeddings.token_embedding.weight"] = (49408, 1024)  # ViT-H's width
    assert ldm.family(shapes, "x") == "sd2"


def test_diffusers_from_single_file_agrees(folders, tmp_path):
    from diffusers import StableDiffusionPipeline

    ref, folder = folders["v_prediction"]
    path = sd2_file(ref, tmp_path / "v.safetensors")
    theirs = StableDiffusionPipeline.from_single_file(str(path), config=str(folder), local_files_only=True,
                                                      safety_checker=None)
    theirs.set_progress_bar_config(disable=True)
    want = theirs("a red cat", num_inference_steps=4, guidance_scale=6.0, height=64, width=64,
                  generator=torch.Generator().manual_seed(3)).images
    assert max_diff(latentgen.load(path, prediction_type="v").generate("a red cat", **ARGS), want) <= 1


def test_prediction_type_sources(folders, tmp_path):
    path = sd2_file(folders["epsilon"][0], tmp_path / "m.safetensors")
    kind = lambda **kw: latentgen.load(path, **kw).scheduler.config.prediction_type  # noqa: E731
    assert kind() == "v_prediction"  # random weights read as v (see latentgen.models.prediction)
    path.with_suffix(".yaml").write_text("model:\n  params:\n    parameterization: eps\n")
    assert kind() == "epsilon"
    path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n    scale_factor: 0.5\n')
    v = latentgen.load(path)
    assert v.scheduler.config.prediction_type == "v_prediction" and v.vae.config.scaling_factor == 0.5
    assert kind(prediction_type="epsilon") == "epsilon"  # the argument wins
    with pytest.raises(ValueError, match="prediction_type='x0' is unknown"):
        latentgen.load(path, prediction_type="x0")
    out = ldm_export.export(folders["epsilon"][1], tmp_path / "exported.safetensors")
    assert checkpoints.read(out).metadata["modelspec.prediction_type"] == "epsilon" and kind() != "x"
    assert latentgen.load(out).scheduler.config.prediction_type == "epsilon"  # from the header


def test_heads_that_no_rule_gives_need_the_yaml(tmp_path):
    ref = tiny_sd2("epsilon", heads=(2, 4))  # 16-channel heads
    path = sd2_file(ref, tmp_path / "odd.safetensors")
    with pytest.raises(ValueError, match="attention heads .* num_head_channels"):
        latentgen.load(path)
    yaml = "model:\n  params:\n    unet_config:\n      params:\n        num_head_channels: 16\n"
    path.with_suffix(".yaml").write_text(yaml)
    assert latentgen.load(path).unet.config.attention_head_dim == [2, 4]
    assert np.isfinite(np.asarray(latentgen.load(path).generate("x", **ARGS)[0])).all()
