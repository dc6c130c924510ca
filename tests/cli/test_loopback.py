"""latentgen.cli.loopback: ``latentgen img2img --loopback N`` writes each picture's last loop, the Python API's, and
refuses bad loop settings before the model loads."""

import numpy as np
from PIL import Image

import latentgen
from conftest import photo
from latentgen.canvas.loopback import loopback
from latentgen.cli import main


def run(*args):
    return main([str(a) for a in args])


def test_img2img_loopback_writes_each_pictures_last_loop(tiny_folder, tmp_path, capsys):
    photo(64).save(tmp_path / "in.png")
    args = ["img2img", "a cat", "--image", tmp_path / "in.png", "--strength", 0.8, "--loopback", 3, "--final-strength",
            0.4, "--curve", "Lazy", "--steps", 3, "--num-images", 2]
    assert run(*args, "--model", tiny_folder, "-o", tmp_path / "l.png") == 0
    want = loopback(latentgen.load(tiny_folder), "a cat", photo(64), loops=3, final_strength=0.4, curve="Lazy",
                    strength=0.8, steps=3, num_images=2)
    for path, loops in zip((tmp_path / "l-0.png", tmp_path / "l-1.png"), want):
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(loops[-1])), path
    for extra, message in [(["--loopback", 0], "loops=0 is invalid"), (["--final-strength", 2], "final_strength=2.0"),
                           (["--sd-upscale", 2], "--sd-upscale and --loopback are two scripts")]:
        assert run(*args, *extra, "--model", "/nowhere", "-o", tmp_path / "n.png") == 2
        assert message in capsys.readouterr().err and not (tmp_path / "n.png").exists()
