"""ControlNets from single files, as lllyasviel and A1111 share them: ``control_v11p_sd15_canny.pth`` (the LDM
names of the original code, no prefix: ``time_embed.*``, ``input_blocks.*``, ``middle_block.*``, ``zero_convs.N.0.*``,
``middle_block_out.0.*``, ``input_hint_block.N.*``) and ``control_sd15_canny.safetensors`` or the fp16 files (the
same names under ``control_model.``, possibly beside a whole SD model's tensors, which are not read).

Reading, everything checked before a model is built:
  1. the file through ``latentgen.models.checkpoints.read``: ``.safetensors`` by its header, ``.pth`` / ``.ckpt`` /
     ``.bin`` through ``torch.load(weights_only=True)`` only (a pickle that needs code is refused, none of it run);
  2. what it is: a ControlNet, else a refusal saying what it holds (a LoRA, a whole SD model, a T2I-Adapter, a
     Control-LoRA, a difference ControlNet, a diffusers weights file);
  3. its architecture: the U-Net it serves (``like``) gives what weights do not show (attention heads, norm
     groups); the file must agree with it on the latent channels, widths, blocks and cross-attention width (SD 1.x
     768, SD 2.x 1024, SDXL 2048) and gives what is its own: the hint encoder's channels, linear or 1x1-conv
     attention projections (a 2-D ``proj_in`` is linear), and ``global_average_pooling`` from ``<stem>.yaml``
     beside it (v1.1's shuffle model; ``latentgen.models.checkpoints.yaml_hints``);
  4. the tensors, renamed by diffusers' ``convert_controlnet_checkpoint`` but for the hint encoder, which it
     numbers as SD's (``conv_out`` at index 14); here its convolutions in order, whatever their number:

    LDM (a SiLU after each but the last)    diffusers, under ``controlnet_cond_embedding.``
    input_hint_block.0                      conv_in        (hint channels -> first width)
    input_hint_block.2, 4, ..., 2k          blocks.0, ..., blocks.k-1   (pairs: same width, then stride 2)
    input_hint_block.2k+2                   conv_out       (-> the U-Net's first width; zero at the start of training)

   into a ``ControlNetModel`` built on the meta device and filled strictly, in the U-Net's dtype.

A ControlNet's weights in diffusers' own names in one file, without its config.json (how SDXL ControlNets are
shared for A1111: ``diffusers_xl_canny_full.safetensors``, ``_mid``, ``_small``), is read the same way: its sizes
from the shapes (``diffusers_sizes``: widths, blocks, transformer depth per level, which may be shallower than the
U-Net's, hint encoder), the rest from the U-Net it serves, the same checks, its tensors as they are.

``to_ldm`` writes the names back (a diffusers ControlNet as A1111 reads it).
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

from ..models import checkpoints, ldm, single_file

PREFIX = "control_model."  # A1111's, around the ControlNet's names (diffusers' LDM_CONTROLNET_KEY)
HINT = "input_hint_block."
DIFFUSERS = "controlnet_cond_embedding.conv_in.weight"  # a ControlNet in diffusers' names
SUFFIXES = checkpoints.SUFFIXES
FAMILIES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}  # cross-attention width -> the family it serves
LABELS = {"in_channels": "latent channels", "block_out_channels": "block widths",
          "layers_per_block": "layers per block", "down_block_types": "down blocks"}


def is_file(path: Path) -> bool:
    """Whether ``path`` is a file with a weights file's name (``.safetensors``, ``.pth``, ``.ckpt``, ...)."""
    return path.is_file() and path.suffix.lower() in SUFFIXES


