"""Shipping trained weights: measure them, then copy them beside a manifest (sha256s, recipe, quality).

    latentgen ship runs/default/model weights/default --inpainting runs/default/inpainting-model
    latentgen ship-lora runs/purple/lora.safetensors weights/loras/purple --color purple --command "..."
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .. import files


def listing(folder: Path) -> dict:
    """{relative path: {sha256, bytes}} of every file under ``folder``: a manifest's ``files``."""
    import hashlib

    return {str(p.relative_to(folder)): {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "bytes": p.stat().st_size}
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


EDIT_PROTOCOLS = {
    "img2img": "red circle on blue -> 'a yellow circle on a blue background', strength 0.6, 20 seeds: "
               "yellow circle, centroid within 4 px",
    "inpaint": "plain background, rectangular hole of 15-45% (even seeds on the 8-px grid, odd off it), "
               "'a {color} {shape} on a {background} background', 20 seeds per color: asked color and shape "
               "centered in the hole, >= 35% of the hole clean shape color, no seam (hole background, off the "
               "shape's 2-px soft edge, within 24 RGB), outside unchanged (quality.inpaint_fill)",
    "inpaint_ceiling": "the inpaint protocol's holes, each with the largest shape of the asked kind centered in "
                       "it, drawn and after a round trip through the VAE: the fraction >= 35% clean per shape, "
                       "and per color the success of a variant perfect in all else (quality.inpaint_ceiling)",
}


def ship(model: Path, dest: Path, *, command: str, seeds=(0, 1000), inpainting: Path | None = None) -> dict:
    """Measure a trained folder (prompt adherence, off-palette pixels, img2img, inpainting), then copy it
    to ``dest`` with manifest.json; ``inpainting`` (RUN/inpainting-model, from ``latentgen train``): its
    9-channel U-Net, measured as what ``inpaint`` runs and copied to ``dest``-inpainting with its own manifest.

    A manifest lists the sha256 of every file, the training command, recipe, data spec, steps, time
    and measured quality; each folder is replaced atomically (written beside it, then renamed).
    """
    import platform

    from .. import load
    from . import quality

    pipe = load(str(model), device="cpu")
    report = quality.adherence(pipe, seeds=seeds)
    edits = {"img2img": quality.img2img_recolor(pipe), "inpaint_ceiling": quality.inpaint_ceiling(pipe.vae)}
    if inpainting is not None:
        edits["inpaint_blend"] = quality.inpaint_fill(pipe, variant="blend")  # the base U-Net, latent blending
        pipe.inpaint_unet = Path(inpainting) / "unet"
    edits["inpaint"] = quality.inpaint_fill(pipe)
    listed = listing(model)
    recipe_info = json.loads((Path(model) / "recipe.json").read_text())
    config = recipe_info["config"]
    measured_on = platform.machine() + ", torch " + torch.__version__
    manifest = {
        "name": dest.name, "command": command, "recipe": config, "data": recipe_info["data"],
        "steps": {"vae": config["vae_steps"], "diffusion": config["steps"], "decoder": config.get("decoder_steps", 0),
                  "inpainting": config.get("inpaint_steps", 0)},
        "train_seconds": recipe_info["train_seconds"], "trained_on": recipe_info.get("machine"),
        "quality": {"protocol": f"{len(quality.adherence_prompts())} prompts x seeds {list(seeds)}, 20 steps, "
                                "default guidance and sampler, read by latentgen.embedded.shapes.read; off_palette: "
                                "mean fraction of pixels > 60 RGB from every blend of the two colors, speckled: "
                                "fraction of images with 2+ such pixels together (shapes.off_palette)",
                    **report.summary()},
        "edit_quality": {"protocols": EDIT_PROTOCOLS, **edits},
        "total_bytes": sum(f["bytes"] for f in listed.values()), "files": listed, "measured_on": measured_on,
    }
    if inpainting is not None:
        nine = listing(inpainting)
        info = json.loads((Path(inpainting) / "inpainting.json").read_text())
        nine_manifest = {"name": dest.name + "-inpainting", "base": dest.name, "command": command,
                         "recipe": info["recipe"], "masks": info["masks"], "train_seconds": info["train_seconds"],
                         "trained_on": info.get("machine"), "quality": edits["inpaint"],
                         "quality_base_blending": edits["inpaint_blend"],
                         "total_bytes": sum(f["bytes"] for f in nine.values()), "files": nine,
                         "measured_on": measured_on}
        with files.atomic_folder(dest.with_name(dest.name + "-inpainting")) as tmp:
            shutil.copytree(inpainting, tmp, dirs_exist_ok=True)
            (tmp / "manifest.json").write_text(json.dumps(nine_manifest, indent=1) + "\n")
    with files.atomic_folder(dest) as tmp:
        shutil.copytree(model, tmp, dirs_exist_ok=True)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def ship_lora(src: Path, dest: Path, *, command: str, color: str | None = None, shape: str | None = None,
              base: str | None = None, seeds=(0, 1000)) -> dict:
    """Measure a LoRA that teaches a new ``color`` or ``shape`` and copy it to ``dest``.safetensors with
    ``dest``.json.

    Quality: how often the evaluator reads the new word on its prompts (a color: every shape on all
    seven base backgrounds; a shape: every base color on three backgrounds), and base-vocabulary
    adherence, each before and after loading the LoRA.
    """
    import hashlib

    from safetensors import safe_open

    from .. import load
    from . import quality

    if (color is None) == (shape is None):
        raise ValueError("give the word the LoRA teaches: color= or shape= (one of them).")
    pipe = load(base, device="cpu")
    new = (quality.adherence_prompts(colors=(color,), backgrounds=7) if color else
           quality.adherence_prompts(kinds=(shape,), backgrounds=3))
    key = "new_color" if color else "new_shape"
    scores = {"before": {key: quality.adherence(pipe, prompts=new, seeds=seeds).summary(),
                         "base_vocabulary": quality.adherence(pipe, seeds=seeds).summary()}}
    pipe.load_lora(src, name=dest.name)
    scores["after"] = {key: quality.adherence(pipe, prompts=new, seeds=seeds).summary(),
                       "base_vocabulary": quality.adherence(pipe, seeds=seeds).summary()}
    with safe_open(str(src), "pt") as f:
        meta = f.metadata() or {}
    dest.parent.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for suffix, path in ((".safetensors", Path(src)), (".kohya.safetensors", Path(src).with_suffix(".kohya.safetensors"))):
        if path.is_file():
            files.copy_file(path, dest.with_name(dest.name + suffix))
            hashes[dest.name + suffix] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = {"name": dest.name, "command": command, "teaches": color or shape,
                "training": json.loads(meta.get("latentgen_training", "{}")),
                "train_seconds": float(meta.get("latentgen_train_seconds", "nan")), "trained_on": files.machine(),
                "quality": {"protocol": f"{len(new)} '{color or shape}' prompts and the 42 base prompts x seeds "
                                        f"{list(seeds)}, 20 steps, default guidance, read by latentgen.embedded.shapes.read;"
                                        " 'color'/'shape': the rate of the wanted shape color/shape", **scores},
                "files": hashes}
    files.write_text(dest.with_name(dest.name + ".json"), json.dumps(manifest, indent=1) + "\n")
    return manifest
