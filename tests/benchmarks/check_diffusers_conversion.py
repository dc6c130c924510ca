"""Check (issue 13): single files written by diffusers' own conversion script load in latentgen and draw
what their diffusers folder draws, as latentgen's own export does.

diffusers' ``scripts/convert_diffusers_to_original_stable_diffusion.py`` is not in its wheel and no hub is
reachable in CI, so this is a script, not a test: fetch the script from the diffusers repository and
pass its path. For each model it saves a diffusers folder, runs diffusers' script on it (safetensors,
and the pickled ``.ckpt`` / ``--half`` variants where named), writes latentgen's export, loads each file
with ``latentgen.load`` and prints the largest pixel difference to the folder's image in 1/255.

    python tests/benchmarks/check_diffusers_conversion.py --script PATH/convert_diffusers_to_original_stable_diffusion.py

Models: tiny random SD 1.x, tiny SD 1.x inpainting (9-channel U-Net), tiny SD 2-shaped models (epsilon
and v) whose text encoder has 23 layers, the depth at which diffusers' script takes its SD 2 (OpenCLIP)
path, a tiny model of the embedded model's U-Net shape with a 2-level VAE, and the embedded default
model. diffusers' script hard-codes SD's block layout (4 levels of 2 layers); from other shapes (the
embedded model: 2 levels of 1 layer) it writes a file that mixes its own block numbers with diffusers
names, which diffusers' from_single_file cannot read; latentgen reads that numbering back
(``latentgen.models.ldm_script``). ``--record-names JSON`` writes the names the script gives the tiny
embedded-shaped model, which ``tests/test_ldm_script.py`` replays in CI (where the script is absent).

A tiny SD 2 folder saved by transformers 5 (no ``text_model.`` level) makes diffusers' script write SD 2's
text encoder in CLIP's names; latentgen still reads it as SD 2 (by its depth, 23 layers, or width, 1024).

Measured 2026-11-28 (diffusers scripts/ at 58eb52c): every file 0/255 against its folder, the tiny
embedded-shaped model's and the embedded model's script files included (until that day they were
refused); fp16 files 1-2/255, the rounding of the weights, the same for latentgen's fp16 export.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import latentgen  # noqa: E402
from latentgen.models import components, export as ldm_export, loading
from latentgen import schedulers  # noqa: E402
from latentgen.models.presets import load_preset  # noqa: E402

ARGS = dict(seed=3, steps=4, guidance=6.0, scheduler="ddim")


def save_folder(c: components.Components, folder: Path, t4_names: bool = True) -> Path:
    """Components as a diffusers folder (model_index.json, safetensors weights). ``t4_names``: the text
    encoder's keys get the ``text_model.`` prefix that transformers 4 wrote and folders on the hub hold;
    transformers 5 drops it, and diffusers' script then misses SD 2 (it looks for
    ``text_model.encoder.layers.22.*``) and writes SD 2's text encoder in CLIP's names."""
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file, save_file

    StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                            scheduler=c.scheduler, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)
    text = folder / "text_encoder" / "model.safetensors"
    if not t4_names:
        return folder
    save_file({k if k.startswith("text_model.") else "text_model." + k: v for k, v in load_file(text).items()},
              str(text), metadata={"format": "pt"})
    return folder


def sd_shaped(preset: str, pred: str, seed: int, in_channels: int = 4) -> components.Components:
    """A model with SD's topology at tiny widths, as diffusers' script needs (it hard-codes SD's layout:
    4 U-Net blocks of 2 layers, cross-attention in all but the deepest, 4 VAE blocks of 2 layers). "sd2":
    linear-projection attention, 64-channel heads, a gelu text encoder of 23 layers (the depth by which
    diffusers' script recognises SD 2), "!" padding."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    p, two = load_preset(preset), preset == "sd2"
    torch.manual_seed(seed)
    width = 64  # one 64-channel text head: the rule a file without a header is read by
    unet = UNet2DConditionModel(
        block_out_channels=(64, 64, 128, 128) if two else (32, 32, 64, 64), layers_per_block=2, sample_size=8,
        in_channels=in_channels, cross_attention_dim=width, use_linear_projection=two,
        attention_head_dim=(1, 1, 2, 2) if two else 8, norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=(32, 32, 64, 64), layers_per_block=2, norm_num_groups=32, sample_size=64,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=width, intermediate_size=2 * width, num_attention_heads=1,
                                        num_hidden_layers=23 if two else 3, hidden_act="gelu" if two else "quick_gelu",
                                        bos_token_id=0, eos_token_id=2))
    tokenizer = CLIPTokenizer.from_pretrained(p.tokenizer_dir, **p.tokenizer_options)
    scheduler = schedulers.make("ddim", {**p.scheduler, "prediction_type": pred})
    return components.Components(tokenizer, text.eval(), unet.eval(), vae.eval(), scheduler, None, preset)


def embedded_shaped(seed: int) -> components.Components:
    """The embedded model's U-Net topology (2 levels of 1 layer, cross-attention in all, as
    ``pipelines/default.json``) at ``tiny-random``'s widths, with ``tiny-random``'s 2-level VAE and
    text encoder: a shape diffusers' script numbers as if it were SD's."""
    from diffusers import UNet2DConditionModel

    c = loading.load_components("tiny-random")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8,
                                down_block_types=("CrossAttnDownBlock2D",) * 2,
                                up_block_types=("CrossAttnUpBlock2D",) * 2, cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=32)
    return replace(c, unet=unet.eval(), name="embedded-shaped")


