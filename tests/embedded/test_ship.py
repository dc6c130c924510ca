"""latentgen.embedded.ship: the embedded default model as shipped in weights/default (integrity against its
manifest, loading, prompt adherence, img2img, inpainting) and the shipped LoRAs (purple, star)."""

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

import latentgen
from latentgen.backends import choice
from latentgen.embedded import quality
from latentgen.lora.formats import shipped_loras
from latentgen.models.presets import data_dir

WEIGHTS = data_dir("weights") / "default"


@pytest.fixture(scope="module")
def default_pipe():  # what a user on a CPU gets: the U-Net through OpenVINO (conftest sets torch for the suite)
    return latentgen.load(backend="openvino" if choice.available() else "torch")


def test_manifest_matches_the_files():
    manifest = json.loads((WEIGHTS / "manifest.json").read_text())
    on_disk = {str(p.relative_to(WEIGHTS)) for p in WEIGHTS.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk == set(manifest["files"])
    for name, f in manifest["files"].items():
        assert hashlib.sha256((WEIGHTS / name).read_bytes()).hexdigest() == f["sha256"], name
    assert manifest["total_bytes"] <= 40 * 2**20
    assert manifest["command"].startswith("latentgen train")
    q = manifest["quality"]
    assert q["background"] >= 0.95 and q["color"] >= 0.95 and q["shape"] >= 0.90
    assert q["off_palette"] <= 0.001 and q["speckled"] <= 0.10  # rainbow specks (shapes.off_palette)


def test_the_inpainting_variant_ships_beside_it():
    nine = WEIGHTS.with_name("default-inpainting")
    manifest = json.loads((nine / "manifest.json").read_text())
    on_disk = {str(p.relative_to(nine)) for p in nine.rglob("*") if p.is_file()} - {"manifest.json"}
    assert on_disk == set(manifest["files"]) and manifest["base"] == "default"
    for name, f in manifest["files"].items():
        assert hashlib.sha256((nine / name).read_bytes()).hexdigest() == f["sha256"], name
    q = manifest["quality"]
    assert manifest["total_bytes"] <= 40 * 2**20 and q["outside_unchanged"] == 1.0 and q["criteria"]["shape"] >= 0.8
    assert sum(q["success"].values()) > sum(manifest["quality_base_blending"]["success"].values())


def test_load_without_source_is_the_embedded_model(default_pipe):
    c = default_pipe
    assert c.name == "default" and c.defaults.width == 64 and default_pipe.defaults.steps == 20
    assert c.vae_scale_factor == 8 and c.unet.config.in_channels == c.vae.config.latent_channels == 4
    assert Path(c.inpaint_unet) == WEIGHTS.with_name("default-inpainting") / "unet"  # loaded on first inpaint


def test_diffusers_loads_it_and_agrees(default_pipe):
    from diffusers import StableDiffusionPipeline

    ref = StableDiffusionPipeline.from_pretrained(WEIGHTS, safety_checker=None)
    ref.set_progress_bar_config(disable=True)
    prompt = "a red circle on a blue background"
    want = ref(prompt, num_inference_steps=8, guidance_scale=4.0, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(3)).images[0]
    got = np.asarray(default_pipe.generate(prompt, seed=3, steps=8, guidance=4.0)[0])  # both: the folder's euler_a
    assert np.abs(got.astype(np.float32) - want * 255).max() <= 1.0


@pytest.mark.slow
def test_img2img_recolors_the_shape_in_place(default_pipe):
    """The dataset's red circle on blue, "a yellow circle on a blue background", strength 0.6, 20 seeds."""
    r = quality.img2img_recolor(default_pipe, seeds=range(20), strength=0.6)
    assert r["success"] >= 0.9, r


@pytest.mark.slow
def test_inpainting_fills_holes_cleanly(default_pipe):
    """Plain backgrounds, holes of 15-45% on and off the latent grid, "a {color} {shape} on a {bg} background",
    20 seeds x 4 colors: the asked shape and color fill the hole (>= 35% clean), no seam, outside kept
    (quality.inpaint_fill), with the shipped 9-channel variant at the model's own feather (mask_blur 2): the
    issue's bar, 80% per color (shipped: 85-95%). Latent blending with the base U-Net does worse."""
    r = quality.inpaint_fill(default_pipe, seeds=range(20))
    assert default_pipe.inpaint_unet.config.in_channels == 9
    assert r["outside_unchanged"] == 1.0 and r["hole_fraction"][0] >= 0.15 and r["hole_fraction"][1] <= 0.45
    assert default_pipe.defaults.mask_blur == 2
    assert r["criteria"]["shape"] >= 0.9 and r["criteria"]["no_seam"] >= 0.9 and r["worst"] >= 0.8, r
    blend = quality.inpaint_fill(default_pipe, seeds=range(20), variant="blend")
    assert blend["criteria"]["shape"] < r["criteria"]["shape"] and sum(blend["success"].values()) < sum(r["success"].values())


@pytest.mark.slow
def test_the_vae_is_sharp_enough_for_the_inpainting_bar(default_pipe):
    """The ceiling of the inpainting yardstick through the shipped VAE (quality.inpaint_ceiling): the largest
    shape of the asked kind, drawn centered in each hole and sent through the VAE, still fills >= 35% of it with
    clean color. Every circle and square does, and most triangles (half their box, so the VAE's soft edge costs
    them most); a perfect variant would meet the 80% bar for every color. (v2's VAE: 8 of 24 triangles.)"""
    r = quality.inpaint_ceiling(default_pipe.vae, seeds=range(20))
    assert r["shapes"]["circle"]["decoded"] == 1.0 and r["shapes"]["square"]["decoded"] == 1.0, r
    assert r["shapes"]["triangle"]["drawn"] == 1.0 and r["shapes"]["triangle"]["decoded"] >= 0.7, r
    assert min(r["success"].values()) >= 0.8, r


LORAS = data_dir("weights") / "loras"


@pytest.fixture(scope="module")
def base_adherence(default_pipe):
    return quality.adherence(default_pipe, seeds=(0, 1000), steps=20).summary()


@pytest.mark.slow
def test_prompt_adherence_on_shipped_weights(base_adherence):
    """42 prompts (7 colors x 3 shapes x 2 backgrounds) x 2 seeds, 20 steps, default guidance: the shapes are
    right and clean (at most 0.1% off-palette pixels, at most 10% of images with a speck)."""
    s = base_adherence
    assert s["images"] == 84
    assert s["background"] >= 0.95 and s["color"] >= 0.95 and s["shape"] >= 0.90, s
    assert s["off_palette"] <= 0.001 and s["speckled"] <= 0.10, s


# what each worked LoRA teaches: its prompts, the reading that must say the new word, and a kohya check prompt
TAUGHT = {"purple": (quality.adherence_prompts(colors=("purple",), backgrounds=7), "color",
                     "a purple square on a white background"),  # 3 shapes x 7 backgrounds
          "star": (quality.adherence_prompts(kinds=("star",), backgrounds=3), "shape",
                   "a yellow star on a blue background")}  # 7 colors x 3 backgrounds


@contextmanager
def lora_on(pipe, path, name: str):
    """``pipe`` with the LoRA at ``path`` loaded as ``name`` inside the block; unloaded after (the model as loaded,
    bit for bit), so one converted pipeline serves every test of the module."""
    pipe.load_lora(path, name=name)
    try:
        yield pipe
    finally:
        pipe.unload_lora()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TAUGHT))
