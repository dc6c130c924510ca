"""Components from a single-file checkpoint (``latentgen.models.checkpoints.Checkpoint``): the architecture
read from the header, a preset and the tensor shapes, then models built on the meta device and
filled with the file's tensors (renamed by diffusers' ``convert_ldm_*`` functions)."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field, replace

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from . import components, ldm, prediction
from .. import schedulers
from .checkpoints import Checkpoint, header_configs, yaml_hints
from .ldm import CLIP, OPEN_CLIP, UNET, VAE
from .presets import Defaults, Preset, data_dir, list_presets, load_preset


@dataclass
class Architecture:
    """The architecture of a file, decided before any weight is read."""

    family: str  # "sd1" | "sd2" | "sdxl"
    open_clip: bool  # text encoder stored in OpenCLIP's names (else CLIP's, whatever the family)
    unet: dict
    vae: dict
    text_encoder: dict
    presets: list[Preset]  # closest presets, tied; the prediction type picks one
    header: dict | None = field(default=None, repr=False)  # configs stored by latentgen's export
    text_encoder_2: dict | None = None  # SDXL's OpenCLIP bigG (``latentgen.models.xl_file``)


def _plain(x):
    """Tuples -> lists, as JSON configs hold them."""
    return json.loads(json.dumps(x))


def _with_defaults(cls, cfg: dict) -> dict:
    """``cfg`` over the defaults of ``cls.__init__`` (a diffusers model) or of CLIPTextConfig."""
    if cls is CLIPTextConfig:
        return _plain({**CLIPTextConfig(**cfg).to_dict(), **cfg})
    base = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}
    return _plain({**base, **cfg})


_PARTS = (("unet", UNet2DConditionModel), ("vae", AutoencoderKL), ("text_encoder", CLIPTextConfig))


def _preset_configs(p: Preset) -> dict:
    """A preset's configs with defaults filled in; a preset with trained weights: its folder's configs."""
    cfgs = {"unet": p.unet, "vae": p.vae, "text_encoder": p.text_encoder, "scheduler": p.scheduler}
    if p.weights is not None:
        folder = data_dir("weights") / p.weights
        for part, name in (("unet", "config.json"), ("vae", "config.json"), ("text_encoder", "config.json"),
                           ("scheduler", "scheduler_config.json")):
            cfgs[part] = json.loads((folder / part / name).read_text())
    out = {part: _with_defaults(cls, cfgs[part]) for part, cls in _PARTS}
    return {**out, "scheduler": dict(cfgs["scheduler"])}


def _family(p: Preset) -> str:
    if p.text_encoder_2 is not None:
        return "sdxl"  # single SDXL files are refused before this (checkpoints.read)
    return "sd2" if p.text_encoder.get("hidden_act") == "gelu" else "sd1"  # OpenCLIP: gelu; CLIP-L: quick_gelu


def closest_presets(sizes: dict, family: str) -> list[Preset]:
    """The presets of ``family`` agreeing with the most sizes read from the file (ties all returned)."""
    scored = []
    for name in list_presets():
        p = load_preset(name)
        if _family(p) == family:
            cfg = _preset_configs(p)
            scored.append((sum(cfg[part].get(k) == v for part in sizes for k, v in sizes[part].items()), p))
    best = max(s for s, _ in scored)
    return [p for s, p in scored if s == best]


def _heads(sizes: dict, base: dict, hints: dict, family: str, what: str) -> int | list[int]:
    """U-Net attention heads (diffusers' ``attention_head_dim``): the yaml's, the preset's when the
    widths agree, else SD's rule (SD 1.x: 8 heads; SD 2.x: 64 channels a head)."""
    widths = sizes["block_out_channels"]
    if "num_head_channels" in hints:
        heads = [w // hints["num_head_channels"] for w in widths]
    elif "num_heads" in hints:
        heads = hints["num_heads"]
    elif base["block_out_channels"] == widths:
        heads = base["attention_head_dim"]
    else:
        heads = [w // 64 for w in widths] if family == "sd2" else 8
    per_level = heads if isinstance(heads, list) else [heads] * len(widths)
    if any(h < 1 or w % h for h, w in zip(per_level, widths)):
        raise ValueError(f"{what}: cannot tell the attention heads of U-Net widths {widths}; put the LDM yaml "
                         f"(unet_config num_head_channels or num_heads) beside it as <name>.yaml.")
    return heads


def _check_groups(cfg: dict, part: str, what: str) -> None:
    groups, widths = cfg["norm_num_groups"], cfg["block_out_channels"]
    if any(w % groups for w in widths):
        raise ValueError(f"{what}: {part} widths {widths} do not split into the preset's {groups} norm groups; "
                         f"load it from a diffusers folder (its config names norm_num_groups).")


def architecture(ck: Checkpoint, *, vae: Checkpoint | None = None) -> Architecture:
    """The architecture of ``ck``: header configs, or the closest preset updated from the shapes."""
    what = ck.path.name
    vae_ck = vae or ck
    try:
        family, open_clip = ldm.family(ck.shapes, what), ldm.open_clip(ck.shapes)
        if not any(k.startswith(VAE + "encoder.") for k in vae_ck.shapes):
            raise ValueError(f"{what} holds no VAE (first_stage_model.*); pass one with vae=path (--vae).")
        sizes = {"unet": ldm.unet_sizes(ck.part(UNET)), "vae": ldm.vae_sizes(vae_ck.part(VAE)),
                 "text_encoder": ldm.text_sizes(ck.part(OPEN_CLIP if open_clip else CLIP), open_clip)}
    except KeyError as e:  # a tensor every SD model has, missing
        raise ValueError(f"{what}: no tensor {e.args[0]!r}, which every SD 1.x/2.x model has: the file is "
                         f"incomplete (a partial save, or a U-Net, VAE or text encoder left out).") from None
    presets = closest_presets(sizes, family)
    header = header_configs(ck)
    if header is not None:
        cfg = {part: header[part] for part in ("unet", "vae", "text_encoder")}
    else:
        base, hints = _preset_configs(presets[0]), yaml_hints(ck.path)
        cfg = {part: {**base[part], **sizes[part]} for part in sizes}
        cfg["unet"]["attention_head_dim"] = _heads(sizes["unet"], base["unet"], hints, family, what)
        width, text = sizes["text_encoder"]["hidden_size"], cfg["text_encoder"]
        if width != base["text_encoder"]["hidden_size"]:
            text["num_attention_heads"] = width // 64
        if text["num_attention_heads"] < 1 or width % text["num_attention_heads"]:
            raise ValueError(f"{what}: cannot tell the attention heads of a {width}-wide text encoder; "
                             f"load it from a diffusers folder.")
        if "scale_factor" in hints:
            cfg["vae"]["scaling_factor"] = hints["scale_factor"]
        _check_groups(cfg["unet"], "U-Net", what)
        _check_groups(cfg["vae"], "VAE", what)
    if vae is not None:  # a separate VAE: its own sizes over the model's VAE config
        cfg["vae"] = {**cfg["vae"], **sizes["vae"]}
    fit_vae(cfg["unet"], cfg["vae"], cfg["text_encoder"], vae)
    return Architecture(family, open_clip, cfg["unet"], cfg["vae"], cfg["text_encoder"], presets, header)


def fit_vae(unet: dict, vae_cfg: dict, text: dict, vae: Checkpoint | None) -> None:
    """``components.check_fit``, naming the separate VAE file when there is one."""
    try:
        components.check_fit(unet, vae_cfg, text)
    except ValueError as e:
        raise ValueError(f"vae={vae.path.name}: {e}" if vae is not None else str(e)) from None


# -- models from tensors -------------------------------------------------------------------------
def fill(model: torch.nn.Module, state: dict[str, torch.Tensor], part: str, what: str) -> torch.nn.Module:
    """Load ``state`` into a model built on the meta device; every tensor must fit, by name and shape."""
    expected = set(model.state_dict())
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise ValueError(f"{what}: the {part} tensors do not fit the architecture read from the file "
                         f"(missing {missing[:4]}{'...' if len(missing) > 4 else ''}, unexpected {extra[:4]}); "
                         f"the file is damaged or mixes models.")
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise ValueError(f"{what}: {part} tensor shapes do not fit: {str(e).splitlines()[-1].strip()}") from None
    return model


def on_meta(make):
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):  # parameters on meta: no random initialisation
        return make()


def build_unet(ck: Checkpoint, cfg: dict, dtype: torch.dtype | None = None) -> UNet2DConditionModel:
    """The U-Net of ``ck``; ``dtype``: of its weights (default: as stored)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    model = on_meta(lambda: UNet2DConditionModel.from_config(cfg))
    return fill(model, convert_ldm_unet_checkpoint(ck.tensors(UNET, dtype), cfg), "U-Net", ck.path.name)


def build_vae(ck: Checkpoint, cfg: dict, dtype: torch.dtype | None = None) -> AutoencoderKL:
    """The VAE of ``ck`` (tensors under ``first_stage_model.``)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    model = on_meta(lambda: AutoencoderKL.from_config(cfg))
    return fill(model, convert_ldm_vae_checkpoint(ck.tensors(VAE, dtype), cfg), "VAE", ck.path.name)


def _layer(key: str) -> int | None:
    """The encoder layer a text-encoder tensor belongs to (``encoder.layers.<i>.``), else None."""
    head, sep, tail = key.partition("encoder.layers.")
    index = tail.split(".", 1)[0]
    return int(index) if sep and index.isdigit() else None


def build_text_encoder(ck: Checkpoint, cfg: dict, open_clip: bool,
                       dtype: torch.dtype | None = None) -> CLIPTextModel:
    """From CLIP's names (SD 1.x, or SD 2.x as diffusers' script may write it; transformers 4 names
    ``text_model.*`` or transformers 5 names, either accepted) or OpenCLIP's (SD 2.x: the layers the
    config holds; OpenCLIP's last block and projection, which SD 2 does not use, are left out)."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint

    model = on_meta(lambda: CLIPTextModel(CLIPTextConfig(**cfg)))
    if open_clip:
        state = convert_open_clip_checkpoint(model, ck.tensors(OPEN_CLIP, dtype), prefix=OPEN_CLIP)
    else:
        state = convert_ldm_clip_checkpoint(ck.tensors(CLIP, dtype))
    layers = cfg["num_hidden_layers"]
    state = {k.removeprefix("text_model."): v for k, v in state.items()
             if not k.endswith(("position_ids", "text_projection.weight")) and (_layer(k) or 0) < layers}
    if hasattr(model, "text_model"):  # transformers 4 wraps the encoder in .text_model
        state = {"text_model." + k: v for k, v in state.items()}
    return fill(model, state, "text encoder", ck.path.name)


def _retarget(unet: UNet2DConditionModel, cfg: dict) -> None:
    """Give ``unet`` the chosen preset's settings that no weight shows (size, attention upcast)."""
    from diffusers.models.attention_processor import Attention

    for m in unet.modules():
        if isinstance(m, Attention):
            m.upcast_attention = cfg.get("upcast_attention", False)
    unet.register_to_config(sample_size=cfg["sample_size"], upcast_attention=cfg.get("upcast_attention", False))


def build(ck: Checkpoint, p: Architecture, *, device: torch.device, dtype: torch.dtype, vae: Checkpoint | None = None,
          prediction_type: str | None = None):
    """Components of a single file as ``architecture`` read it (``p``), on ``device`` in ``dtype``; ``vae``: a separate VAE
    file (``read_vae``) used instead of its own."""
    pred = prediction.normalize(prediction_type)
    hints = yaml_hints(ck.path)  # its parameterization counts over the header's
    inpainting = p.unet["in_channels"] != p.unet["out_channels"]
    pred, _ = prediction.resolve(pred, hints.get("prediction_type"), ck.metadata, p.family, inpainting)
    with components.quiet_loading():
        # each tensor is cast as it is read: the file's dtype and the model's are never both in memory
        parts = dict(unet=build_unet(ck, p.unet, dtype),
                     vae=build_vae(vae or ck, p.vae, dtype),
                     text_encoder=build_text_encoder(ck, p.text_encoder, p.open_clip, dtype))
    c = components.Components(tokenizer=None, scheduler=None, defaults=Defaults(), name=ck.path.stem, **parts)
    c = components.finish(c, device, dtype)
    if pred is None:
        pred = prediction.detect(c.unet, p.presets[0].scheduler.get("num_train_timesteps", 1000))
    return _complete(c, p, pred, ck)


def _complete(c, p: Architecture, pred: str, ck: Checkpoint):
    """Tokenizer, scheduler, defaults and name, from the header or the preset the prediction picks."""
    want = "v_prediction" if pred == "v_prediction" else "epsilon"
    preset = next((q for q in p.presets if q.scheduler.get("prediction_type", "epsilon") == want), p.presets[0])
    if p.header is not None:
        sched_cfg, defaults = p.header["scheduler"], Defaults.from_dict(p.header["defaults"])
        options = p.header.get("tokenizer", {})
    else:
        sched_cfg, defaults, options = _preset_configs(preset)["scheduler"], preset.defaults, preset.tokenizer_options
        _retarget(c.unet, _preset_configs(preset)["unet"])
    scheduler = schedulers.make(defaults.scheduler or "ddim", {**sched_cfg, "prediction_type": want})
    name = ck.path.stem + (" (EMA)" if ck.ema else "")
    tokenizer = CLIPTokenizer.from_pretrained(preset.tokenizer_dir, **options)
    return replace(c, tokenizer=tokenizer, scheduler=scheduler, defaults=defaults, name=name)
