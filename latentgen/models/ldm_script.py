"""Single files written by diffusers' ``scripts/convert_diffusers_to_original_stable_diffusion.py``
from a model that is not shaped as Stable Diffusion (the embedded model: 2 U-Net levels of 1 layer).

That script numbers LDM blocks by SD's fixed shape (4 levels; 2 layers down, 3 up), whatever the model:

    diffusers U-Net                                 what the script writes
    down_blocks.i.resnets.j / .attentions.j         input_blocks.{3i + j + 1}.0 / .1    (i < 4, j < 2)
    down_blocks.i.downsamplers.0.conv               input_blocks.{3(i + 1)}.0.op        (i < 3)
    up_blocks.i.resnets.j / .attentions.j           output_blocks.{3i + j}.0 / .1       (i < 4, j < 3)
    up_blocks.i.upsamplers.0.conv                   output_blocks.{3i + 2}.{1 if i == 0 else 2}.conv
    VAE decoder.up_blocks.i                         decoder.up.{3 - i}

and leaves what its table lacks in diffusers' names: attentions of ``down_blocks.3`` and ``up_blocks.0``
(SD has none there), levels past 4, layers past 2. For SD's shape that is the LDM layout; for others
it is neither (LDM numbers blocks by the real layer count: ``latentgen.models.ldm``), and diffusers'
``from_single_file`` refuses such a file. The numbering is fixed, so it can be read back: ``renames``
maps the script's names to diffusers blocks and those to the LDM names of the model's real shape;
``latentgen.models.checkpoints.read`` applies it, and the usual reader takes it from there.

A file is in the script's numbering when its U-Net holds diffusers names or its ``input_blocks`` skip
numbers (LDM's count up without a gap); its VAE when the decoder levels are numbered 4 - n .. 3.
"""

from __future__ import annotations

import re

from . import ldm
from .ldm import UNET, VAE

_TOP = {v: k for k, v in ldm._UNET_TOP.items()}  # LDM -> diffusers
_RESNET = {v: k for k, v in ldm._RESNET.items()}


def _diffusers_name(key: str) -> str:
    """The diffusers name of a U-Net tensor as the script wrote it (names it left alone pass through,
    but their resnet parts, which the script renamed everywhere, go back to diffusers' words)."""
    if m := re.match(r"input_blocks\.(\d+)\.0\.op\.(.*)", key):
        return f"down_blocks.{int(m[1]) // 3 - 1}.downsamplers.0.conv.{m[2]}"
    if (m := re.match(r"input_blocks\.(\d+)\.([01])\.(.*)", key)) and m[1] != "0":
        i, j = divmod(int(m[1]) - 1, 3)
        key = f"down_blocks.{i}.{'resnets' if m[2] == '0' else 'attentions'}.{j}.{m[3]}"
    elif m := re.match(r"output_blocks\.(\d+)\.([012])\.(.*)", key):
        i, j = divmod(int(m[1]), 3)
        if m[2] != "0" and m[3].startswith("conv."):  # an upsampler: its only tensors are conv.*
            return f"up_blocks.{i}.upsamplers.0.{m[3]}"
        key = f"up_blocks.{i}.{'resnets' if m[2] == '0' else 'attentions'}.{j}.{m[3]}"
    elif m := re.match(r"middle_block\.([012])\.(.*)", key):
        key = f"mid_block.attentions.0.{m[2]}" if m[1] == "1" else f"mid_block.resnets.{int(m[1]) // 2}.{m[2]}"
    else:
        key = ldm._rename(key, _TOP)
    if m := re.match(r"(.*\.resnets\.\d+)\.(.*)", key):
        key = f"{m[1]}.{ldm._rename(m[2], _RESNET)}"
    return key


def _unet_names(shapes: dict[str, tuple]) -> dict[str, str]:
    """{LDM name of the real shape: name in the file} for a U-Net in the script's numbering (no prefix)."""
    back = {_diffusers_name(k): k for k in shapes}
    down = [int(m[2]) for k in back if (m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.", k))]
    if not down:
        raise ValueError("no down-block resnets")
    layers = 1 + max(down)
    up_attention = {int(m[1]) for k in back if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    return {ldm.unet_key(k, layers, up_attention): old for k, old in back.items()}


def _vae_names(shapes: dict[str, tuple]) -> dict[str, str]:
    """{LDM name: name in the file} for a VAE: decoder levels numbered 4 - n .. 3 shift down to 0 .. n - 1."""
    n, found = len(ldm._indices(shapes, "encoder.down.")), ldm._indices(shapes, "decoder.up.")
    shift = 4 - n if 0 < n < 4 and found == list(range(4 - n, 4)) else 0

    def new(k):
        m = re.match(r"decoder\.up\.(\d+)\.(.*)", k)
        return f"decoder.up.{int(m[1]) - shift}.{m[2]}" if m and shift else k

    return {new(k): k for k in shapes}


def in_script_numbering(unet: dict[str, tuple]) -> bool:
    """Whether U-Net shapes (no prefix) are in the script's numbering of a model not shaped as SD."""
    if any(k.split(".", 1)[0] in ldm.DIFFUSERS_UNET for k in unet):
        return True
    found = ldm._indices(unet, "input_blocks.")
    return bool(found) and found != list(range(len(found)))


def renames(unet: dict[str, tuple], vae: dict[str, tuple]) -> dict[str, str]:
    """{full LDM name for the model's shape: full name in the file} for the U-Net and VAE tensors (shapes
    without their prefixes) that the script numbered; empty when there are none (LDM files, files no
    numbering places)."""
    names = {}
    if "input_blocks.0.0.weight" in unet and in_script_numbering(unet):
        try:
            renamed = _unet_names(unet)
        except ValueError:  # a name no numbering places: ldm.family refuses the file, naming one
            return {}
        if len(renamed) < len(unet):  # two tensors on one name: not the script's numbering after all
            return {}
        names.update({UNET + new: UNET + old for new, old in renamed.items() if new != old})
    if vae:
        names.update({VAE + new: VAE + old for new, old in _vae_names(vae).items() if new != old})
    return names