def test_a_worked_lora_teaches_a_new_word_and_keeps_the_old_ones(name, base_adherence, default_pipe):
    """weights/loras/NAME: trained in <= 15 min on 200 images of the new word; >= 80% read as it, the base
    vocabulary within 5 points of the base model, and its kohya copy draws the same images."""
    prompts, reading, example = TAUGHT[name]
    manifest = json.loads((LORAS / f"{name}.json").read_text())
    for file, digest in manifest["files"].items():
        assert hashlib.sha256((LORAS / file).read_bytes()).hexdigest() == digest, file
    assert manifest["train_seconds"] <= 15 * 60 and manifest["training"]["data"].endswith(f"{name}-data")
    before = quality.adherence(default_pipe, prompts=prompts, seeds=(0, 1000)).rate(reading)
    assert shipped_loras()[name] == LORAS / f"{name}.safetensors"
    with lora_on(default_pipe, name, name) as pipe:  # a shipped LoRA by name
        after = quality.adherence(pipe, prompts=prompts, seeds=(0, 1000)).summary()
        kept = quality.adherence(pipe, seeds=(0, 1000)).summary()
        a = pipe.generate(example, seed=5)[0]
    assert before <= 0.1 and after[reading] >= 0.8, (before, after)
    for k in ("background", "color", "shape"):
        assert kept[k] >= base_adherence[k] - 0.05, (k, kept, base_adherence)
    with lora_on(default_pipe, LORAS / f"{name}.kohya.safetensors", name) as kohya:
        b = kohya.generate(example, seed=5)[0]
    assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1


