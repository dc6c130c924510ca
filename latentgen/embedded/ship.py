"""Shipping trained weights: measure them, then copy them beside a manifest (sha256s, recipe, quality).

    latentgen ship runs/default/model weights/default
    latentgen ship-lora runs/purple/lora.safetensors weights/loras/purple --color purple --command "..."
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .. import files


def ship(model: Path, dest: Path, *, command: str, seeds=(0, 1000)) -> dict:
    """Measure a trained folder's prompt adherence, then copy it to ``dest`` with manifest.json.

    The manifest lists the sha256 of every file, the training command, recipe, data spec, steps,
    time and measured quality; ``dest`` is replaced atomically (written beside it, then renamed).
    """
    import hashlib
    import platform

    from .. import load
    from . import quality

    pipe = load(str(model), device="cpu")
    report = quality.adherence(pipe, seeds=seeds)
    edits = {"img2img": quality.img2img_recolor(pipe), "inpaint": quality.inpaint_fill(pipe)}
    listing = {str(p.relative_to(model)): {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                                           "bytes": p.stat().st_size}
               for p in sorted(Path(model).rglob("*")) if p.is_file()}
    recipe_info = json.loads((Path(model) / "recipe.json").read_text())
    manifest = {
        "name": dest.name, "command": command, "recipe": recipe_info["config"], "data": recipe_info["data"],
        "steps": {"vae": recipe_info["config"]["vae_steps"], "diffusion": recipe_info["config"]["steps"],
                  "decoder": recipe_info["config"].get("decoder_steps", 0)},
        "train_seconds": recipe_info["train_seconds"], "trained_on": recipe_info.get("machine"),
        "quality": {"protocol": f"{len(quality.adherence_prompts())} prompts x seeds {list(seeds)}, 20 steps, "
                                "default guidance and sampler, read by latentgen.embedded.shapes.read",
                    **report.summary()},
        "edit_quality": {"img2img": "red circle on blue -> 'a yellow circle on a blue background', strength 0.6, "
                                    "20 seeds: yellow circle, centroid within 4 px", "inpaint": "plain green, "
                         "centered square hole (1/3 of the image), 'a red square on a green background', 20 seeds: "
                         "red shape centered in the hole, outside unchanged", **{k: v for k, v in edits.items()}},
        "total_bytes": sum(f["bytes"] for f in listing.values()), "files": listing,
        "measured_on": platform.machine() + ", torch " + torch.__version__,
    }
    with files.atomic_folder(dest) as tmp:
        shutil.copytree(model, tmp, dirs_exist_ok=True)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def ship_lora(src: Path, dest: Path, *, command: str, color: str, base: str | None = None,
              seeds=(0, 1000)) -> dict:
    """Measure a LoRA that teaches ``color`` and copy it to ``dest``.safetensors with ``dest``.json.

    Quality: how often the evaluator reads the new color on its prompts (every shape on all seven
    base backgrounds), and base-vocabulary adherence, each before and after loading the LoRA.
    """
    import hashlib

    from safetensors import safe_open

    from .. import load
    from . import quality

    pipe = load(base, device="cpu")
    new = quality.adherence_prompts(colors=(color,), backgrounds=7)
    scores = {"before": {"new_color": quality.adherence(pipe, prompts=new, seeds=seeds).summary(),
                         "base_vocabulary": quality.adherence(pipe, seeds=seeds).summary()}}
    pipe.load_lora(src, name=dest.name)
    scores["after"] = {"new_color": quality.adherence(pipe, prompts=new, seeds=seeds).summary(),
                       "base_vocabulary": quality.adherence(pipe, seeds=seeds).summary()}
    with safe_open(str(src), "pt") as f:
        meta = f.metadata() or {}
    dest.parent.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for suffix, path in ((".safetensors", Path(src)), (".kohya.safetensors", Path(src).with_suffix(".kohya.safetensors"))):
        if path.is_file():
            files.copy_file(path, dest.with_name(dest.name + suffix))
            hashes[dest.name + suffix] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = {"name": dest.name, "command": command, "teaches": color,
                "training": json.loads(meta.get("latentgen_training", "{}")),
                "train_seconds": float(meta.get("latentgen_train_seconds", "nan")), "trained_on": files.machine(),
                "quality": {"protocol": f"{len(new)} '{color}' prompts and the 42 base prompts x seeds {list(seeds)}, "
                                        "20 steps, default guidance, read by latentgen.embedded.shapes.read; 'color' is the "
                                        "rate of the wanted shape color", **scores},
                "files": hashes}
    files.write_text(dest.with_name(dest.name + ".json"), json.dumps(manifest, indent=1) + "\n")
    return manifest
