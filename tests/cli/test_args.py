"""latentgen.cli.args: the flags of a config dataclass derived from its fields, so defaults live once."""

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from latentgen.cli.args import add_config_args, config_from
from latentgen.embedded.recipe import RecipeConfig
from latentgen.training.finetune import LoraTrainConfig


def _lora_parser():
    p = argparse.ArgumentParser(prog="finetune-lora")
    add_config_args(p, LoraTrainConfig, positional=("data",))
    return p


def test_flags_give_the_config_with_the_dataclass_defaults():
    ns = _lora_parser().parse_args(["data", "--out", "o", "--steps", "3"])
    assert config_from(ns, LoraTrainConfig) == LoraTrainConfig(data=Path("data"), out=Path("o"), steps=3)


def test_list_fields_are_repeatable_flags():
    p = _lora_parser()
    ns = p.parse_args(["data", "--out", "o", "--steps", "3", "--prior-prompt", "a", "--prior-prompt", "b",
                       "--prior-data", "p"])
    assert ns.prior_prompts == ["a", "b"]
    assert config_from(ns, LoraTrainConfig).prior_prompts == ["a", "b"]
    assert p.parse_args(["data", "--out", "o"]).prior_prompts == []  # the default is not shared between parses


def test_a_value_outside_the_choices_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        _lora_parser().parse_args(["data", "--out", "o", "--steps", "3", "--crop", "middle"])
    assert e.value.code == 2 and "--crop" in capsys.readouterr().err


def test_none_turns_off_an_optional_field_with_a_default():
    p = argparse.ArgumentParser(prog="train")
    add_config_args(p, RecipeConfig)
    assert p.parse_args(["--out", "o"]).snr_gamma == RecipeConfig(out=Path("o")).snr_gamma == 5.0
    ns = p.parse_args(["--out", "o", "--snr-gamma", "none"])
    assert ns.snr_gamma is None and config_from(ns, RecipeConfig).snr_gamma is None


def test_help_shows_the_defaults():
    r = subprocess.run([sys.executable, "-m", "latentgen.cli", "finetune-lora", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    help_of_rank = re.search(r"^  --rank RANK(.*?)(?=^  -)", r.stdout, re.M | re.S).group(1)
    assert "(default: 8)" in " ".join(help_of_rank.split())


def test_the_cli_says_when_the_first_image_will_wait_for_a_compile(monkeypatch, capsys):
    import latentgen
    from latentgen.cli.args import load_model

    ns = argparse.Namespace(model="sd15", device="cuda", dtype=None, backend=None)
    for backend, said in (("compile", True), ("cudagraph", False), ("openvino", False)):
        pipe = argparse.Namespace(runtime=argparse.Namespace(backend=backend))
        monkeypatch.setattr(latentgen, "load", lambda model, **kw: pipe)  # what the rule chose on a GPU
        assert load_model(ns) is pipe
        err = capsys.readouterr().err
        assert ("the first call of each image size, batch size and prompt length compiles them" in err
                and "--backend cudagraph skips" in err) == said
    ns.lora = ["style.safetensors"]  # with a LoRA injected the U-Net runs as it is: nothing compiles
    monkeypatch.setattr(latentgen, "load", lambda model, **kw: argparse.Namespace(
        runtime=argparse.Namespace(backend="compile")))
    load_model(ns)
    assert "compiles" not in capsys.readouterr().err
