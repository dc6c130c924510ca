"""The LDM single-file layout (A1111, ComfyUI, the original Stable Diffusion code): what a file is,
its architecture sizes from tensor shapes alone, and diffusers -> LDM names for writing one.

Reading goes through diffusers' ``convert_ldm_*`` functions (``latentgen.models.single_file``); this module
knows the names. A file's family is read from its keys: SD 1.x has CLIP under
``cond_stage_model.transformer.``, SD 2.x OpenCLIP under ``cond_stage_model.model.``, SDXL
``conditioner.embedders.`` (``latentgen.models.xl_file``), anything else is named with diffusers'
``infer_diffusers_model_type`` and refused.

Writing is the inverse of diffusers' readers, with the names of diffusers'
``scripts/convert_diffusers_to_original_stable_diffusion.py``, generalised from SD's fixed four
levels of two blocks to any number of levels (``n``) and layers per block (``L``):

    diffusers U-Net                                 LDM, under ``model.diffusion_model.``
    down_blocks.i.resnets.j / .attentions.j         input_blocks.{1 + i(L+1) + j}.0 / .1
    down_blocks.i.downsamplers.0.conv               input_blocks.{(i+1)(L+1)}.0.op
    mid_block.resnets.k / .attentions.0             middle_block.{2k} / middle_block.1
    up_blocks.i.resnets.j / .attentions.j           output_blocks.{i(L+1) + j}.0 / .1
    up_blocks.i.upsamplers.0.conv                   output_blocks.{i(L+1) + L}.1 (.2 after an attention).conv

The VAE goes under ``first_stage_model.`` (decoder levels numbered in reverse, mid-block attention
weights as 1x1 convolutions), CLIP under ``cond_stage_model.transformer.text_model.`` (SD 1.x) and
OpenCLIP under ``cond_stage_model.model.`` (SD 2.x: q, k, v joined into ``in_proj``).
"""

from __future__ import annotations

import re

import torch

UNET, VAE = "model.diffusion_model.", "first_stage_model."
CLIP, OPEN_CLIP = "cond_stage_model.transformer.", "cond_stage_model.model."
DIFFUSERS_UNET = ("down_blocks", "up_blocks", "mid_block", "conv_in", "time_embedding")  # never in an LDM U-Net

_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}  # SDXL's
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
           "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP = [("embeddings.token_embedding.weight", "token_embedding.weight"),
              ("embeddings.position_embedding.weight", "positional_embedding"),
              ("final_layer_norm.", "ln_final."), ("encoder.layers.", "transformer.resblocks."),
              ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), (".mlp.fc1.", ".mlp.c_fc."),
              (".mlp.fc2.", ".mlp.c_proj."), (".self_attn.out_proj.", ".attn.out_proj.")]


def _rename(name: str, table: dict[str, str]) -> str:
    """Replace the first part of ``name`` found in ``table`` (``norm1.weight`` -> ``in_layers.0.weight``)."""
    for old, new in table.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old):]
    return name


def unet_key(key: str, layers: int, up_attention: set[int]) -> str:
    """The LDM name of a diffusers U-Net tensor. ``layers``: layers_per_block (L); ``up_attention``:
    the up blocks that hold attentions (their upsampler sits at index 2, not 1)."""
    step = layers + 1
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        rest = _rename(rest, _RESNET) if kind == "resnets" else rest
        return f"input_blocks.{1 + i * step + j}.{0 if kind == 'resnets' else 1}.{rest}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{(int(m[1]) + 1) * step}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{_rename(m[2], _RESNET)}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        rest = _rename(rest, _RESNET) if kind == "resnets" else rest
        return f"output_blocks.{i * step + j}.{0 if kind == 'resnets' else 1}.{rest}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        i = int(m[1])
        return f"output_blocks.{i * step + layers}.{2 if i in up_attention else 1}.conv.{m[2]}"
    renamed = _rename(key, _UNET_TOP)
    if renamed == key:
        raise ValueError(f"U-Net tensor {key!r} has no place in the LDM layout; export SD 1.x/2.x and SDXL U-Nets only.")
    return renamed