def read(path: str | Path, like, name: str):
    """The ControlNet in the file ``path`` for the U-Net ``like``, in its dtype (on the CPU); ``name``: the unit, as
    errors name it (``control[0]``). Made for another model, or no ControlNet: ValueError before anything is built."""
    from diffusers import ControlNetModel

    path = Path(path)
    what = f"{name}.model={str(path)!r}"
    try:
        ck = checkpoints.read(path)
        pooled = bool(checkpoints.yaml_hints(path).get("global_average_pooling"))
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    if DIFFUSERS in ck.shapes:  # diffusers' names, no config: sizes from the shapes
        cfg = config(ck.shapes, like.config, what, pooled, diffusers_sizes(ck.shapes, what))
        state = ck.tensors("", like.dtype)
    else:
        prefix = _prefix(ck.shapes, what)
        cfg = config(ck.part(prefix), like.config, what, pooled)
        state = convert({k[len(prefix):]: v for k, v in ck.tensors(prefix, like.dtype).items()}, cfg)
    model = single_file.on_meta(lambda: ControlNetModel.from_config(cfg))
    return single_file.fill(model, state, "ControlNet", what)


def _prefix(shapes: dict[str, tuple], what: str) -> str:
    """Where the ControlNet's names start (``control_model.`` or nothing); no ControlNet there: ValueError."""
    if "difference" in shapes:  # sd-webui-controlnet's "diff" files: the weights minus SD 1.5's
        raise ValueError(f"{what} is a difference ControlNet (its weights are added to a base model's); latentgen "
                         f"loads whole ControlNets: use the full file of the same model (control_*.pth).")
    if "lora_controlnet" in shapes or any(k.endswith((".up", ".down")) for k in shapes):
        raise ValueError(f"{what} is a Control-LoRA (Stability's low-rank ControlNet, added to an SDXL model's own "
                         f"weights): latentgen loads whole SD 1.x/2.x ControlNets.")
    for prefix in (PREFIX, ""):
        if prefix + HINT + "0.weight" in shapes and prefix + "zero_convs.0.0.weight" in shapes:
            return prefix
    raise ValueError(f"{what} is not a ControlNet (no {HINT}* and zero_convs.* tensors, bare or under {PREFIX}): "
                     f"it holds {_holds(shapes)}.")


def _holds(shapes: dict[str, tuple]) -> str:
    """What a file without a ControlNet holds, in words, with what to do with it."""
    if any(k.startswith(("body.", "adapter.", "transformer_layes.")) for k in shapes):
        return "a T2I-Adapter (body.*), which latentgen does not run; use a ControlNet of the same kind"
    if ldm.UNET + "input_blocks.0.0.weight" in shapes:
        return (f"a whole Stable Diffusion model ({ldm.UNET}*) and no ControlNet ({PREFIX}*); load it as the "
                f"model: latentgen.load(path)")
    text = ldm.describe(shapes)  # a LoRA, an embedding, a VAE, a diffusers U-Net, another family
    return f"none of the kinds latentgen knows; its first keys: {list(shapes)[:4]}" if text.startswith("no ") else text


def _hint_convs(shapes: dict[str, tuple]) -> list[int]:
    """The indices of the hint encoder's convolutions, in order (``input_hint_block.<i>.weight``)."""
    found = {k[len(HINT):].split(".")[0] for k in shapes if k.startswith(HINT) and k.endswith(".weight")}
    return sorted(int(i) for i in found if i.isdigit())


def sizes(shapes: dict[str, tuple], what: str) -> dict:
    """The ``ControlNetModel`` config entries the tensor shapes fix (names without the prefix)."""
    try:
        out = ldm.down_sizes(shapes)
    except (KeyError, IndexError) as e:
        missing = repr(e.args[0]) if isinstance(e, KeyError) else "input_blocks.1.*"
        raise ValueError(f"{what}: its ControlNet is incomplete (no {missing}): a partial save or a damaged "
                         f"file.") from None
    except ValueError as e:
        raise ValueError(f"{what}: {str(e).replace('U-Net', 'ControlNet')}") from None
    convs = [shapes[f"{HINT}{i}.weight"] for i in _hint_convs(shapes)]  # (out, in, 3, 3) each
    if len(convs) < 2 or len(convs) % 2:
        raise ValueError(f"{what}: its hint encoder ({HINT}*) has {len(convs)} convolutions; a ControlNet's has "
                         f"conv_in, pairs of blocks and conv_out (SD's: 8). The file is damaged or of another kind.")
    return {**out, "conditioning_channels": convs[0][1],
            "conditioning_embedding_out_channels": [convs[0][0]] + [c[0] for c in convs[2:-1:2]]}


