"""latentgen.lora.names: the modules LoRAs target and kohya's names for them, mapped back through the model."""

import torch

from latentgen.lora import names


def test_kohya_names_map_back_to_modules_without_guessing_underscores(pipe):
    found = names.module_names(pipe.unet, "unet")
    kohya = names.kohya_names("unet", pipe.unet, found)
    assert len(kohya) == len(found) and set(kohya.values()) == set(found)
    for stem, module in kohya.items():
        assert stem == names.kohya_stem("unet", module) and stem.startswith("lora_unet_") and "." not in stem
    text = names.module_names(pipe.text_encoder, "text_encoder")
    assert all(n.startswith("text_model.") for n in text)  # as files name them (transformers 4)
    te = names.kohya_names("text_encoder", pipe.text_encoder, text)
    q = next(n for n in text if n.endswith("layers.0.self_attn.q_proj"))
    # kohya's, SDXL kohya's first encoder's, and what trainers on transformers 5 write (no text_model level)
    assert {k for k, v in te.items() if v == q} == {"lora_te_text_model_encoder_layers_0_self_attn_q_proj",
                                                    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                                                    "lora_te_encoder_layers_0_self_attn_q_proj",
                                                    "lora_te1_encoder_layers_0_self_attn_q_proj"}


def test_sdxl_unet_modules_have_kohyas_sgm_names(xl_folder):
    import latentgen

    pipe = latentgen.load(xl_folder)
    found = names.module_names(pipe.unet, "unet")
    kohya = names.kohya_names("unet", pipe.unet, found)
    q = next(n for n in found if n.startswith("down_blocks.1.attentions.0.") and n.endswith("attn1.to_q"))
    sgm = names.kohya_stem("unet", q, pipe.unet.config)
    assert sgm.startswith("lora_unet_input_blocks_") and kohya[sgm] == q


def test_targets():
    unet = torch.nn.Module()
    unet.add_module("conv_in", torch.nn.Conv2d(4, 8, 3))
    block = torch.nn.Module()
    block.add_module("resnets", torch.nn.ModuleList([torch.nn.Conv2d(8, 8, 3), torch.nn.Conv2d(8, 8, 1)]))
    unet.add_module("down", block)
    assert names.conv_targets(unet) == ["down.resnets.0"]  # 3x3 in ResNet blocks; not conv_in, not 1x1
    assert names.UNET_TARGETS == ("to_q", "to_k", "to_v", "to_out.0")
