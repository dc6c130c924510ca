"""latentgen.cli: generate / img2img / inpaint / info on the tiny model, --lora, bad arguments before any
model loads, and a quiet start: the embedded model prints only its progress bar and the output path."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import huge_png, max_diff
from conftest import mask as _mask
from conftest import photo as _photo
from latentgen import cli, metadata
from latentgen.lora import formats as lora_io
from latentgen.cli import main
from latentgen.embedded import shapes
from latentgen.metadata import read_parameters


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


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps"),
    (["--guidance", "nan"], "--guidance"),
    (["--scheduler", "nope"], "unknown scheduler 'nope'"),
    (["-n", "0"], "--num-images"),
    (["--seed-resize-from", "512"], "not a size: write WIDTHxHEIGHT"),
])
def test_bad_arguments_fail_before_loading(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        run("generate", "a cat", "--model", tmp_path / "missing", "-o", tmp_path / "o.png", *args)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_variation_seed_flags_reach_the_image_and_the_png(tiny_folder, tmp_path, capsys):
    import latentgen

    out = tmp_path / "v.png"
    assert run("generate", "a cat", "--model", tiny_folder, "--steps", 2, "--seed", 3, "--subseed", 8,
               "--subseed-strength", 0.25, "--seed-resize-from", "48x64", "-o", out) == 0
    text = read_parameters(out)
    assert "Seed: 3, Size: 64x64, Model: " in text and "Variation seed: 8, Variation seed strength: 0.25, Seed " \
        "resize from: 48x64" in text
    want = latentgen.load(tiny_folder).generate("a cat", steps=2, seed=3,
                                                variation=latentgen.Variation(8, 0.25, (48, 64)))[0]
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(want))
    assert run("generate", "a cat", "--model", tiny_folder, "--subseed-strength", 3, "-o", tmp_path / "b.png") == 2
    assert "variation.strength=3.0 is invalid" in capsys.readouterr().err


def test_style_flags_apply_a1111_styles_to_the_prompts(tiny_folder, tmp_path, capsys):
    import latentgen

    csv = tmp_path / "styles.csv"
    csv.write_text("name,prompt,negative_prompt\nnight,{prompt} at night,sunny\n")
    out = tmp_path / "s.png"
    assert run("generate", "a cat", "--model", tiny_folder, "--steps", 2, "--seed", 3, "--style", "night",
               "--styles-file", csv, "--hires-prompt", "a dog", "--hires-steps", 1, "-o", out) == 0
    want = latentgen.load(tiny_folder).generate("a cat at night", negative_prompt="sunny", steps=2, seed=3,
                                                hires=latentgen.Hires(steps=1, prompt="a dog at night"))[0]
    assert read_parameters(out) == want.info["parameters"]
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(want))
    for extra, message in ((["--styles-file", csv, "--style", "day"], "--style: no style 'day'; the styles are 'night'"),
                           ([], "--style needs --styles-file")):
        assert run("generate", "a cat", "--model", tiny_folder, "--style", "night", *extra[2:], *extra[:2],
                   "-o", tmp_path / "b.png") == 2
        assert message in capsys.readouterr().err


def test_tiling_flag_reaches_every_call(tiny_folder, tmp_path):
    import latentgen

    pipe = latentgen.load(tiny_folder)
    for cmd, extra, want in [
        ("generate", [], pipe.generate("a cat", steps=2, seed=3, tiling=True)[0]),
        ("img2img", ["--image", tmp_path / "generate.png"], None),
    ]:
        out = tmp_path / f"{cmd}.png"
        assert run(cmd, "a cat", "--model", tiny_folder, "--steps", 2, "--seed", 3, "--tiling", *extra, "-o", out) == 0
        assert "Tiling: True" in read_parameters(out)
        if want is None:
            want = pipe.img2img("a cat", tmp_path / "generate.png", steps=2, seed=3, tiling=True)[0]
        assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(want))


def test_bad_width_is_reported(tiny_folder, tmp_path, capsys):
    assert run("generate", "a cat", "--model", tiny_folder, "--width", 63, "-o", tmp_path / "o.png") == 2
    assert "width=63" in capsys.readouterr().err


def test_info_without_chunk(tmp_path, capsys):
    Image.new("RGB", (4, 4)).save(tmp_path / "plain.png")
    assert run("info", tmp_path / "plain.png") == 1
    assert "no 'parameters' chunk" in capsys.readouterr().err


def test_info_on_a_folder_or_a_file_that_is_no_image_says_so(tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    assert run("info", tmp_path) == 2
    assert "is a folder, not an image" in capsys.readouterr().err
    assert run("info", tmp_path / "notes.png") == 2
    assert "notes.png is not an image Pillow can read" in capsys.readouterr().err


def test_a_run_that_cannot_finish_prints_one_error_line(tiny_folder, tmp_path, capsys, lora_files):
    out = tmp_path / "o.png"  # a LoRA scaled far out: the U-Net makes NaNs while drawing
    assert run("generate", "a cat", "--model", tiny_folder, "--lora", f"{lora_files[0]}:1e30", "--steps", 2,
               "-o", out) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error: ")]  # after the bar
    assert len(lines) == 1 and "NaN" in lines[0] and "Traceback" not in err and not out.exists()


def test_absurd_guidance_is_refused_before_drawing(tiny_folder, tmp_path, capsys):
    out = tmp_path / "o.png"
    assert run("generate", "a cat", "--model", tiny_folder, "--guidance", "1e30", "--steps", 2, "-o", out) == 2
    err = capsys.readouterr().err
    assert "guidance=1e+30 is invalid: use a finite number from 0 to 100" in err and "NaN" not in err and not out.exists()


def test_console_script_is_installed():
    r = subprocess.run([sys.executable, "-m", "latentgen.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "generate" in r.stdout


def test_cli_img2img_and_inpaint(tiny_folder, tmp_path, capsys):
    _photo().save(tmp_path / "in.png")
    _mask().save(tmp_path / "mask.png")
    common = ["--model", str(tiny_folder), "--steps", "2", "--seed", "3"]
    assert main(["img2img", "a cat", "--image", str(tmp_path / "in.png"), "--strength", "0.6",
                 "-o", str(tmp_path / "a.png"), *common]) == 0
    assert "Denoising strength: 0.6" in read_parameters(tmp_path / "a.png")
    assert main(["inpaint", "a cat", "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
                 "--mask-blur", "2", "-o", str(tmp_path / "b.png"), *common]) == 0
    text = read_parameters(tmp_path / "b.png")
    assert "Mask blur: 2" in text and "Denoising strength: 1.0" in text and "Seed: 3" in text
    # bad input fails before the model loads, naming the parameter
    assert main(["img2img", "a cat", "--image", str(tmp_path / "nope.png"), "-o", str(tmp_path / "c.png")]) == 2
    assert "--image" in capsys.readouterr().err
    assert main(["img2img", "a cat", "--image", str(tmp_path / "in.png"), "--strength", "2",
                 "-o", str(tmp_path / "c.png")]) == 2
    assert "strength" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()
    assert main(["inpaint", "a cat", "--image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"),
                 "--mask-blur", "2", "--variant", "blend", "-o", str(tmp_path / "d.png"), *common]) == 0  # 4 channels: same
    assert Image.open(tmp_path / "d.png").tobytes() == Image.open(tmp_path / "b.png").tobytes()


def test_cli_shapes_data_writes_captioned_images_of_the_asked_sizes(tmp_path, capsys):
    assert main(["shapes-data", str(tmp_path / "d"), "-n", "3", "--shapes", "star", "--radius", "0.3-0.3"]) == 0
    assert sorted(p.name for p in (tmp_path / "d").iterdir())[:2] == ["00000.png", "00000.txt"]
    assert " star on a " in (tmp_path / "d" / "00002.txt").read_text()
    image = Image.open(tmp_path / "d" / "00000.png")
    a = np.asarray(image, np.int16)
    xs = np.nonzero((np.abs(a - a[0, 0]).sum(-1) > 0).any(0))[0]  # columns the shape covers
    assert shapes.read(image).shape == "star" and abs(len(xs) - 1.902 * 0.3 * 64) <= 2  # a star 0.3 x 64 px in radius
    assert main(["shapes-data", str(tmp_path / "e"), "--radius", "0.3-0.6"]) == 2
    assert "radius='0.3-0.6'" in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_cli_ship_lora_needs_what_it_teaches(tmp_path, capsys):
    (tmp_path / "l.safetensors").write_bytes(b"x")
    assert main(["ship-lora", str(tmp_path / "l.safetensors"), str(tmp_path / "out"), "--command", "c"]) == 2
    assert "--color" in capsys.readouterr().err and not (tmp_path / "out.json").exists()


def test_cli_lora_flag_and_metadata(tiny_folder, lora_files, tmp_path):
    out = tmp_path / "o.png"
    assert main(["generate", "a cat", "--model", str(tiny_folder), "--steps", "2",
                 "--lora", f"{lora_files[1]}:0.6", "-o", str(out)]) == 0
    text = read_parameters(out)
    assert f"a_kohya: {lora_io.file_hash(lora_files[1])}" in text
    assert "a_kohya: 0.6" in text
    assert main(["generate", "a cat", "--model", str(tiny_folder), "--steps", "2",
                 "--lora", f"{lora_files[1]}:0.2:0.6", "-o", str(out), "--force"]) == 0
    assert 'Lora scales: "a_kohya: 0.2:0.6"' in read_parameters(out)  # A1111's TE:UNET
    assert main(["generate", "a cat", "--model", str(tiny_folder), "--lora", str(tmp_path / "nope.safetensors"),
                 "-o", str(tmp_path / "p.png")]) == 2
    assert main(["generate", "a cat", "--model", str(tiny_folder), "--lora", f"{lora_files[1]}:1:nan",
                 "-o", str(tmp_path / "p.png")]) == 2


def test_generate_on_the_embedded_model_prints_only_progress_and_the_path(tmp_path):
    out = tmp_path / "OUT.png"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "latentgen.cli", "generate", "a red circle on a blue background",
                        "-o", str(out), "--steps", "4"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout == f"{out}\n"
    # what is left of stderr without tqdm's bar: its frames name it, and it erases itself with blanks
    pieces = [p for line in r.stderr.split("\r") for p in line.split("\n")]
    assert [p for p in pieces if p.strip() and "denoising" not in p] == [], r.stderr
    for text in ("Loading weights", "float32"):
        assert text not in r.stdout and text not in r.stderr
    assert Image.open(out).size == (64, 64)


def test_single_file_vae_embedding_and_clip_skip_reach_the_png(tiny_folder, tmp_path, capsys):
    """--model FILE, --vae FILE, --prediction-type, --embedding, --clip-skip and A1111 syntax on the CLI;
    `latentgen info` shows what A1111 writes for them (Clip skip, TI hashes) and the file's model name."""
    from safetensors.torch import save_file

    from latentgen.models import export as ldm_export, ldm, loading

    c = loading.load_components(tiny_folder)
    state = {k: v.contiguous() for k, v in ldm_export.ldm_state_dict(c).items()}
    save_file(state, str(tmp_path / "tinyfile.safetensors"))
    save_file({k: v for k, v in state.items() if k.startswith(ldm.VAE)}, str(tmp_path / "vae.safetensors"))
    save_file({"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(0))},
              str(tmp_path / "tinytoy.safetensors"))
    out = tmp_path / "out.png"
    assert run("generate", "a (tinytoy:1.2) cat", "--model", tmp_path / "tinyfile.safetensors", "--vae",
               tmp_path / "vae.safetensors", "--prediction-type", "eps", "--embedding", tmp_path / "tinytoy.safetensors",
               "--clip-skip", 2, "--steps", 2, "--seed", 1, "-o", out) == 0
    capsys.readouterr()
    assert run("info", out) == 0
    text = capsys.readouterr().out
    assert text.startswith("a (tinytoy:1.2) cat\n") and "Model: tinyfile" in text and "Clip skip: 2" in text
    assert 'TI hashes: "tinytoy: ' in text
    with pytest.raises(SystemExit) as e:  # refused while parsing, before the file is read
        run("generate", "a cat", "--model", tmp_path / "tinyfile.safetensors", "--prediction-type", "x",
            "-o", tmp_path / "bad.png")
    assert e.value.code == 2 and "--prediction-type: 'x' is unknown" in capsys.readouterr().err


def test_bad_files_and_devices_get_one_line_not_a_traceback(tiny_folder, tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(huge_png(100000, 100000, text="a red circle\nSteps: 20, Seed: 1"))
    _photo().save(tmp_path / "in.png")
    out = tmp_path / "o.png"
    cases = [("img2img", "a cat", "--image", bomb, "-o", out),
             ("inpaint", "a cat", "--image", tmp_path / "in.png", "--mask", bomb, "-o", out),
             ("generate", "a cat", "--model", tiny_folder, "--device", "bogus", "-o", out),
             ("generate", "a cat", "--model", tiny_folder, "--device", "cuda:7", "-o", out)]
    for args in cases:
        assert run(*args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()
    assert run("info", bomb) == 0 and "Steps: 20, Seed: 1" in capsys.readouterr().out  # its text, no pixel decoded


def test_outputs_onto_what_is_not_a_regular_file_are_refused_before_any_work(tiny_folder, tmp_path, capsys,
                                                                             monkeypatch):
    import latentgen

    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "folder.png").mkdir()
    monkeypatch.setattr(latentgen, "load", lambda *a, **k: pytest.fail("loaded a model before refusing"))
    for target in ("fifo.png", "folder.png"):
        assert run("generate", "a cat", "--model", tiny_folder, "-o", tmp_path / target, "--force") == 2
        assert "writes regular files only" in capsys.readouterr().err
    assert (tmp_path / "fifo.png").is_fifo() and (tmp_path / "folder.png").is_dir()


def test_hires_img2img_resize_inpaint_fill_and_outpaint_flags_equal_the_python_api(tiny_folder, tiny_other, tmp_path):
    import latentgen
    from latentgen.canvas import fill, resize

    assert cli.RESIZE_MODES == resize.MODES and cli.FILLS == fill.MODES  # the flags' choices are the modes
    pipe, src, other = latentgen.load(tiny_folder), _photo(48), latentgen.load(tiny_other)
    src.save(tmp_path / "in.png")
    _mask(48).save(tmp_path / "mask.png")
    cases = [
        (["generate", "a cat", "--hires-scale", 1.5, "--hires-strength", 0.5, "--width", 32, "--height", 32],
         pipe.generate("a cat", width=32, height=32, seed=0, steps=2, hires=latentgen.Hires(scale=1.5, strength=0.5))),
        (["generate", "a cat", "--hires-model", tiny_other, "--width", 32, "--height", 32],  # A1111's hr_checkpoint_name
         pipe.generate("a cat", width=32, height=32, seed=0, steps=2, hires=latentgen.Hires(model=other))),
        (["img2img", "a cat", "--image", tmp_path / "in.png", "--width", 64, "--height", 32, "--resize-mode",
          "crop and resize"], pipe.img2img("a cat", src, width=64, height=32, resize_mode="crop and resize", steps=2)),
        (["inpaint", "a cat", "--image", tmp_path / "in.png", "--mask", tmp_path / "mask.png", "--fill",
          "latent noise", "--strength", 0.6], pipe.inpaint("a cat", src, _mask(48), fill="latent noise", strength=0.6,
                                                           steps=2)),
        (["outpaint", "a cat", "--image", tmp_path / "in.png", "--left", 16], pipe.outpaint("a cat", src, left=16,
                                                                                           steps=2)),
    ]
    for i, (args, want) in enumerate(cases):
        out = tmp_path / f"o{i}.png"
        assert run(*args, "--model", tiny_folder, "--steps", 2, "-o", out) == 0
        assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(want[0])), args[0]
    assert "Hires upscale: 1.5, Hires upscaler: Latent" in read_parameters(tmp_path / "o0.png")
    assert f"Hires checkpoint: {other.name}, Hires upscale: 2, Hires upscaler: Latent" in read_parameters(tmp_path / "o1.png")


def test_upscale_and_xyz_grid_commands(tiny_folder, tmp_path, capsys):
    _photo(32).save(tmp_path / "in.png")
    assert run("upscale", tmp_path / "in.png", "--scale", 2, "--upscaler", "Nearest", "-o", tmp_path / "up.png") == 0
    up = Image.open(tmp_path / "up.png")
    assert up.size == (64, 64) and up.getpixel((0, 0)) == up.getpixel((1, 1)) == _photo(32).getpixel((0, 0))
    assert "Postprocess upscale to: 64x64, Postprocess upscaler: Nearest" in read_parameters(tmp_path / "up.png")
    assert run("upscale", tmp_path / "in.png", "--upscaler", "Latent", "-o", tmp_path / "l.png") == 2
    assert "works on latents, inside a hires fix" in capsys.readouterr().err
    assert run("upscale", tmp_path / "in.png", "--upscaler", "4x-nope", "-o", tmp_path / "n.png") == 2
    assert "--upscaler='4x-nope' is not an upscaler here" in capsys.readouterr().err
    assert run("grid", "a red cat", "--x", "Steps: 1, 2", "--y", "Prompt S/R: red, blue", "--model", tiny_folder,
               "-o", tmp_path / "g.png") == 0
    assert sorted(p.name for p in tmp_path.glob("g*.png")) == ["g-1.png", "g-2.png", "g-3.png", "g-4.png", "g.png"]
    assert read_parameters(tmp_path / "g-4.png").startswith("a blue cat\n") and "Steps: 2," in \
        read_parameters(tmp_path / "g-4.png")
    with pytest.raises(SystemExit):
        run("grid", "a cat", "--x", "Eta: 1", "--model", tiny_folder, "-o", tmp_path / "e.png")
    assert "axis 'Eta' is not one latentgen plots" in capsys.readouterr().err
    (tmp_path / "styles.csv").write_text("name,prompt,negative_prompt\nflat,{prompt} in flat colors,blurry\n")
    assert run("grid", "a red cat", "--x", "Styles: flat", "--model", tiny_folder, "--steps", 1, "--styles-file",
               tmp_path / "styles.csv", "-o", tmp_path / "s.png") == 0
    assert read_parameters(tmp_path / "s-1.png").startswith("a red cat in flat colors\nNegative prompt: blurry\n")
    assert run("grid", "a cat", "--x", "Styles: flat", "--model", tiny_folder, "-o", tmp_path / "n.png") == 2
    assert "no style 'flat'; the styles are none" in capsys.readouterr().err and not (tmp_path / "n.png").exists()


def test_grid_matrix_draws_a1111s_prompt_matrix(tiny_folder, tmp_path, capsys):
    import latentgen
    from latentgen.plot import matrix

    assert run("grid", "a cat|red|a hat", "--matrix", "--matrix-at-start", "--matrix-random-seeds", "--seed", 5,
               "--steps", 2, "--model", tiny_folder, "-o", tmp_path / "m.png") == 0
    assert sorted(p.name for p in tmp_path.glob("m*.png")) == ["m-1.png", "m-2.png", "m-3.png", "m-4.png", "m.png"]
    want = matrix.matrix(latentgen.load(tiny_folder), "a cat|red|a hat", at_start=True, different_seeds=True, seed=5,
                         steps=2)
    assert max_diff([Image.open(tmp_path / "m.png")], [want.grid]) == 0
    assert read_parameters(tmp_path / "m-4.png").startswith("red, a hat, a cat\n") and "Seed: 8," in \
        read_parameters(tmp_path / "m-4.png")
    assert run("grid", "a cat", "--matrix", "--model", "/nowhere", "-o", tmp_path / "n.png") == 2
    assert "has no '|'" in capsys.readouterr().err and not (tmp_path / "n.png").exists()  # before the model loads


def test_grid_plots_and_matrices_draw_from_a_picture(tiny_folder, tmp_path, capsys):
    """``latentgen grid --image`` (and ``--mask``): the X/Y/Z plot's and the prompt matrix's cells are img2img
    (inpainting) calls, as on A1111's img2img tab; the 'Denoising' axis is their strength."""
    import latentgen

    _photo(64).save(tmp_path / "in.png")
    _mask(64).save(tmp_path / "mask.png")
    pipe = latentgen.load(tiny_folder)
    assert run("grid", "a cat", "--x", "Denoising: 0.3, 0.9", "--image", tmp_path / "in.png", "--steps", 3,
               "--model", tiny_folder, "-o", tmp_path / "d.png") == 0
    want = pipe.img2img("a cat", _photo(64), strength=0.9, steps=3)
    assert max_diff([Image.open(tmp_path / "d-2.png")], want) == 0
    assert run("grid", "a cat|red", "--matrix", "--image", tmp_path / "in.png", "--mask", tmp_path / "mask.png",
               "--steps", 2, "--model", tiny_folder, "-o", tmp_path / "m.png") == 0
    want = pipe.inpaint("a cat, red", _photo(64), _mask(64), strength=1.0, steps=2)
    assert max_diff([Image.open(tmp_path / "m-2.png")], want) == 0
    for args, message in [(["--mask", tmp_path / "mask.png"], "--mask and --strength draw from a picture"),
                          (["--image", tmp_path / "nope.png"], "nope.png"),
                          (["--image", tmp_path / "in.png", "--strength", 2], "strength=2.0 is invalid"),
                          (["--image", tmp_path / "in.png", "--mask", tmp_path / "mask.png", "--width", 64],
                           "inpainting .--mask. draws at the picture's own size")]:
        assert run("grid", "a cat|red", "--matrix", "--model", "/nowhere", *args, "-o", tmp_path / "n.png") == 2
        assert re.search(message, capsys.readouterr().err) and not (tmp_path / "n.png").exists()


def test_img2img_sd_upscale_redraws_the_upscaled_picture_in_tiles(tiny_folder, tmp_path, capsys):
    import latentgen
    from latentgen.upscale import sd_upscale

    _photo(48).save(tmp_path / "in.png")
    args = ["img2img", "a cat", "--image", tmp_path / "in.png", "--sd-upscale", 2, "--tile-overlap", 16, "--width", 64,
            "--height", 64, "--steps", 2]
    assert run(*args, "--model", tiny_folder, "-o", tmp_path / "u.png") == 0
    want = sd_upscale.sd_upscale(latentgen.load(tiny_folder), "a cat", _photo(48), overlap=16, width=64, height=64,
                                 steps=2)
    assert max_diff([Image.open(tmp_path / "u.png")], want) == 0 and want[0].size == (96, 96)
    assert "SD upscale upscaler: Lanczos" in read_parameters(tmp_path / "u.png")
    assert run(*args, "--sd-upscaler", "4x-nope", "--model", "/nowhere", "-o", tmp_path / "n.png") == 2
    assert "--sd-upscaler='4x-nope' is not an upscaler here" in capsys.readouterr().err  # before the model loads


def test_img2img_loopback_writes_each_pictures_last_loop(tiny_folder, tmp_path, capsys):
    _photo(64).save(tmp_path / "in.png")
    args = ["img2img", "a cat", "--image", tmp_path / "in.png", "--strength", 0.8, "--loopback", 3, "--final-strength",
            0.4, "--curve", "Lazy", "--steps", 3, "--num-images", 2]
    assert run(*args, "--model", tiny_folder, "-o", tmp_path / "l.png") == 0
    import latentgen
    from latentgen.canvas.loopback import loopback

    want = loopback(latentgen.load(tiny_folder), "a cat", _photo(64), loops=3, final_strength=0.4, curve="Lazy",
                    strength=0.8, steps=3, num_images=2)
    for path, loops in zip((tmp_path / "l-0.png", tmp_path / "l-1.png"), want):
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(loops[-1])), path
    for extra, message in [(["--loopback", 0], "loops=0 is invalid"), (["--final-strength", 2], "final_strength=2.0"),
                           (["--sd-upscale", 2], "--sd-upscale and --loopback are two scripts")]:
        assert run(*args, *extra, "--model", "/nowhere", "-o", tmp_path / "n.png") == 2
        assert message in capsys.readouterr().err and not (tmp_path / "n.png").exists()


