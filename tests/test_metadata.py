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