def diffusers_sizes(shapes: dict[str, tuple], what: str) -> dict:
    """The ``ControlNetModel`` config entries the shapes of a file in diffusers' names fix."""
    def count(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in shapes if k.startswith(prefix)})

    levels, layers = count("down_blocks."), count("down_blocks.0.resnets.")
    if not levels or not layers:
        raise ValueError(f"{what}: its ControlNet is incomplete (no down_blocks.*): a partial save or a damaged file.")
    attn = [f"down_blocks.{i}.attentions.0.transformer_blocks.0.attn2.to_k.weight" in shapes for i in range(levels)]
    cross = [shapes[f"down_blocks.{i}.attentions.0.transformer_blocks.0.attn2.to_k.weight"][1]
             for i in range(levels) if attn[i]]
    depth = [count(f"down_blocks.{i}.attentions.0.transformer_blocks.") if attn[i] else 1 for i in range(levels)]
    mid = count("mid_block.attentions.0.transformer_blocks.")
    hint = sorted(int(k.split(".")[2]) for k in shapes
                  if re.match(r"controlnet_cond_embedding\.blocks\.\d+\.weight$", k))
    proj = next((shapes[k] for k in shapes if k.endswith("attentions.0.proj_in.weight")), (0, 0))
    out = {"in_channels": shapes["conv_in.weight"][1], "layers_per_block": layers,
           "block_out_channels": [shapes[f"down_blocks.{i}.resnets.0.conv2.weight"][0] for i in range(levels)],
           "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
           "cross_attention_dim": cross[0] if cross else None, "use_linear_projection": len(proj) == 2,
           "transformer_layers_per_block": depth if not mid or mid == depth[-1] else [*depth[:-1], mid],
           "mid_block_type": "UNetMidBlock2DCrossAttn" if mid else "UNetMidBlock2D",
           "conditioning_channels": shapes[DIFFUSERS][1],
           "conditioning_embedding_out_channels": [shapes[DIFFUSERS][0]] +
           [shapes[f"controlnet_cond_embedding.blocks.{j}.weight"][0] for j in hint[1::2]]}
    if "add_embedding.linear_1.weight" in shapes:
        out["projection_class_embeddings_input_dim"] = shapes["add_embedding.linear_1.weight"][1]
    return out


def config(shapes: dict[str, tuple], unet, what: str, pooled: bool = False, have: dict | None = None) -> dict:
    """The ``ControlNetModel`` config of a file (shapes without the prefix) for the U-Net config ``unet``: the
    U-Net's entries a ControlNet shares (what ``ControlNetModel.from_unet`` copies), the file's own sizes over them
    (``have``: already read, from diffusers' names); a file made for another model: ValueError naming what does not
    fit."""
    have = have or sizes(shapes, what)
    base = base_config(unet)
    latent = unet["out_channels"]  # not in_channels: a 9-channel inpainting U-Net's ControlNet sees the latents
    cross = have["cross_attention_dim"]
    if cross != unet["cross_attention_dim"]:
        mine, fam = unet["cross_attention_dim"], {w: f" ({f})" for w, f in FAMILIES.items()}
        raise ValueError(f"{what} was made for another model: its cross-attention width is {cross}"
                         f"{fam.get(cross, '')}, this model's {mine}{fam.get(mine, '')}; use a ControlNet trained "
                         f"for this model's family.")
    for key, want in (("in_channels", latent), *((k, base[k]) for k in LABELS if k != "in_channels")):
        if list(_as_list(have[key])) != list(_as_list(want)):
            raise ValueError(f"{what} was made for another model: its {LABELS[key]} are {have[key]}, this model's "
                             f"{want}; use a ControlNet trained for this model's family.")
    added = have.get("projection_class_embeddings_input_dim", base.get("projection_class_embeddings_input_dim"))
    if added != base.get("projection_class_embeddings_input_dim"):
        raise ValueError(f"{what} was made for another model: its added embedding takes {added} numbers, this "
                         f"model's {base.get('projection_class_embeddings_input_dim')}; use a ControlNet trained for "
                         f"this model's family.")
    own = ("in_channels", "use_linear_projection", "conditioning_channels", "conditioning_embedding_out_channels",
           "transformer_layers_per_block", "mid_block_type")
    return {**base, **{k: have[k] for k in own if k in have}, "global_pool_conditions": pooled}