def unet_to_ldm(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """A diffusers ``UNet2DConditionModel`` state dict -> ``model.diffusion_model.*`` tensors."""
    up_attention = {i for i, t in enumerate(config["up_block_types"]) if "CrossAttn" in t}
    return {UNET + unet_key(k, config["layers_per_block"], up_attention): v for k, v in state.items()}


def vae_key(key: str, levels: int) -> str:
    """The LDM name of a diffusers ``AutoencoderKL`` tensor; ``levels``: len(block_out_channels)."""
    key = key.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.*)", key):
        part = f"block.{m[3]}" if m[2] == "resnets" else "downsample"
        return f"encoder.down.{m[1]}.{part}.{m[4]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.*)", key):
        part = f"block.{m[3]}" if m[2] == "resnets" else "upsample"
        return f"decoder.up.{levels - 1 - int(m[1])}.{part}.{m[4]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
        return f"{m[1]}.mid.attn_1.{_rename(m[2], _VAE_ATTN)}"
    return key  # conv_in, conv_out, norm_out, quant_conv, post_quant_conv keep their names


def vae_to_ldm(state: dict[str, torch.Tensor], config, prefix: str = VAE) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict -> ``first_stage_model.*`` tensors. The mid-block
    attention's linear weights (C, C) become LDM's 1x1 convolutions (C, C, 1, 1)."""
    out = {}
    for k, v in state.items():
        name = vae_key(k, len(config["block_out_channels"]))
        if ".mid.attn_1." in name and name.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
            v = v.reshape(*v.shape, 1, 1)  # (C, C) -> (C, C, 1, 1)
        out[prefix + name] = v
    return out


def clip_to_ldm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ``CLIPTextModel`` state dict (transformers 4 or 5 naming) -> SD 1.x names,
    ``cond_stage_model.transformer.text_model.*`` (the transformers 4 layout real SD 1.x files use)."""
    return {CLIP + "text_model." + k.removeprefix("text_model."): v for k, v in state.items()
            if not k.endswith("position_ids")}


def open_clip_to_ldm(state: dict[str, torch.Tensor], prefix: str = OPEN_CLIP) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModel`` state dict of SD 2's text encoder -> OpenCLIP names under ``prefix`` (SD 2:
    ``cond_stage_model.model.``). q, k, v projections (D, D) each are joined into ``in_proj`` (3D, D)."""
    out, qkv = {}, {}
    for k, v in state.items():
        k = k.removeprefix("text_model.")
        if k.endswith("position_ids"):
            continue
        if m := re.match(r"(.*)\.self_attn\.([qkv])_proj\.(weight|bias)", k):
            qkv.setdefault((m[1], m[3]), {})[m[2]] = v
            continue
        for old, new in _OPEN_CLIP:
            k = k.replace(old, new)
        out[prefix + k] = v
    for (layer, kind), parts in qkv.items():
        name = prefix + layer.replace("encoder.layers.", "transformer.resblocks.") + f".attn.in_proj_{kind}"
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]])  # (3D, D) or (3D,)
    return out


def text_to_ldm(state: dict[str, torch.Tensor], open_clip: bool) -> dict[str, torch.Tensor]:
    return open_clip_to_ldm(state) if open_clip else clip_to_ldm(state)


# -- what a file is --------------------------------------------------------------------------
def describe(shapes: dict[str, tuple]) -> str:
    """What a file without an SD 1.x/2.x U-Net holds, in words, for the error."""
    keys = list(shapes)
    if any(k.startswith(("lora_unet_", "lora_te")) or ".lora_" in k or ".lora." in k for k in keys):
        return "a LoRA; apply it with pipe.load_lora(path)"
    if any(k in ("string_to_param", "emb_params", "clip_l", "clip_g") for k in keys):
        return "a textual-inversion embedding; load it with pipe.load_embedding(path)"
    if any(k.startswith(("encoder.down.", VAE + "encoder.", "encoder.down_blocks.")) for k in keys):
        return "a VAE alone; pass it as vae=path (--vae) with a model"
    if "conv_in.weight" in shapes and any(k.startswith("down_blocks.") for k in keys):
        return "a diffusers U-Net state dict; load the diffusers folder it belongs to"
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    try:
        kind = infer_diffusers_model_type({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    except Exception:  # noqa: BLE001 - its probes may need real values; then the kind is unknown
        kind = "v1"
    if kind != "v1":  # diffusers' answer when it recognises nothing
        return f"a {kind!r} checkpoint (diffusers' name for its family), not Stable Diffusion 1.x/2.x"
    return f"no Stable Diffusion U-Net ({UNET}input_blocks.0.0.weight); its first keys: {keys[:4]}"


def open_clip(shapes: dict[str, tuple]) -> bool:
    """Whether the text encoder is stored in OpenCLIP's names (``cond_stage_model.model.``), as SD 2.x is."""
    return OPEN_CLIP + "token_embedding.weight" in shapes


