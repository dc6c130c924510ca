"""latentgen.training.controlnet: train-controlnet on the tiny model: control maps made by a preprocessor or read from
a folder, bad input refused before any model loads, only the ControlNet trains (starting as the base model: zero
convolutions), the folder it writes steers the model, and a killed run resumes to the same weights."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from latentgen.training import controlnet as trainer
from latentgen.training.controlnet import ControlNetTrainConfig

TINY = dict(steps=4, batch=2, save_every=2, resolution=64, lr=1e-3)


def _run(tiny_folder, data, out, **kw):
    return trainer.run(ControlNetTrainConfig(data=data, out=out, model=str(tiny_folder), **{**TINY, **kw}))


def _weights(folder):
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def test_bad_settings_and_data_are_refused_before_any_model_loads(tmp_path, data):
    no_model = str(tmp_path / "no-such-model")  # were it loaded, the error would name it instead
    for bad, error, message in [(dict(preprocessor="depth_midas"), ValueError, "runs an annotator network"),
                                (dict(caption_dropout=1.5), ValueError, "caption_dropout=1.5 is invalid"),
                                (dict(name="a/b"), ValueError, "name='a/b' is invalid"),
                                (dict(controls=tmp_path / "nope"), FileNotFoundError, "controls='.*nope' is not a folder"),
                                (dict(data=tmp_path / "nope"), FileNotFoundError, "data folder '.*nope' does not exist")]:
        with pytest.raises(error, match=message):
            trainer.run(ControlNetTrainConfig(**{"data": data, "out": tmp_path / "o", "model": no_model, **TINY, **bad}))
    assert not (tmp_path / "o").exists()


def test_maps_come_from_the_preprocessor_or_the_controls_folder(data, tmp_path):
    from latentgen.control import preprocess
    from latentgen.training.captioned import read_dataset

    pairs = read_dataset(data)
    made = trainer.control_maps(pairs, ControlNetTrainConfig(data=data, out=tmp_path), 64)  # canny
    assert made.shape == (len(pairs), 3, 64, 64) and set(made.unique().tolist()) == {0.0, 1.0}
    want = np.asarray(preprocess.run("canny", Image.open(pairs[0][0]).convert("RGB")), np.float32) / 255
    assert np.array_equal(made[0].permute(1, 2, 0).numpy(), want)
    folder = tmp_path / "maps"
    folder.mkdir()
    for p, _ in pairs:
        Image.new("RGB", (64, 64), (255, 255, 255)).save(folder / f"{p.stem}.png")
    given = trainer.control_maps(pairs, ControlNetTrainConfig(data=data, out=tmp_path, controls=folder), 64)
    assert torch.allclose(given, torch.ones_like(given))
    (folder / f"{pairs[0][0].stem}.png").unlink()
    with pytest.raises(FileNotFoundError, match=f"no control map for {pairs[0][0].name}"):
        trainer.control_maps(pairs, ControlNetTrainConfig(data=data, out=tmp_path, controls=folder), 64)


def test_it_trains_the_controlnet_only_and_the_folder_steers_the_model(tiny_folder, data, tmp_path):
    import latentgen
    from latentgen import Control

    pipe = latentgen.load(tiny_folder)
    base = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    folder = _run(tiny_folder, data, tmp_path / "run", steps=6, save_every=6, lr=3e-3)
    info = json.loads((folder / "latentgen.json").read_text())
    assert folder.name == "controlnet" and info["steps"] == 6 and info["preprocessor"] == "canny"
    w = _weights(folder)
    assert any(k.startswith("controlnet_down_blocks") and w[k].abs().sum() > 0 for k in w)  # zero at the start
    edges = Image.new("RGB", (64, 64))
    edges.paste((255, 255, 255), (10, 10, 50, 50))
    plain = pipe.generate("a purple circle", seed=1, steps=2)[0]
    steered = pipe.generate("a purple circle", seed=1, steps=2, control=Control(edges, folder))[0]
    assert np.abs(np.asarray(plain, np.int16) - np.asarray(steered, np.int16)).max() > 0
    assert all(torch.equal(v, base[k]) for k, v in pipe.unet.state_dict().items())  # the base is untouched


def test_resume_after_a_kill_is_bit_identical(tiny_folder, data, tmp_path, monkeypatch, kill_after):
    full = _weights(_run(tiny_folder, data, tmp_path / "full", grad_accum=2))
    kill_after(2)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_folder, data, tmp_path / "killed", grad_accum=2)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="--resume"):
        _run(tiny_folder, data, tmp_path / "killed", grad_accum=2)
    resumed = _weights(_run(tiny_folder, data, tmp_path / "killed", grad_accum=2, resume=True))
    assert resumed.keys() == full.keys() and all(torch.equal(resumed[k], full[k]) for k in full)


def test_an_sdxl_controlnet_trains_with_the_pooled_text_and_size_numbers(xl_folder, data, tmp_path):
    """On an SDXL base both encoders, the pooled text and the size numbers reach the ControlNet and the U-Net, as
    drawing gives them: the loss depends on the size numbers, and the folder loads as an SDXL ControlNet that steers
    the model."""
    import latentgen
    from diffusers import ControlNetModel, DDPMScheduler

    from latentgen import Control
    from latentgen.models import loading
    from latentgen.training import loop as train

    folder = _run(xl_folder, data, tmp_path / "run", steps=6, save_every=6, lr=3e-3)
    net = ControlNetModel.from_pretrained(folder)
    assert net.config.addition_embed_type == "text_time"  # the SDXL added embedding, copied from the base
    c = loading.load_components(str(xl_folder), device="cpu", dtype="fp32", backend="torch")
    ids = trainer.train.tokenize(c.tokenizer, ["a purple circle"] * 2)
    ids_2 = trainer.train.tokenize(c.xl.tokenizer_2, ["a purple circle"] * 2)
    z = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    hint = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))

    def loss(size):
        objective = trainer.ControlNetObjective(net, c.unet, c.text_encoder, DDPMScheduler.from_config(c.scheduler.config),
                                                c.xl.text_encoder_2, size)
        with torch.no_grad():
            return objective(ids, z, torch.zeros_like(z), hint, train.step_generator(0, 0, 0, 0), input_ids_2=ids_2)

    assert torch.isfinite(loss(64)) and not torch.equal(loss(64), loss(128))
    pipe = latentgen.load(xl_folder)
    edges = Image.new("RGB", (64, 64))
    edges.paste((255, 255, 255), (10, 10, 50, 50))
    plain = pipe.generate("a purple circle", seed=1, steps=2)[0]
    steered = pipe.generate("a purple circle", seed=1, steps=2, control=Control(edges, folder))[0]
    assert np.abs(np.asarray(plain, np.int16) - np.asarray(steered, np.int16)).max() > 0
