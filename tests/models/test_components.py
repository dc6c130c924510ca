"""latentgen.models.components: loading names what is missing or does not fit, and prints nothing unless
something is wrong."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import latentgen
from latentgen import precision


def test_missing_folder():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        latentgen.load("/nonexistent/model")


def test_unknown_preset_lists_presets():
    with pytest.raises(FileNotFoundError, match=r"presets \[.*'sd15'.*'tiny-random'"):
        latentgen.load("sd99")


@pytest.mark.parametrize("remove, named", [
    ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors"),
    ("vae", "vae/config.json"),
    ("model_index.json", "model_index.json"),
    ("scheduler/scheduler_config.json", "scheduler/scheduler_config.json"),
    ("tokenizer", "tokenizer/tokenizer.json or vocab.json"),
])
def test_partial_folder_names_the_missing_part(tiny_folder, tmp_path, remove, named):
    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    target = folder / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(FileNotFoundError, match=f"incomplete, missing: .*{named}"):
        latentgen.load(folder)


def _edit_config(folder, sub, **changes):
    path = folder / sub / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("part, change, message", [
    ("text_encoder", {"hidden_size": 64}, "text encoder width 64 != U-Net cross_attention_dim 32"),
    ("vae", {"latent_channels": 16}, "VAE latent_channels=16 does not fit U-Net in_channels=4"),
])
def test_parts_that_do_not_fit(tiny_folder, tmp_path, part, change, message):
    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    _edit_config(folder, part, **change)
    with pytest.raises(ValueError, match=message):
        latentgen.load(folder)


def test_bad_dtype():
    with pytest.raises(ValueError, match="dtype='fp8' is not supported"):
        precision.as_dtype("fp8")


def _quiet_run(code):
    """Run ``code`` in a fresh interpreter (offline); its stdout and stderr."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout, r.stderr


def test_loading_the_embedded_model_prints_nothing():
    out, err = _quiet_run("import latentgen; latentgen.load()")
    assert out == "" and err == "", (out, err)


def test_loading_a_folder_in_bf16_prints_nothing(tiny_folder):
    out, err = _quiet_run(f"import latentgen; latentgen.load({str(tiny_folder)!r}, dtype='bf16')")
    assert out == "" and err == "", (out, err)


def test_sdxls_vae_stays_fp32_under_fp16_unless_its_config_says_it_is_fp16_safe(xl_folder, tiny_folder, tmp_path):
    """SDXL's VAE overflows fp16: with ``force_upcast`` (its config's default) it is loaded in fp32, so the first
    image needs no wasted decode and no warning; an fp16-fixed VAE (force_upcast false) and SD 1.x's stay fp16."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", "the fp16 VAE overflowed")  # nothing was decoded twice
        xl = latentgen.load(xl_folder, dtype="fp16")
        assert (xl.unet.dtype, xl.vae.dtype) == (torch.float16, torch.float32) and "VAE float32" in repr(xl)
        assert xl.generate("a cat", steps=2)[0].size == (64, 64)
    fixed = tmp_path / "fixed"
    shutil.copytree(xl_folder, fixed)
    cfg = json.loads((fixed / "vae" / "config.json").read_text())
    (fixed / "vae" / "config.json").write_text(json.dumps({**cfg, "force_upcast": False}))
    assert latentgen.load(fixed, dtype="fp16").vae.dtype == torch.float16
    assert latentgen.load(tiny_folder, dtype="fp16").vae.dtype == torch.float16  # SD 1.x: the guard only
    assert latentgen.load(xl_folder, dtype="bf16").vae.dtype == torch.bfloat16  # bf16 has fp32's range