def family(shapes: dict[str, tuple], name: str) -> str:
    """'sd1' (CLIP ViT-L) or 'sd2' (OpenCLIP ViT-H) for an SD 1.x/2.x single file ``name``; a ValueError naming
    what the file holds otherwise (SDXL, SD3, Flux, a LoRA, a VAE, InstructPix2Pix, ...)."""
    keys = list(shapes)
    fix = "latentgen loads Stable Diffusion 1.x, 2.x and SDXL; use a UI that runs that family."
    first = UNET + "input_blocks.0.0.weight"
    if first not in shapes:
        raise ValueError(f"{name} is not an SD 1.x/2.x checkpoint: it holds {describe(shapes)}.")
    for prefix, what in (("depth_model.", "an SD 2 depth-to-image model"), (UNET + "label_emb.",
                         "a class-conditioned U-Net (SD 2 upscaler or unCLIP)"),
                         ("cond_stage_model.roberta.", "AltDiffusion (XLM-R text encoder)")):
        if any(k.startswith(prefix) for k in keys):
            raise ValueError(f"{name} is {what} ({prefix}*), which latentgen does not run: {fix}")
    stray = sorted(k for k in keys if k.startswith(UNET) and k[len(UNET):].split(".")[0] in DIFFUSERS_UNET)
    if stray:  # left after ldm_script.renames, which reads back what diffusers' conversion script writes
        raise ValueError(f"{name} mixes LDM and diffusers names in its U-Net ({stray[0]}) in a way no known "
                         f"converter numbers them, so its tensors cannot be placed. Convert the diffusers folder "
                         f"with `latentgen export FOLDER OUT.safetensors`, which writes any shape, or load the "
                         f"folder itself.")
    in_ch, out_ch = shapes[first][1], shapes[UNET + "out.2.weight"][0]
    if in_ch not in (out_ch, 2 * out_ch + 1):
        raise ValueError(f"{name} has a U-Net with {in_ch} input channels (InstructPix2Pix has 8): latentgen "
                         f"runs text-to-image ({out_ch}) and inpainting ({2 * out_ch + 1}) U-Nets only.")
    if open_clip(shapes):
        return "sd2"
    if any(k.startswith(CLIP) for k in keys):
        text = text_sizes({k[len(CLIP):]: v for k, v in shapes.items() if k.startswith(CLIP)}, False)
        # SD 2's OpenCLIP in CLIP names: diffusers' script writes it so from a folder saved by transformers 5
        # (it looks for text_model.encoder.layers.22 to take its SD 2 path). SD 1.x: CLIP ViT-L, 768 wide,
        # 12 layers; SD 2.x: 1024 wide, 23 layers (the 24th is unused).
        return "sd2" if text["hidden_size"] == 1024 or text["num_hidden_layers"] == 23 else "sd1"
    raise ValueError(f"{name} has no text encoder (cond_stage_model.transformer.* for SD 1.x, "
                     f"cond_stage_model.model.* for SD 2.x); save the full model, not its U-Net alone.")


# -- sizes from shapes ---------------------------------------------------------------------------
def _indices(shapes: dict[str, tuple], prefix: str) -> list[int]:
    """Sorted distinct integers that follow ``prefix`` in the keys (block numbers)."""
    found = {k[len(prefix):].split(".", 1)[0] for k in shapes if k.startswith(prefix)}
    return sorted(int(i) for i in found if i.isdigit())


