"""SDXL single files: the ``.safetensors`` A1111 and ComfyUI load (what Stability's sgm code saves and diffusers'
SDXL conversion script writes), read and written.

    model.diffusion_model.                 U-Net in LDM names (``latentgen.models.ldm``); the added embedding of
                                           the pooled text and size numbers as ``label_emb.0.0`` / ``label_emb.0.2``
    conditioner.embedders.0.transformer.   CLIP ViT-L in transformers' names (``text_model.*``)
    conditioner.embedders.1.model.         OpenCLIP ViT-bigG in OpenCLIP's names, ``text_projection`` (D, P)
    first_stage_model.                     the VAE

Reading goes through diffusers' ``convert_ldm_*`` and ``convert_open_clip_checkpoint``; the sizes come from the
tensor shapes over the closest SDXL preset (``pipelines/sdxl.json``, ``tiny-random-xl.json``), or from the
configs latentgen's export stores in the header. A refiner's file (sd_xl_refiner_1.0.safetensors) holds bigG alone,
as ``conditioner.embedders.0.model.``, and a U-Net whose added embedding takes five size numbers (the fifth the
aesthetic score); it loads as a refiner folder does (``components._refiner_text``): bigG as the one text encoder.
"""

from __future__ import annotations

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from . import components, ldm, single_file
from .. import schedulers
from ..text import xl as sdxl
from .checkpoints import Checkpoint, header_configs
from .ldm import UNET, VAE

TE1, TE2 = "conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."
REFINER = "conditioner.embedders.0.model."  # the refiner's one text encoder, bigG
ARCHITECTURE = "stable-diffusion-xl-v1-base"  # ModelSpec's name for it
REFINER_ARCHITECTURE = "stable-diffusion-xl-v1-refiner"


def is_xl(shapes: dict) -> bool:
    return any(k.startswith("conditioner.embedders.") for k in shapes)


def is_refiner(shapes: dict) -> bool:
    return any(k.startswith(REFINER) for k in shapes)


def _check(ck: Checkpoint, vae: Checkpoint | None) -> None:
    """Refuse a file without one of SDXL's parts (a refiner's: three), naming it."""
    name, big = ck.path.name, REFINER if is_refiner(ck.shapes) else TE2
    needed = [(UNET + "label_emb.0.0.weight", "the U-Net and its added embedding"),
              (big + "text_projection", "OpenCLIP ViT-bigG with its projection")]
    if big == TE2:
        needed.insert(1, (TE1 + "text_model.embeddings.token_embedding.weight", "CLIP ViT-L"))
    for prefix, what in needed:
        if prefix not in ck.shapes:
            raise ValueError(f"{name} is an SDXL checkpoint without {what} ({prefix}): the file is incomplete; "
                             f"save the whole model.")
    if not any(k.startswith(VAE + "encoder.") for k in (vae or ck).shapes):
        raise ValueError(f"{name} holds no VAE (first_stage_model.*); pass one with vae=path (--vae).")