def base_config(unet) -> dict:
    """The U-Net config entries a ``ControlNetModel`` takes, as JSON holds them (``unet``: a U-Net's config)."""
    from diffusers import ControlNetModel

    names = [k for k in inspect.signature(ControlNetModel.__init__).parameters if k != "self" and k in unet]
    return json.loads(json.dumps({k: unet[k] for k in names}))


def _as_list(v):
    return v if isinstance(v, (list, tuple)) else [v]


def convert(tensors: dict, cfg: dict) -> dict:
    """LDM ControlNet tensors (names without the prefix) -> ``ControlNetModel`` names: diffusers'
    ``convert_controlnet_checkpoint`` for the copy of the U-Net and the zero convolutions, the hint encoder here
    (the module docstring's table)."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    body = {k: v for k, v in tensors.items() if not k.startswith(HINT)}
    state = {k: v for k, v in convert_controlnet_checkpoint(body, cfg).items() if v is not None}  # None: absent
    convs = _hint_convs(tensors)
    names = dict(zip(map(str, convs), ["conv_in", *(f"blocks.{j}" for j in range(len(convs) - 2)), "conv_out"]))
    for k, v in tensors.items():
        if k.startswith(HINT):
            index, _, rest = k[len(HINT):].partition(".")
            state[f"controlnet_cond_embedding.{names.get(index, index)}.{rest}"] = v
        elif m := re.match(r"label_emb\.0\.([02])\.(.*)", k):  # SDXL's added embedding, which diffusers' drops
            state[f"add_embedding.linear_{int(m[1]) // 2 + 1}.{m[2]}"] = v
    return state


def to_ldm(state: dict, config, prefix: str = "") -> dict:
    """A ``ControlNetModel`` state dict -> LDM names, the inverse of ``convert`` (the U-Net's parts through
    ``latentgen.models.ldm.unet_key``); ``prefix``: "" as lllyasviel's ``.pth`` files, ``control_model.`` as A1111's."""
    blocks = 2 * (len(config["conditioning_embedding_out_channels"]) - 1)
    hint = {"conv_in": 0, **{f"blocks.{j}": 2 * (j + 1) for j in range(blocks)}, "conv_out": 2 * (blocks + 1)}
    out = {}
    for k, v in state.items():
        if m := re.match(r"controlnet_down_blocks\.(\d+)\.(.*)", k):
            name = f"zero_convs.{m[1]}.0.{m[2]}"
        elif k.startswith("controlnet_mid_block."):
            name = "middle_block_out.0." + k.removeprefix("controlnet_mid_block.")
        elif m := re.match(r"controlnet_cond_embedding\.(conv_in|conv_out|blocks\.\d+)\.(.*)", k):
            name = f"{HINT}{hint[m[1]]}.{m[2]}"
        else:
            name = ldm.unet_key(k, config["layers_per_block"], set())
        out[prefix + name] = v
    return out