def test_upscaler_model_files_by_path_or_stem(tiny_folder, upscaler_folder, tmp_path, monkeypatch, capsys):
    import latentgen
    from latentgen.upscale import upscalers

    _photo(24).save(tmp_path / "in.png")
    path = upscaler_folder / "2x-compact.safetensors"
    assert run("upscale", tmp_path / "in.png", "--scale", 4, "--upscaler", path, "--tile", 8, "-o",
               tmp_path / "bad.png") == 2 and not (tmp_path / "bad.png").exists()
    assert "--tile=8 is invalid: use 0 (the whole picture at once) or a tile of more than 16" in \
        capsys.readouterr().err
    assert run("upscale", tmp_path / "in.png", "--scale", 4, "--upscaler", path, "--tile", 20, "-o",
               tmp_path / "up.png") == 0
    want = upscalers.pixels(_photo(24), (96, 96), str(path), tile=20)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "up.png").convert("RGB")), np.asarray(want))
    assert "Postprocess upscaler: 2x-compact" in read_parameters(tmp_path / "up.png")
    monkeypatch.setenv(upscalers.ENV, str(upscaler_folder))
    assert run("generate", "a cat", "--model", tiny_folder, "--steps", 2, "--width", 32, "--height", 32,
               "--hires-upscaler", "2x-compact", "-o", tmp_path / "h.png") == 0
    want = latentgen.load(tiny_folder).generate("a cat", steps=2, width=32, height=32,
                                                hires=latentgen.Hires(upscaler="2x-compact"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "h.png").convert("RGB")), np.asarray(want[0]))
    assert "Hires upscaler: 2x-compact" in read_parameters(tmp_path / "h.png")


