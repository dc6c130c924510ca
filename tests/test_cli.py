import subprocess
import sys

import pytest
from PIL import Image

from latentgen import cli, metadata


def run(*args):
    return cli.main([str(a) for a in args])


def test_generate_writes_png_with_a1111_parameters(tiny_folder, tmp_path, capsys):
    out = tmp_path / "out.png"
    assert run("generate", "a red circle", "--model", tiny_folder, "--seed", 4, "--steps", 2,
               "--guidance", 5, "--negative", "blurry", "--scheduler", "euler_a", "-o", out) == 0
    assert Image.open(out).size == (64, 64)
    capsys.readouterr()
    assert run("info", out) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == ["a red circle", "Negative prompt: blurry",
                     f"Steps: 2, Sampler: Euler a, CFG scale: 5.0, Seed: 4, Size: 64x64, Model: {tiny_folder.name}"]


def test_several_images_get_numbered_files_and_seeds(tiny_folder, tmp_path):
    out = tmp_path / "img.png"
    assert run("generate", "a cat", "--model", tiny_folder, "--steps", 1, "-n", 2, "--seed", 9, "-o", out) == 0
    assert not out.exists()
    seeds = [metadata.read_parameters(tmp_path / f"img-{i}.png").rsplit("Seed: ", 1)[1].split(",")[0]
             for i in range(2)]
    assert seeds == ["9", "10"]


def test_existing_file_is_kept_without_force(tiny_folder, tmp_path, capsys):
    out = tmp_path / "out.png"
    out.write_bytes(b"precious")
    assert run("generate", "a cat", "--model", tiny_folder, "--steps", 1, "-o", out) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert run("generate", "a cat", "--model", tiny_folder, "--steps", 1, "-o", out, "--force") == 0
    assert Image.open(out).size == (64, 64)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary files left behind


def test_save_png_never_clobbers(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"x")
    with pytest.raises(FileExistsError):
        metadata.save_png(Image.new("RGB", (4, 4)), path, "p")
    assert path.read_bytes() == b"x"


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps"),
    (["--guidance", "nan"], "--guidance"),
    (["--scheduler", "nope"], "unknown scheduler 'nope'"),
    (["-n", "0"], "--num-images"),
])
def test_bad_arguments_fail_before_loading(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        run("generate", "a cat", "--model", tmp_path / "missing", "-o", tmp_path / "o.png", *args)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_bad_width_is_reported(tiny_folder, tmp_path, capsys):
    assert run("generate", "a cat", "--model", tiny_folder, "--width", 63, "-o", tmp_path / "o.png") == 2
    assert "width=63" in capsys.readouterr().err


def test_info_without_chunk(tmp_path, capsys):
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    assert run("info", tmp_path / "plain.png") == 1
    assert "no 'parameters' chunk" in capsys.readouterr().err


def test_console_script_is_installed():
    r = subprocess.run([sys.executable, "-m", "latentgen.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "generate" in r.stdout