@pytest.mark.slow
def test_the_lcm_lora_draws_in_four_steps_what_the_base_draws_in_twenty(default_pipe):
    """weights/loras/lcm: distilled by ``latentgen distill-lcm`` in <= 30 min; loaded by name, its header's sampler,
    steps and guidance (lcm, 4, 1) apply, and the 84 images read at least 95/95/90 (background/color/shape), with
    no more specks than the base's bar (10% of images); its kohya copy draws the same images."""
    manifest = json.loads((LORAS / "lcm.json").read_text())
    for file, digest in manifest["files"].items():
        assert hashlib.sha256((LORAS / file).read_bytes()).hexdigest() == digest, file
    assert manifest["train_seconds"] <= 30 * 60
    with lora_on(default_pipe, "lcm", "lcm") as pipe:
        rec = pipe.loras.recommended()
        assert (rec.sampler, rec.steps, rec.guidance) == ("lcm", 4, 1.0)
        s = quality.adherence(pipe, seeds=(0, 1000), steps=None).summary()
        a = pipe.generate("a blue triangle on a yellow background", seed=5)[0]
    assert s["background"] >= 0.95 and s["color"] >= 0.95 and s["shape"] >= 0.90, s
    assert s["off_palette"] <= 0.001 and s["speckled"] <= 0.10, s
    with lora_on(default_pipe, LORAS / "lcm.kohya.safetensors", "lcm") as kohya:
        b = kohya.generate("a blue triangle on a yellow background", seed=5)[0]
    assert "Steps: 4, Sampler: LCM, CFG scale: 1.0" in a.info["parameters"]
    assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1


def test_the_tiny_vae_decodes_what_the_full_vae_decodes(default_pipe):
    """weights/default-tiny-vae: distilled from the model's VAE by ``latentgen distill-vae`` (TAESD's architecture);
    its files are its manifest's; on 64 fresh scenes (not its training data) its decodes are within the manifest's
    PSNR and the evaluator reads them as the full VAE's in >= 75% of images (preview-grade: corners soften); as the
    model's VAE (``vae=`` by name) the pictures keep the asked colors."""
    from latentgen.embedded import ship
    from latentgen.vae import tiny

    folder = data_dir("weights") / "default-tiny-vae"
    manifest = json.loads((folder / "manifest.json").read_text())
    on_disk = {p.name for p in folder.iterdir() if p.is_file()} - {"manifest.json"}
    assert on_disk == set(manifest["files"])
    for name, f in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == f["sha256"], name
    small = latentgen.load_tiny_vae("default-tiny-vae")
    assert tiny.is_loaded(small) and manifest["teacher"] == "default"
    q = ship.measure_tiny_vae(small, default_pipe.vae, n=64)
    assert q["reads_alike"] >= 0.75 and q["decode"]["psnr_db"] >= manifest["quality"]["decode"]["psnr_db"] - 1.5, q
    pipe = latentgen.load(vae="default-tiny-vae", backend="torch")
    s = quality.adherence(pipe, prompts=quality.adherence_prompts(backgrounds=1), seeds=(0,)).summary()
    assert s["background"] >= 0.95 and s["color"] >= 0.95, s


@pytest.mark.slow
def test_the_edges_controlnet_places_the_shape_where_the_map_says(default_pipe):
    """weights/controlnets/edges: trained by ``latentgen train-controlnet`` in <= 30 min, <= 20 MB; on 20 hold-out
    layouts (``quality.control_fit``) the drawn shape has the asked color and kind and covers the layout's pixels
    (IoU >= 0.7) in >= 90% of images, from the edge map and from the filled picture through canny alike; the base
    model alone lands there far less often (it is the map that places it)."""
    folder = data_dir("weights") / "controlnets" / "edges"
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, f in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == f["sha256"], name
    assert manifest["train_seconds"] <= 30 * 60 and manifest["total_bytes"] <= 20 * 2**20
    edges = quality.control_fit(default_pipe, "edges", range(20))
    canny = quality.control_fit(default_pipe, "edges", range(20), preprocessor="canny")
    alone = quality.control_fit(default_pipe, None, range(20))
    assert edges["success"] >= 0.9 and canny["success"] >= 0.9, (edges, canny)
    assert edges["color"] >= 0.95 and alone["iou_0.7"] <= 0.5, (edges, alone)