def test_control_flags_equal_the_python_api(tiny_folder, controlnets, tmp_path, capsys):
    import latentgen

    hint = _mask(64).convert("RGB")
    hint.save(tmp_path / "hint.png")
    out = tmp_path / "c.png"
    assert run("generate", "a cat", "--model", tiny_folder, "--steps", 2, "--control", tmp_path / "hint.png",
               "--control-model", controlnets[0], "--control-weight", 0.7, "--control-mode", "prompt", "-o", out) == 0
    want = latentgen.load(tiny_folder).generate("a cat", steps=2, control=latentgen.Control(
        hint, controlnets[0], weight=0.7, mode="prompt"))
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(want[0]))
    assert run("generate", "a cat", "--model", tiny_folder, "--control", tmp_path / "hint.png", "-o",
               tmp_path / "d.png") == 2
    assert "1 --control image(s) and 0 --control-model(s)" in capsys.readouterr().err


def test_generate_with_a_tiny_vae_folder_and_lcm(tiny_folder, tmp_path):
    from diffusers import AutoencoderTiny
    from PIL import Image

    AutoencoderTiny().save_pretrained(tmp_path / "taesd")
    out = tmp_path / "out.png"
    assert run("generate", "a cat", "--model", tiny_folder, "--vae", tmp_path / "taesd", "--scheduler", "lcm",
               "--steps", 2, "--guidance", 1, "-o", out) == 0
    assert Image.open(out).size == (64, 64)  # the tiny VAE's factor 8 over 8 x 8 latents
    assert "Sampler: LCM" in read_parameters(out)
    with pytest.raises(SystemExit) as e:  # argparse refuses it, naming the tiny VAE's forms
        run("generate", "a cat", "--model", tiny_folder, "--vae", tmp_path / "none", "-o", out)
    assert e.value.code == 2


