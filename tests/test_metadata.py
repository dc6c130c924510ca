"""latentgen.metadata: PNG files are written whole and never replace an existing file."""

import pytest
from PIL import Image

from latentgen import metadata


def test_save_png_never_clobbers(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"x")
    with pytest.raises(FileExistsError):
        metadata.save_png(Image.new("RGB", (4, 4)), path, "p")
    assert path.read_bytes() == b"x"


def test_the_fields_come_in_a1111s_order():
    """A1111's fixed fields first, in its order; the others (its extra_generation_params) after, as given."""
    from latentgen.metadata import parameters_text

    text = parameters_text("a cat", {"Hires upscale": 2, "Steps": 4, "Tiling": True, "Mask blur": 4, "Seed": 1,
                                     "Clip skip": None, "Denoising strength": 0.5, "Size": "64x64"})
    assert text == "a cat\nSteps: 4, Seed: 1, Size: 64x64, Denoising strength: 0.5, Tiling: True, Hires upscale: 2, " \
                   "Mask blur: 4"