def down_sizes(s: dict[str, tuple]) -> dict:
    """The UNet2DConditionModel config entries the input blocks and middle block of an LDM U-Net fix (keys without
    the prefix): all a ControlNet, their trainable copy, holds."""
    levels, level, i = [], [], 1
    while f"input_blocks.{i}.0.op.weight" in s or f"input_blocks.{i}.0.in_layers.2.weight" in s:
        if f"input_blocks.{i}.0.op.weight" in s:  # a downsampler closes a level
            levels.append(level)
            level = []
        else:  # (resnet output channels, transformer blocks after it)
            level.append((s[f"input_blocks.{i}.0.out_layers.3.weight"][0],
                          len(_indices(s, f"input_blocks.{i}.1.transformer_blocks."))))
        i += 1
    levels.append(level)
    depth = [lv[0][1] for lv in levels]
    proj = next((v for k, v in s.items() if k.endswith("proj_in.weight")), None)
    cross = next((v[1] for k, v in s.items() if k.endswith("attn2.to_k.weight")), None)
    if proj is None or cross is None:
        raise ValueError("the U-Net has no cross-attention (attn2): it is not a text-to-image SD U-Net.")
    return {"in_channels": s["input_blocks.0.0.weight"][1],
            "block_out_channels": [lv[0][0] for lv in levels], "layers_per_block": len(levels[0]),
            "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depth],
            "mid_block_type": "UNetMidBlock2DCrossAttn" if "middle_block.1.proj_in.weight" in s else "UNetMidBlock2D",
            "transformer_layers_per_block": max(depth) if len(set(d for d in depth if d)) <= 1 else depth,
            "cross_attention_dim": cross, "use_linear_projection": len(proj) == 2}


def unet_sizes(s: dict[str, tuple]) -> dict:
    """The UNet2DConditionModel config entries an LDM U-Net's shapes fix (keys without the prefix)."""
    down = down_sizes(s)
    layers, levels = down["layers_per_block"], len(down["block_out_channels"])
    up_attn = [f"output_blocks.{u * (layers + 1)}.1.proj_in.weight" in s for u in range(levels)]
    return {**down, "out_channels": s["out.2.weight"][0],
            "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attn]}


def vae_sizes(s: dict[str, tuple]) -> dict:
    """The AutoencoderKL config entries an LDM VAE's shapes fix (keys without the prefix)."""
    n = len(_indices(s, "encoder.down."))
    return {"in_channels": s["encoder.conv_in.weight"][1], "out_channels": s["decoder.conv_out.weight"][0],
            "latent_channels": s["decoder.conv_in.weight"][1],
            "layers_per_block": len(_indices(s, "encoder.down.0.block.")),
            "block_out_channels": [s[f"encoder.down.{i}.block.0.conv2.weight"][0] for i in range(n)],
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
            "use_quant_conv": "quant_conv.weight" in s, "use_post_quant_conv": "post_quant_conv.weight" in s,
            "mid_block_add_attention": "encoder.mid.attn_1.q.weight" in s}


def text_sizes(s: dict[str, tuple], open_clip: bool) -> dict:
    """The CLIPTextConfig entries a text encoder's shapes fix: keys after ``cond_stage_model.model.``
    (OpenCLIP) or ``cond_stage_model.transformer.`` (CLIP, with or without ``text_model.``).

    SD 2 runs OpenCLIP's penultimate layer: a full OpenCLIP tower (it has ``text_projection``) has
    one block more than the text encoder uses; a converted one holds exactly the blocks used."""
    if open_clip:
        blocks = len(_indices(s, "transformer.resblocks."))
        return {"hidden_size": s["token_embedding.weight"][1], "vocab_size": s["token_embedding.weight"][0],
                "max_position_embeddings": s["positional_embedding"][0],
                "intermediate_size": s["transformer.resblocks.0.mlp.c_fc.weight"][0],
                "num_hidden_layers": blocks - ("text_projection" in s)}
    s = {k.removeprefix("text_model."): v for k, v in s.items()}
    return {"hidden_size": s["embeddings.token_embedding.weight"][1],
            "vocab_size": s["embeddings.token_embedding.weight"][0],
            "max_position_embeddings": s["embeddings.position_embedding.weight"][0],
            "intermediate_size": s["encoder.layers.0.mlp.fc1.weight"][0],
            "num_hidden_layers": len(_indices(s, "encoder.layers."))}
