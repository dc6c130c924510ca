"""The embedded model's recipe settings: refused values name the field, and the module imports no torch."""

import subprocess
import sys

import pytest

from latentgen.embedded.recipe_config import RecipeConfig


def test_the_recipe_settings_import_no_torch():
    code = "import sys, latentgen.embedded.recipe_config; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


@pytest.mark.parametrize("change, message", [
    ({"caption_dropout": 1.0}, r"caption_dropout=1 is invalid: some captions must stay"),
    ({"vae_open_colors": 1.5}, r"vae_open_colors=1.5"),
    ({"inpaint_steps": -1}, r"inpaint_steps=-1 is invalid"),
    ({"vae_autocast": "fp16"}, r"vae_autocast='fp16'"),
    ({"ema": 1.0}, r"ema=1.0 is invalid: use a decay in \[0, 1\)"),  # stage 2's loop settings, checked up front
    ({"threads": 0}, r"threads=0 is invalid"),
])
def test_a_bad_recipe_setting_is_refused_naming_it(tmp_path, change, message):
    RecipeConfig(out=tmp_path).check()  # the defaults are good
    with pytest.raises(ValueError, match=message):
        RecipeConfig(out=tmp_path, **change).check()


def test_an_init_that_is_no_model_folder_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"init=.* is no model folder: give RUN/model of an earlier run"):
        RecipeConfig(out=tmp_path, init=tmp_path).check()
