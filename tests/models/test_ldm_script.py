"""Files written by diffusers' conversion script from a model not shaped as SD (latentgen.models.ldm_script).

The script is not in diffusers' wheel, so CI replays the names it wrote (tests/models/data/
diffusers_script_names.json, recorded by ``check_diffusers_conversion.py --record-names`` from a model
with the embedded model's U-Net topology and a 2-level VAE) on fresh weights of the same shape.
``check_diffusers_conversion.py --script PATH`` runs the script itself on the embedded model."""

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import max_diff
from safetensors.torch import save_file

import latentgen
from latentgen.models import checkpoints, components, ldm, ldm_script
from latentgen.models import export as ldm_export

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from check_diffusers_conversion import embedded_shaped, save_folder  # noqa: E402

NAMES = json.loads((Path(__file__).parent / "data" / "diffusers_script_names.json").read_text())
ARGS = dict(seed=3, steps=4, guidance=6.0, width=64, height=64, scheduler="ddim")


def script_file(c: components.Components, path: Path, extra: dict | None = None) -> Path:
    """What diffusers' script writes from ``c``: its recorded names, the tensors of ``c``, and the text
    encoder under ``cond_stage_model.transformer.`` as the script puts it."""
    sd = {}
    for part, model in (("unet", c.unet), ("vae", c.vae)):
        state = model.state_dict()
        assert {src for src, _ in NAMES[part].values()} == set(state)  # the recording fits this shape
        sd.update({name: state[src].reshape(shape) for name, (src, shape) in NAMES[part].items()})
    sd.update({ldm.CLIP + k: v for k, v in c.text_encoder.state_dict().items() if not k.endswith("position_ids")})
    sd.update(extra or {})
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


@pytest.fixture(scope="module")
def model():
    return embedded_shaped(5)


@pytest.fixture(scope="module")
def folder(model, tmp_path_factory):
    return save_folder(model, tmp_path_factory.mktemp("embedded-shaped") / "folder")


def test_the_recorded_names_are_not_the_ldm_layout(model):
    """Why this module exists: for this shape the script's numbering is not LDM's (gaps, diffusers names,
    decoder levels 3 and 2 for a 2-level VAE)."""
    ldm_names = set(ldm_export.ldm_state_dict(model))
    assert set(NAMES["unet"]) - ldm_names and set(NAMES["vae"]) - ldm_names
    assert any(k.startswith(ldm.UNET + "up_blocks.0.attentions.") for k in NAMES["unet"])


def test_script_file_draws_what_the_folder_draws(model, folder, tmp_path):
    path = script_file(model, tmp_path / "script.safetensors")
    single, ref = latentgen.load(path), latentgen.load(folder)
    assert single.unet.config.layers_per_block == 1 and list(single.vae.config.block_out_channels) == [32, 64]
    assert max_diff(single.generate("a red circle", **ARGS), ref.generate("a red circle", **ARGS)) <= 1


def test_renumbered_names_are_latentgens_export(model, tmp_path):
    """Read back, the script's file has exactly the names latentgen's export writes for the same model."""
    ck = checkpoints.read(script_file(model, tmp_path / "script.safetensors"))
    exported = ldm_export.ldm_state_dict(model)
    for prefix in (ldm.UNET, ldm.VAE):
        want = {k: tuple(v.shape) for k, v in exported.items() if k.startswith(prefix)}
        assert {k: v for k, v in ck.shapes.items() if k.startswith(prefix)} == want
    some = ldm.UNET + "output_blocks.1.2.conv.weight"  # up_blocks.0's upsampler, after its attention
    assert torch.equal(ck.get(some), model.unet.state_dict()["up_blocks.0.upsamplers.0.conv.weight"])


def test_ldm_files_are_left_alone(model, tmp_path):
    path = tmp_path / "export.safetensors"
    save_file({k: v.contiguous() for k, v in ldm_export.ldm_state_dict(model).items()}, str(path))
    ck = checkpoints.read(path)
    assert ldm_script.renames(ck.part(ldm.UNET), ck.part(ldm.VAE)) == {} and not ldm_script.in_script_numbering(ck.part(ldm.UNET))


def test_a_name_no_numbering_places_is_refused_by_name(model, tmp_path):
    stray = {ldm.UNET + "up_blocks.0.widgets.0.weight": torch.zeros(2)}
    path = script_file(model, tmp_path / "odd.safetensors", extra=stray)
    with pytest.raises(ValueError, match="mixes LDM and diffusers names.*latentgen export"):
        latentgen.load(path)