def test_refiner_flags_equal_the_python_api(xl_folder, xl_refiner_folder, tmp_path, capsys):
    import latentgen

    out = tmp_path / "refined.png"
    assert run("generate", "a red circle", "--model", xl_folder, "--refiner", xl_refiner_folder, "--refiner-switch-at",
               0.5, "--steps", 4, "--seed", 3, "-o", out) == 0
    r = latentgen.Refiner(latentgen.load(xl_refiner_folder), 0.5)
    want = latentgen.load(xl_folder).generate("a red circle", steps=4, seed=3, refiner=r)[0]
    assert np.abs(np.asarray(Image.open(out), int) - np.asarray(want, int)).max() <= 1
    assert f"Refiner: {xl_refiner_folder.name}, Refiner switch at: 0.5" in read_parameters(out)
    assert run("generate", "a cat", "--model", xl_folder, "--refiner", "nowhere", "--refiner-switch-at", 2,
               "-o", tmp_path / "x.png") == 2
    assert "--refiner-switch-at" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    hr = tmp_path / "hr.png"  # with the hires fix: the pass(es) it acts in
    assert run("generate", "a red circle", "--model", xl_folder, "--refiner", xl_refiner_folder, "--refiner-switch-at",
               0.5, "--refiner-hires-pass", "both", "--hires-scale", 1.5, "--steps", 4, "--seed", 3, "-o", hr) == 0
    r = latentgen.Refiner(latentgen.load(xl_refiner_folder), 0.5, hires_pass="both")
    want = latentgen.load(xl_folder).generate("a red circle", steps=4, seed=3, refiner=r, hires=latentgen.Hires(scale=1.5))[0]
    assert np.abs(np.asarray(Image.open(hr), int) - np.asarray(want, int)).max() <= 1
    assert "Hires refiner: both passes" in read_parameters(hr)
    g = tmp_path / "g.png"  # latentgen grid: the refiner flags, and the X/Y/Z plot's Refiner switch at axis
    assert run("grid", "a red circle", "--model", xl_folder, "--refiner", xl_refiner_folder, "--x",
               "Refiner switch at: 0.5, 0.9", "--steps", 4, "--seed", 3, "-o", g) == 0
    want = latentgen.load(xl_folder).generate("a red circle", steps=4, seed=3, refiner=latentgen.Refiner(r.model, 0.5))[0]
    assert np.abs(np.asarray(Image.open(tmp_path / "g-1.png"), int) - np.asarray(want, int)).max() <= 1
    assert "Refiner switch at: 0.9" in read_parameters(tmp_path / "g-2.png")


