"""latentgen.control.ldm_file: the tiny ControlNet written in lllyasviel's layout (``.pth``, bare names) and A1111's
(``.safetensors``, under ``control_model.``, beside other tensors) loads bit for bit as its diffusers folder and draws
the same images; the hint encoder's numbering agrees with diffusers' converter on SD's; files for another model, or
no ControlNet at all, or a pickle that needs code, are refused naming ``control[0].model``. A ControlNet's weights
in diffusers' names without their config (how SDXL ControlNets are shared: diffusers_xl_*.safetensors), full or with
shallower transformers, load as their folders."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from latentgen import Control
from latentgen.control import ldm_file, units

RAN = []  # what the pickle below would run


def _mark(what):
    RAN.append(what)


class Payload:
    """Unpickled with code, it calls ``_mark``; ``torch.load(weights_only=True)`` must refuse it unrun."""

    def __reduce__(self):
        return _mark, ("ran",)


@pytest.fixture(scope="module")
def folder_net(controlnets):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(controlnets[0])


@pytest.fixture(scope="module")
def files(folder_net, tmp_path_factory):
    """(lllyasviel's .pth, A1111's .safetensors with a whole model's tensor beside the ControlNet's)."""
    folder = tmp_path_factory.mktemp("ldm-controlnets")
    state = folder_net.state_dict()
    pth = folder / "control_v11p_tiny_canny.pth"
    torch.save(ldm_file.to_ldm(state, folder_net.config), pth)
    a1111 = folder / "control_tiny_canny-fp16.safetensors"
    other = {"model.diffusion_model.out.2.weight": torch.ones(4, 32, 3, 3)}  # not read
    save_file({**ldm_file.to_ldm(state, folder_net.config, "control_model."), **other}, a1111)
    return pth, a1111


@pytest.mark.parametrize("which", [0, 1], ids=["pth", "a1111-safetensors"])
def test_a_file_loads_as_its_diffusers_folder_bit_for_bit(pipe, folder_net, files, which):
    net = units.load_model(str(files[which]), pipe.unet, "control[0]")
    want, got = folder_net.state_dict(), net.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert net.config.conditioning_embedding_out_channels == folder_net.config.conditioning_embedding_out_channels
    assert units.load_model(files[which], pipe.unet, "control[0]") is net  # read once while unchanged


def test_a_file_draws_what_its_folder_draws(pipe, controlnets, files):
    hint = Image.new("RGB", (64, 64))
    hint.paste((255, 255, 255), (16, 20, 40, 44))
    kw = dict(seed=3, steps=2, guidance=5.0)
    want = pipe.generate("a red circle", control=Control(hint, model=str(controlnets[0])), **kw)[0]
    got = pipe.generate("a red circle", control=Control(hint, model=str(files[1])), **kw)[0]
    plain = pipe.generate("a red circle", **kw)[0]
    assert np.array_equal(np.asarray(got), np.asarray(want)) and not np.array_equal(np.asarray(got), np.asarray(plain))


def test_an_inpainting_unet_gets_a_controlnet_of_the_latent_channels(pipe, folder_net, files):
    from diffusers import UNet2DConditionModel

    unet9 = UNet2DConditionModel.from_config({**pipe.unet.config, "in_channels": 9})
    net = ldm_file.read(files[0], unet9, "control[0]")
    assert net.config.in_channels == 4 and torch.equal(net.conv_in.weight, folder_net.conv_in.weight)


def test_the_yaml_beside_the_file_turns_on_global_pooling(pipe, files, tmp_path):
    path = tmp_path / "control_v11e_tiny_shuffle.pth"
    path.write_bytes(files[0].read_bytes())
    path.with_suffix(".yaml").write_text("model:\n  params:\n    control_stage_config:\n      params:\n"
                                         "        global_average_pooling: True\n")
    assert ldm_file.read(path, pipe.unet, "control[0]").config.global_pool_conditions is True
    assert ldm_file.read(files[0], pipe.unet, "control[0]").config.global_pool_conditions is False


def test_the_hint_encoder_is_numbered_as_diffusers_numbers_sds(pipe):
    """On SD's hint encoder (16, 32, 96, 256: conv_out at index 14), ``convert`` gives what diffusers' converter
    gives, tensor for tensor; the tiny ones have fewer levels, which diffusers' fixed index cannot place."""
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    net = ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=(16, 32, 96, 256))
    ldm = ldm_file.to_ldm(net.state_dict(), net.config)
    assert {k for k in ldm if k.startswith("input_hint_block.") and k.endswith(".weight")} == \
        {f"input_hint_block.{i}.weight" for i in range(0, 15, 2)}
    ours, theirs = ldm_file.convert(ldm, dict(net.config)), convert_controlnet_checkpoint(ldm, dict(net.config))
    assert set(ours) == set(theirs) == set(net.state_dict()) and all(ours[k] is theirs[k] for k in ours)


def _refused(pipe, path, match, error=ValueError):
    with pytest.raises(error, match=match) as e:
        units.load_model(str(path), pipe.unet, "control[0]")
    assert str(e.value).startswith("control[0].model=")
    return str(e.value)


def test_a_file_for_another_cross_attention_width_is_refused(pipe, controlnets, tmp_path):
    from diffusers import ControlNetModel

    wide = ControlNetModel.from_config({**ControlNetModel.load_config(controlnets[0]), "cross_attention_dim": 1024})
    save_file(ldm_file.to_ldm(wide.state_dict(), wide.config), tmp_path / "control_sd21_tiny.safetensors")
    _refused(pipe, tmp_path / "control_sd21_tiny.safetensors",
             r"was made for another model: its cross-attention width is 1024 \(SD 2.x\), this model's 32; use a "
             r"ControlNet trained for this model's family")