def sizes(ck: Checkpoint, vae: Checkpoint | None = None) -> dict:
    """The config entries the shapes fix: U-Net (with its added embedding), VAE, both text encoders (a refiner:
    bigG as ``text_encoder``, the parts as its diffusers folder loads)."""
    refiner = is_refiner(ck.shapes)
    big = ck.part(REFINER if refiner else TE2)
    projection = big["text_projection"][1]  # (D, P)
    label = ck.part(UNET)["label_emb.0.0.weight"]  # (time embedding, n * A + P): n = 6 size numbers, a refiner's 5
    unet = {**ldm.unet_sizes(ck.part(UNET)), "addition_embed_type": "text_time",
            "projection_class_embeddings_input_dim": label[1],
            "addition_time_embed_dim": (label[1] - projection) // (5 if refiner else 6)}
    second = ldm.text_sizes(big, True)  # counts one block less where there is a projection (SD 2's rule) ...
    second.update(projection_dim=projection, num_hidden_layers=second["num_hidden_layers"] + 1)  # SDXL reads all
    found = {"unet": unet, "vae": ldm.vae_sizes((vae or ck).part(VAE))}
    if refiner:
        return {**found, "text_encoder": second}
    return {**found, "text_encoder": ldm.text_sizes(ck.part(TE1), False), "text_encoder_2": second}


def architecture(ck: Checkpoint, *, vae: Checkpoint | None = None) -> single_file.Architecture:
    """The SDXL architecture of ``ck``: the header's configs, or the closest SDXL preset with the shapes' sizes."""
    _check(ck, vae)
    found, refiner = sizes(ck, vae), is_refiner(ck.shapes)
    text = {"text_encoder": "text_encoder_2"} if refiner else {}  # the preset's part each read part sizes
    presets = single_file.closest_presets({k: v for k, v in found.items() if k not in ("text_encoder_2", *text)},
                                          "sdxl")
    header = header_configs(ck)
    if header is not None:
        cfg = {part: header[part] for part in found}
    else:
        base = presets[0]
        cfg = {part: {**getattr(base, text.get(part, part)), **found[part]} for part in found}
        for part in found.keys() - {"unet", "vae"}:
            width = found[part]["hidden_size"]
            if width != getattr(base, text.get(part, part))["hidden_size"]:
                cfg[part]["num_attention_heads"] = width // 64  # CLIP and OpenCLIP: 64 channels a head
        widths = found["unet"]["block_out_channels"]
        if widths != base.unet["block_out_channels"]:
            cfg["unet"]["attention_head_dim"] = [w // 64 for w in widths]
    if vae is not None:
        cfg["vae"] = {**cfg["vae"], **found["vae"]}
    components.check_fit(cfg["unet"], cfg["vae"], cfg["text_encoder"], cfg.get("text_encoder_2"), refiner=refiner)
    return single_file.Architecture("sdxl", True, cfg["unet"], cfg["vae"], cfg["text_encoder"], presets, header,
                                    text_encoder_2=cfg.get("text_encoder_2"))


def _clip(ck: Checkpoint, cfg: dict, dtype) -> CLIPTextModel:
    """CLIP ViT-L from ``conditioner.embedders.0.transformer.``."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    model = single_file.on_meta(lambda: CLIPTextModel(CLIPTextConfig(**cfg)))
    state = convert_ldm_clip_checkpoint(ck.tensors(TE1, dtype))
    return single_file.fill(model, _wrapped(model, state), "text encoder", ck.path.name)


def _big(ck: Checkpoint, cfg: dict, dtype, prefix: str = TE2) -> CLIPTextModelWithProjection:
    """OpenCLIP ViT-bigG with its projection from ``prefix`` (a refiner's: ``conditioner.embedders.0.model.``)."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    model = single_file.on_meta(lambda: CLIPTextModelWithProjection(CLIPTextConfig(**cfg)))
    state = convert_open_clip_checkpoint(model, ck.tensors(prefix, dtype), prefix=prefix)
    return single_file.fill(model, _wrapped(model, state), "text encoder 2", ck.path.name)


def _wrapped(model, state: dict) -> dict:
    """State names as ``model`` holds them: transformers 4 wraps the encoder in ``.text_model``, 5 may not."""
    state = {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}
    if hasattr(model, "text_model"):
        state = {k if k.startswith("text_projection") else "text_model." + k: v for k, v in state.items()}
    return state


def build(ck: Checkpoint, p: single_file.Architecture, *, device: torch.device, dtype: torch.dtype,
          vae: Checkpoint | None = None, prediction_type: str | None = None) -> components.Components:
    """The components of an SDXL file as ``architecture`` read it, on ``device`` in ``dtype``. The prediction type:
    ``prediction_type``, else the header's (ModelSpec's "v" for v-prediction fine-tunes), else the noise."""
    from .presets import Defaults

    spec = ck.metadata.get("modelspec.prediction_type")
    pred = prediction_type or ("v_prediction" if spec == "v" else "epsilon")
    refiner, preset = is_refiner(ck.shapes), p.presets[0]
    if p.header is not None:
        sched, defaults = p.header["scheduler"], Defaults.from_dict(p.header["defaults"])
        options, options_2 = p.header.get("tokenizer", {}), p.header.get("tokenizer_2", {"pad_token": "!"})
    else:
        sched, defaults = preset.scheduler, preset.defaults
        options = preset.tokenizer_2_options if refiner else preset.tokenizer_options
        options_2 = preset.tokenizer_2_options
    folder = preset.tokenizer_dir
    with components.quiet_loading():
        parts = dict(unet=single_file.build_unet(ck, p.unet, dtype), vae=single_file.build_vae(vae or ck, p.vae, dtype))
        if refiner:  # bigG is the one text encoder; the aesthetic scores are the fifth size number
            parts.update(text_encoder=_big(ck, p.text_encoder, dtype, REFINER),
                         xl=sdxl.XL(None, None, force_zeros=False, aesthetic=(6.0, 2.5)))
        else:
            parts.update(text_encoder=_clip(ck, p.text_encoder, dtype),
                         xl=sdxl.XL(CLIPTokenizer.from_pretrained(folder, **options_2),
                                    _big(ck, p.text_encoder_2, dtype)))
    c = components.Components(
        tokenizer=CLIPTokenizer.from_pretrained(folder, **options), **parts,
        scheduler=schedulers.make(defaults.scheduler or "euler", {**sched, "prediction_type": pred}),
        defaults=defaults, name=ck.path.stem + (" (EMA)" if ck.ema else ""))
    sdxl.check_unet(c.unet.config, c.text_encoder, c.xl)
    return components.finish(c, device, dtype)


def to_ldm(c: components.Components) -> dict[str, torch.Tensor]:
    """All tensors of an SDXL model (a refiner too) under the names of an SDXL single file."""
    out = {**ldm.unet_to_ldm(c.unet.state_dict(), c.unet.config), **ldm.vae_to_ldm(c.vae.state_dict(), c.vae.config)}
    if c.xl.refiner:
        big, prefix = c.text_encoder.state_dict(), REFINER
    else:
        big, prefix = c.xl.text_encoder_2.state_dict(), TE2
        out.update({TE1 + "text_model." + k.removeprefix("text_model."): v
                    for k, v in c.text_encoder.state_dict().items() if not k.endswith("position_ids")})
    projection = big.pop("text_projection.weight")  # (P, D) as a linear layer; OpenCLIP holds (D, P)
    return {**out, **ldm.open_clip_to_ldm(big, prefix=prefix), prefix + "text_projection": projection.T.contiguous()}
