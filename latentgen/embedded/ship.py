"""Shipping trained weights: measure them, then copy them beside a manifest (sha256s, recipe, quality).

    latentgen ship runs/default/model weights/default --inpainting runs/default/inpainting-model
    latentgen ship-lora runs/purple/lora.safetensors weights/loras/purple --color purple --command "..."
    latentgen ship-tiny-vae runs/taesd/taesd weights/default-tiny-vae --command "..."
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


@torch.no_grad()
def measure_tiny_vae(tiny, vae, n: int = 256, seed: int = 10_000) -> dict:
    """How a tiny VAE decodes against the embedded model's full ``vae`` on ``n`` fresh scenes (base vocabulary plus
    purple and star): ``tiny_vae.distance``'s figures (0..255 units), how often ``shapes.read`` reads the tiny and
    the full decodes of the same latents alike, images with a speck from each, and the median decode times of one
    latent (torch fp32, ms)."""
    import statistics
    import time

    from PIL import Image

    from ..training.tiny_vae import distance
    from . import shapes
    from .autoencoder import from_pixels, to_pixels

    pictures = [shapes.sample(seed + i, colors=(*shapes.COLORS, "purple"), shapes=(*shapes.SHAPES, "star"))[0]
                for i in range(n)]
    pixels = to_pixels(pictures)  # (n, 3, 64, 64)
    sf = vae.config.scaling_factor
    z = vae.encode(pixels).latent_dist.mean * sf  # (n, C, 8, 8)
    decoded = {k: [Image.fromarray(a.astype("uint8")) for a in from_pixels(d)] for k, d in
               (("full", vae.decode(z / sf).sample), ("tiny", tiny.decode(z).sample))}
    reads = {k: [shapes.read(im) for im in ims] for k, ims in decoded.items()}
    alike = sum((a.background, a.color, a.shape) == (b.background, b.color, b.shape)
                for a, b in zip(reads["full"], reads["tiny"])) / n
    specks = {k: sum(shapes.off_palette(im, reading=r).clusters > 0 for im, r in zip(decoded[k], reads[k])) / n
              for k in decoded}

    def ms(f) -> float:
        f()
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return round(statistics.median(times) * 1000, 2)
    one = z[:1]
    return {**distance(tiny, vae, pixels), "reads_alike": round(alike, 4),
            "speckled": {k: round(v, 4) for k, v in specks.items()},
            "decode_ms": {"full": ms(lambda: vae.decode(one / sf)), "tiny": ms(lambda: tiny.decode(one))},
            "encode_ms": {"full": ms(lambda: vae.encode(pixels[:1])), "tiny": ms(lambda: tiny.encode(pixels[:1]))},
            "protocol": f"{n} scenes (shapes.sample seeds {seed}..{seed + n - 1}, base colors and purple, base "
                        f"shapes and star); decodes of the full encoder's mean latents; times: one image, "
                        f"torch fp32, medians of 50"}


def ship_tiny_vae(src: Path, dest: Path, *, command: str, base: str | None = None) -> dict:
    """Measure the tiny VAE folder ``src`` (``latentgen distill-vae``'s ``<out>/<name>``) against the full VAE of
    ``base`` (the embedded model) and copy it to the folder ``dest`` with ``manifest.json``: the command, training
    record, measured figures and the files' sha256."""
    from ..models import loading
    from ..vae import tiny

    vae = loading.load_components(base, device="cpu", dtype="fp32", backend="torch").vae
    small = tiny.load(src, device="cpu", dtype=torch.float32)
    record = json.loads((Path(src) / "latentgen.json").read_text())
    quality = measure_tiny_vae(small, vae)
    return _ship_folder(src, dest, {"name": Path(dest).name, "command": command, "teacher": record.get("teacher"),
                                    "training": record.get("settings"), "steps": record.get("steps"),
                                    "train_seconds": record.get("train_seconds"), "trained_on": files.machine(),
                                    "quality": quality})


def _ship_folder(src: Path, dest: Path, manifest: dict) -> dict:
    """Copy the files of the folder ``src`` to ``dest`` (replaced whole) beside ``manifest.json``: ``manifest``
    with the files' sha256s and sizes and their total."""
    with files.atomic_folder(dest) as tmp:
        for p in sorted(Path(src).iterdir()):
            if p.is_file():
                shutil.copyfile(p, tmp / p.name)
        manifest = {**manifest, "files": listing(tmp)}
        manifest["total_bytes"] = sum(f["bytes"] for f in manifest["files"].values())
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def ship_controlnet(src: Path, dest: Path, *, command: str, base: str | None = None, seeds=range(40)) -> dict:
    """Measure the ControlNet folder ``src`` (``latentgen train-controlnet``'s ``<out>/<name>``) on hold-out layouts
    (``quality.control_fit``: as an edge map, as a filled picture through canny, and the base model without it) and
    copy it to the folder ``dest`` with ``manifest.json``: the command, training record, figures and sha256s."""
    from .. import load
    from . import quality

    pipe = load(base, device="cpu")
    record = json.loads((Path(src) / "latentgen.json").read_text())
    figures = {"edges": quality.control_fit(pipe, src, seeds), "canny": quality.control_fit(pipe, src, seeds, "canny"),
               "without": quality.control_fit(pipe, None, seeds)}
    return _ship_folder(src, dest, {
        "name": Path(dest).name, "command": command, "base": record.get("base"),
        "preprocessor": record.get("preprocessor"), "training": record.get("settings"), "steps": record.get("steps"),
        "train_seconds": record.get("train_seconds"), "trained_on": files.machine(), "quality": {
            "protocol": f"quality.control_fit: {len(list(seeds))} hold-out layouts (seeds 'control:N'), the caption as "
                        f"prompt, 20 steps, default guidance; success: asked color and shape read, shape IoU with the "
                        f"layout >= 0.7", **figures}})