def test_ctrl_c_anywhere_is_one_line_and_exit_130(monkeypatch, capsys):
    """While the parser is built (its imports take seconds) and when a library turns the KeyboardInterrupt into an
    error of its own (diffusers: OSError "Unable to load weights"): a real SIGINT, one line, 130."""
    import signal

    def slow_parser():
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("the signal did not interrupt")

    monkeypatch.setattr(cli, "build_parser", slow_parser)
    assert main(["info", "x.png"]) == 130
    assert capsys.readouterr().err.strip() == "error: interrupted; no file was left half-written"

    def swallowing(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            raise OSError("Unable to load weights from checkpoint file") from None
        raise AssertionError("the signal did not interrupt")

    monkeypatch.undo()
    monkeypatch.setattr(cli, "cmd_info", swallowing)
    assert main(["info", "x.png"]) == 130
    assert "error: interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # main put Python's handler back
    monkeypatch.undo()
    assert main(["info", "no-such.png"]) == 2  # a plain error after it is reported as before
    assert "Unable" not in capsys.readouterr().err


def test_the_parser_is_built_without_torch_so_help_and_errors_are_instant():
    """Every command's flags, the trainers' included (their settings live in light dataclass modules): no torch,
    diffusers or transformers is imported until a command runs (they took 5 s before ``--help`` printed)."""
    code = ("import sys; from latentgen.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'accelerate', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_zero_terminal_snr_and_cfg_rescale_flags(tiny_folder, tmp_path):
    import latentgen

    out = tmp_path / "z.png"
    assert run("generate", "a red circle", "--model", tiny_folder, "--prediction-type", "v", "--zero-terminal-snr",
               "--guidance-rescale", 0.7, "--steps", 3, "--seed", 2, "--scheduler", "euler", "-o", out) == 0
    pipe = latentgen.load(tiny_folder, prediction_type="v_prediction", zero_terminal_snr=True)
    expect = pipe.generate("a red circle", steps=3, seed=2, scheduler="euler", guidance_rescale=0.7)[0]
    assert Image.open(out).tobytes() == expect.tobytes()
