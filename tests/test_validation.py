"""Bad input gets a clear error naming the parameter and the fix, before any model work."""

import json
import math
import shutil

import pytest

import latentgen
from latentgen import components
from latentgen.presets import load_preset


@pytest.fixture()
def no_model_work(pipe, monkeypatch):
    """Fail the test if the text encoder or U-Net would run."""
    def boom(*a, **k):
        raise AssertionError("model work started before the input was checked")
    monkeypatch.setattr(pipe, "encode_prompt", boom)
    monkeypatch.setattr(pipe, "denoise", boom)
    return pipe


@pytest.mark.parametrize("prompt", [3, None, [], ["ok", 5], b"bytes"])
def test_prompt_must_be_text(no_model_work, prompt):
    with pytest.raises(TypeError, match="prompt must be a string"):
        no_model_work.generate(prompt)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, r"steps=0 .*>= 1"),
    ({"steps": 2.5}, r"steps=2.5"),
    ({"guidance": math.nan}, r"guidance=nan .*finite"),
    ({"guidance": math.inf}, r"guidance=inf .*finite"),
    ({"guidance": "7"}, r"guidance='7'"),
    ({"width": 63}, r"width=63 .*multiple of 2"),
    ({"height": 0}, r"height=0 .*positive multiple"),
    ({"width": -8}, r"width=-8"),
    ({"num_images": 0}, r"num_images=0 .*at least one"),
    ({"seed": 1.5}, r"seed=1.5"),
    ({"scheduler": "euler_b"}, r"scheduler='euler_b' is unknown; use one of: ddim, pndm"),
    ({"negative_prompt": ["a", "b"]}, r"negative_prompt has 2 entries for 1 prompts"),
    ({"batch_size": 0}, r"batch_size=0"),
])
def test_bad_values_raise_value_error(no_model_work, kwargs, match):
    with pytest.raises(ValueError, match=match):
        no_model_work.generate("a cat", **kwargs)


def test_scheduler_of_wrong_type(no_model_work):
    with pytest.raises(TypeError, match="scheduler must be a name"):
        no_model_work.generate("a cat", scheduler=3)


def test_width_must_be_multiple_of_8_for_sd15():
    assert components.vae_scale_factor(load_preset("sd15").vae) == 8


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


def test_text_encoder_that_does_not_fit(tiny_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    _edit_config(folder, "text_encoder", hidden_size=64)
    with pytest.raises(ValueError, match="text encoder width 64 != U-Net cross_attention_dim 32"):
        latentgen.load(folder)


def test_vae_that_does_not_fit(tiny_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    _edit_config(folder, "vae", latent_channels=16)
    with pytest.raises(ValueError, match="VAE latent_channels=16 does not fit U-Net in_channels=4"):
        latentgen.load(folder)


def test_bad_dtype():
    with pytest.raises(ValueError, match="dtype='fp8' is not supported"):
        components.resolve_dtype("fp8", components.resolve_device("cpu"))


def test_negative_prompt_without_guidance_warns(pipe):
    with pytest.warns(UserWarning, match="no effect"):
        pipe.generate("a cat", steps=1, guidance=1.0, negative_prompt="dog")
