"""Module names in LoRA files: which modules LoRAs target, and kohya's names for them.

Files name a module as diffusers names it (``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``; the
text encoder's as transformers 4 did, ``text_model.encoder.layers.0.self_attn.q_proj``) or as kohya does: a prefix
per component (``PARTS``) and the name with ``_`` for ``.``. SDXL's kohya files name its U-Net in the SGM (LDM)
layout (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``) and its text encoders ``lora_te1_`` and
``lora_te2_``. Kohya names are mapped back through the model's own module list, so the ambiguous underscores never
need guessing (``latentgen.lora.formats`` reads and writes the files).
"""

from __future__ import annotations

from functools import lru_cache

import torch

from ..models import ldm

PARTS = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}  # component -> kohya prefix
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def conv_targets(unet: torch.nn.Module) -> list[str]:
    """LoCon's extra U-Net targets (kohya's ``conv_dim``): the 3x3 convolutions of its ResNet blocks and
    down/up-samplers, by full module name (conv_in, conv_out and 1x1 shortcuts stay frozen)."""
    return [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
            and (".resnets." in n or "samplers." in n)]


@lru_cache(maxsize=1)
def clip_has_text_model() -> bool:
    """Whether this transformers' CLIPTextModel nests its layers under ``text_model`` (v4) or not (v5)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=8, hidden_size=4, intermediate_size=4, num_hidden_layers=1,
                         num_attention_heads=1, max_position_embeddings=4, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1)  # token ids inside the tiny vocabulary: no config warning
    return hasattr(CLIPTextModel(cfg), "text_model")


def kohya_stem(part: str, module: str, sdxl_unet=None) -> str:
    """A module's kohya name; for SDXL (``sdxl_unet``: its U-Net config) the U-Net's in SGM names (input_blocks,
    ...), the first text encoder's as ``lora_te1_``, as kohya's SDXL scripts write them."""
    if sdxl_unet is None:
        return PARTS[part] + module.replace(".", "_")
    if part == "unet":
        up_attention = {i for i, t in enumerate(sdxl_unet["up_block_types"]) if "CrossAttn" in t}
        module = ldm.unet_key(module + ".weight", sdxl_unet["layers_per_block"], up_attention)[:-len(".weight")]
    return {**PARTS, "text_encoder": "lora_te1_"}[part] + module.replace(".", "_")


def file_prefix(part: str, model: torch.nn.Module) -> str:
    """Files name text-encoder modules ``text_model.encoder...`` (transformers 4's CLIPTextModel);
    transformers 5 dropped the ``text_model`` level, so it is added back for file names."""
    return "text_model." if part.startswith("text_encoder") and not hasattr(model, "text_model") else ""


def kohya_names(part: str, model: torch.nn.Module, names) -> dict[str, str]:
    """kohya stems -> module names in files, for ``names`` of ``part``: ``PARTS[part]`` + the name with ``_`` for
    ``.``; also ``lora_te1_`` for a first text encoder, and for an SDXL U-Net the SGM names (``ldm.unet_key``)."""
    out = {PARTS[part] + n.replace(".", "_"): n for n in names}
    if part == "text_encoder":
        out.update({"lora_te1_" + n.replace(".", "_"): n for n in names})
    if part.startswith("text_encoder"):  # also as trainers on transformers 5 name them: no text_model level
        out.update({k.replace("_text_model_", "_", 1): n for k, n in out.items() if "_text_model_encoder_" in k})
    config = getattr(model, "config", {})
    if part == "unet" and config.get("addition_embed_type") == "text_time":
        up_attention = {i for i, t in enumerate(config["up_block_types"]) if "CrossAttn" in t}
        for n in names:
            try:
                sgm = ldm.unet_key(n + ".weight", config["layers_per_block"], up_attention)[:-len(".weight")]
            except ValueError:  # no place in the LDM layout: no SGM name
                continue
            out["lora_unet_" + sgm.replace(".", "_")] = n
    return out


def module_names(model: torch.nn.Module, part: str = "unet") -> dict[str, torch.nn.Module]:
    """Every Linear/Conv2d that a LoRA may target, by its name in files (peft wrappers seen through)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    prefix, out = file_prefix(part, model), {}
    for name, mod in model.named_modules():
        if isinstance(mod, BaseTunerLayer):
            out[prefix + name] = mod.get_base_layer()
        elif isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) and ".base_layer" not in name \
                and ".lora_" not in name:
            out[prefix + name] = mod
    return out