def record_names(script: Path, work: Path, out: Path) -> None:
    """Write the names diffusers' script gives each U-Net and VAE tensor of ``embedded_shaped`` (found by
    value: every tensor is first set to distinct random numbers) to ``out``, the data
    ``tests/test_ldm_script.py`` replays on fresh weights (CI cannot run the script: it is not in the wheel)."""
    from safetensors.torch import load_file

    c = embedded_shaped(0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for model in (c.unet, c.vae):
            for v in model.state_dict().values():
                v.copy_(torch.randn(v.shape, generator=g))
    folder = save_folder(c, work / "names")
    written = load_file(str(convert(script, folder, work / "names.safetensors", "--use_safetensors")))
    source = {}
    for part, model in (("unet", c.unet), ("vae", c.vae)):
        for k, v in model.state_dict().items():
            source[v.numpy().tobytes()] = (part, k)
    names = {"made_by": f"diffusers' {script.name}, from tests/benchmarks/check_diffusers_conversion.py "
                        f"--record-names, on check_diffusers_conversion.embedded_shaped(0)",
             "unet": {}, "vae": {}}
    for k, v in written.items():
        if v.numpy().tobytes() in source:
            part, name = source[v.numpy().tobytes()]
            names[part][k] = [name, list(v.shape)]
    assert len(names["unet"]) == len(c.unet.state_dict()) and len(names["vae"]) == len(c.vae.state_dict())
    out.write_text(json.dumps(names, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}: {len(names['unet'])} U-Net and {len(names['vae'])} VAE names")


def draw(pipe) -> np.ndarray:
    """One image (uint8 array); inpainting U-Nets inpaint a square hole in a random picture."""
    size = 64
    if pipe.unet.config.in_channels == 9:
        image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), bool)
        mask[16:48, 16:48] = True
        out = pipe.inpaint("a red circle on a blue background", image, mask, **ARGS)
    else:
        out = pipe.generate("a red circle on a blue background", width=size, height=size, **ARGS)
    return np.asarray(out[0], dtype=np.int16)


def convert(script: Path, folder: Path, out: Path, *flags: str) -> Path:
    cmd = [sys.executable, str(script), "--model_path", str(folder), "--checkpoint_path", str(out), *flags]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


def check(name: str, c: components.Components, script: Path, work: Path, variants, load_kw: dict) -> list[str]:
    folder = save_folder(c, work / name, t4_names="transformers-5" not in name)
    want = draw(latentgen.load(folder, **load_kw))
    files = {f"diffusers script {label}": convert(script, folder, work / f"{name}-{label}.{ext}", *flags)
             for label, ext, flags in variants}
    files["latentgen export"] = ldm_export.export(folder, work / f"{name}-export.safetensors")
    files["latentgen export --dtype fp16"] = ldm_export.export(folder, work / f"{name}-export16.safetensors",
                                                               dtype="fp16")
    rows = []
    for label, path in files.items():
        try:
            got = draw(latentgen.load(path, **load_kw))
        except ValueError as e:
            rows.append(f"{name:<32} {label:<34} refused: {e}")
            continue
        rows.append(f"{name:<32} {label:<34} max diff {int(np.abs(got - want).max())}/255")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--script", type=Path, required=True,
                    help="diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py")
    ap.add_argument("--work", type=Path, default=None, help="folder for the models and files (default: a temp dir)")
    ap.add_argument("--record-names", type=Path, default=None, metavar="JSON",
                    help="only write the names the script gives an embedded-shaped model (tests/models/data/...)")
    args = ap.parse_args()
    if not args.script.is_file():
        sys.exit(f"--script {args.script}: no such file; fetch it from the diffusers repository.")
    if args.record_names:
        with tempfile.TemporaryDirectory() as tmp:
            return record_names(args.script, Path(tmp), args.record_names)
    safetensors = ("safetensors", "safetensors", ("--use_safetensors",))
    every = [safetensors, ("ckpt (pickle)", "ckpt", ()), ("safetensors --half", "safetensors",
                                                           ("--use_safetensors", "--half"))]
    models = [("tiny SD 1.x", sd_shaped("sd15", "epsilon", 0), every, {}),
              ("tiny SD 1.x inpainting", sd_shaped("sd15", "epsilon", 1, in_channels=9), [safetensors], {}),
              ("tiny SD 2 epsilon", sd_shaped("sd2", "epsilon", 2), [safetensors], {"prediction_type": "epsilon"}),
              ("tiny SD 2 v", sd_shaped("sd2", "v_prediction", 3), [safetensors],
               {"prediction_type": "v_prediction"}),
              ("tiny SD 2 transformers-5 folder", sd_shaped("sd2", "epsilon", 4), [safetensors],
               {"prediction_type": "epsilon"}),
              ("tiny embedded-shaped", embedded_shaped(5), [safetensors], {}),
              ("embedded model", loading.load_components(None), [safetensors], {})]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name, c, variants, load_kw in models:
            for row in check(name.replace(" ", "-"), c, args.script, work, variants, load_kw):
                print(row, flush=True)


if __name__ == "__main__":
    main()