@pytest.mark.parametrize("tensors, says", [
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)}, "it holds a LoRA"),
    ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)}, "a whole Stable Diffusion model"),
    ({"body.0.block1.weight": torch.zeros(8, 8, 3, 3)}, "a T2I-Adapter"),
    ({"lora_controlnet": torch.zeros(1), "input_blocks.1.1.proj_in.up": torch.zeros(4, 2)}, "is a Control-LoRA"),
    ({"controlnet_cond_embedding.conv_in.weight": torch.zeros(4, 3, 3, 3)}, "its ControlNet is incomplete"),
], ids=["lora", "sd-checkpoint", "t2i-adapter", "control-lora", "diffusers-weights"])
def test_a_file_that_is_no_controlnet_is_refused_saying_what_it_is(pipe, tmp_path, tensors, says):
    save_file(tensors, tmp_path / "x.safetensors")
    _refused(pipe, tmp_path / "x.safetensors", says)


def test_a_pickle_that_needs_code_is_refused_unrun(pipe, folder_net, tmp_path):
    torch.save({"state_dict": ldm_file.to_ldm(folder_net.state_dict(), folder_net.config), "hook": Payload()},
               tmp_path / "control_evil.pth")
    text = _refused(pipe, tmp_path / "control_evil.pth", "is a pickle that needs code to load")
    assert "_mark" in text and RAN == []


def test_missing_tensors_are_named(pipe, folder_net, tmp_path):
    state = ldm_file.to_ldm(folder_net.state_dict(), folder_net.config)
    del state["zero_convs.1.0.weight"], state["middle_block_out.0.bias"]
    torch.save(state, tmp_path / "control_cut.pth")
    _refused(pipe, tmp_path / "control_cut.pth", r"missing \['controlnet_down_blocks.1.weight', "
                                                 r"'controlnet_mid_block.bias'\]")


def test_a_path_that_is_neither_a_folder_nor_a_controlnet_file_says_what_to_pass(pipe, tmp_path):
    (tmp_path / "notes.txt").write_text("canny")
    _refused(pipe, tmp_path / "notes.txt", r"is no ControlNet folder \(no config.json there\) nor a ControlNet file "
                                           r"\(.safetensors, .*\): pass a diffusers ControlNetModel folder, a file",
             FileNotFoundError)


@pytest.mark.parametrize("depth", [None, [1, 1]], ids=["full", "shallower"])
def test_diffusers_weights_without_their_config_load_as_their_folder(xl_folder, xl_controlnet, tmp_path, depth):
    """diffusers_xl_canny_full.safetensors and its _mid / _small kin: the state dict alone; the sizes come from the
    shapes (a shallower transformer than the U-Net's too), the rest from the U-Net; it draws as its folder."""
    import latentgen
    from diffusers import ControlNetModel

    folder = xl_controlnet
    if depth is not None:  # fewer transformer layers than the U-Net's [1, 2]: a "mid"/"small" ControlNet
        torch.manual_seed(5)
        net = ControlNetModel.from_config({**ControlNetModel.load_config(xl_controlnet),
                                           "transformer_layers_per_block": depth})
        folder = tmp_path / "small"
        net.save_pretrained(folder)
    path = tmp_path / "diffusers_xl_tiny.safetensors"
    save_file(ControlNetModel.from_pretrained(folder).state_dict(), path)
    pipe = latentgen.load(xl_folder)
    net = units.load_model(str(path), pipe.unet, "control[0]")
    want = ControlNetModel.from_pretrained(folder).state_dict()
    assert set(net.state_dict()) == set(want) and all(torch.equal(net.state_dict()[k], want[k]) for k in want)
    hint = Image.new("RGB", (64, 64))
    hint.paste((255, 255, 255), (16, 20, 40, 44))
    kw = dict(seed=3, steps=3, guidance=5.0)
    got = pipe.generate("a cat", control=Control(hint, str(path)), **kw)
    want = pipe.generate("a cat", control=Control(hint, folder), **kw)
    assert np.array_equal(np.asarray(got[0]), np.asarray(want[0]))


def test_an_sdxl_controlnet_in_the_ldm_layout_loads_with_its_added_embedding(xl_folder, xl_controlnet, tmp_path):
    """SGM-trained SDXL ControlNets keep the added embedding as label_emb.0.0 / .0.2, which diffusers' converter
    leaves out; it is read too."""
    import latentgen
    from diffusers import ControlNetModel

    folder_net = ControlNetModel.from_pretrained(xl_controlnet)
    path = tmp_path / "control_xl_tiny.safetensors"
    save_file(ldm_file.to_ldm(folder_net.state_dict(), folder_net.config, "control_model."), path)
    assert any(k.startswith("control_model.label_emb.0.") for k in ldm_file.to_ldm(folder_net.state_dict(),
                                                                                   folder_net.config, "control_model."))
    net = units.load_model(str(path), latentgen.load(xl_folder).unet, "control[0]")
    want = folder_net.state_dict()
    assert set(net.state_dict()) == set(want) and all(torch.equal(net.state_dict()[k], want[k]) for k in want)


def test_diffusers_weights_for_another_model_are_refused(pipe, xl_controlnet, tmp_path):
    from diffusers import ControlNetModel

    save_file(ControlNetModel.from_pretrained(xl_controlnet).state_dict(), tmp_path / "diffusers_xl.safetensors")
    _refused(pipe, tmp_path / "diffusers_xl.safetensors", r"was made for another model: its cross-attention width is "
                                                           r"96, this model's 32")
