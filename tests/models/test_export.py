"""latentgen.models.export: any model as one LDM-layout file that loads to the same images, written atomically;
the `latentgen export` command."""

from dataclasses import replace

import pytest
import torch
from conftest import max_diff
from safetensors.torch import load_file

import latentgen
from latentgen.models import checkpoints
from latentgen.models import export as ldm_export

ARGS = dict(seed=3, steps=4, guidance=6.0, width=64, height=64, scheduler="ddim")


def test_export_round_trip(pipe, tiny_folder, tmp_path):
    out = ldm_export.export(tiny_folder, tmp_path / "out.safetensors")
    from latentgen import files

    assert (out.stat().st_mode & 0o777) == 0o666 & ~files.umask()  # not safetensors' private 0600
    single = latentgen.load(out)
    assert max_diff(single.generate("a red cat", **ARGS), pipe.generate("a red cat", **ARGS)) == 0
    public = lambda m: {k: v for k, v in m.config.items() if not k.startswith("_")}  # noqa: E731
    assert public(single.unet) == public(pipe.unet) and type(single.scheduler) is type(pipe.scheduler)
    assert single.defaults == replace(pipe.defaults, scheduler="ddim")  # the folder's own sampler, by name
    with pytest.raises(FileExistsError, match="--force"):
        ldm_export.export(tiny_folder, out)
    ldm_export.export(out, out, force=True, dtype="fp16")  # a file exports too, replaced in one rename
    assert next(iter(load_file(out).values())).dtype == torch.float16
    assert not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError, match=".safetensors"):
        ldm_export.export(tiny_folder, tmp_path / "out.ckpt")


def test_export_command(tiny_folder, tmp_path, capsys):
    import argparse

    from latentgen.cli import checkpoints as cli

    ap = argparse.ArgumentParser()
    cli.add_parser(ap.add_subparsers(dest="command"))
    args = ap.parse_args(["export", str(tiny_folder), str(tmp_path / "m.safetensors"), "--dtype", "fp16"])
    assert args.func(args) == 0 and "m.safetensors" in capsys.readouterr().out
    meta = checkpoints.read(tmp_path / "m.safetensors").metadata
    assert meta["modelspec.architecture"] == "stable-diffusion-v1" and meta["modelspec.prediction_type"] == "epsilon"



def test_export_bakes_loras_in(tiny_folder, lora_files, tmp_path, capsys):
    import argparse

    from latentgen.cli import checkpoints as cli

    kohya = lora_files[1]
    ap = argparse.ArgumentParser()
    cli.add_parser(ap.add_subparsers(dest="command"))
    args = ap.parse_args(["export", str(tiny_folder), str(tmp_path / "m.safetensors"), "--lora", f"{kohya}:0.3:0.8"])
    assert args.func(args) == 0
    plain = ldm_export.export(tiny_folder, tmp_path / "plain.safetensors")
    assert load_file(tmp_path / "m.safetensors").keys() == load_file(plain).keys()  # no adapter left in it
    loaded = latentgen.load(tiny_folder)
    loaded.load_lora(kohya, scale=(0.3, 0.8))
    baked = latentgen.load(tmp_path / "m.safetensors").generate("a red cat", **ARGS)
    assert max_diff(baked, loaded.generate("a red cat", **ARGS)) <= 1  # as the LoRA loaded at those scales
    assert max_diff(baked, latentgen.load(plain).generate("a red cat", **ARGS)) > 2
    args = ap.parse_args(["export", str(tiny_folder), str(tmp_path / "n.safetensors"), "--lora", "nope.safetensors"])
    with pytest.raises(FileNotFoundError, match="--lora nope.safetensors: no file"):
        args.func(args)
    assert not (tmp_path / "n.safetensors").exists()
