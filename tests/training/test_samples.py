"""latentgen.training.samples: kohya's sample prompt lines and files (.txt, .json, .toml) read into drawing settings,
every bad line refused naming it, and the samples drawn with those settings on the tiny model."""

import json

import pytest
from PIL import Image

from latentgen import metadata
from latentgen.training import samples
from latentgen.training.samples import Sample


def test_a_line_carries_kohyas_options():
    s = samples.from_line("  a red circle, bold --N blurry, low quality --w 256 --h 192 --d 5 --l 7.5 --s 20 "
                          "--ss k_euler_a ", "here")
    assert s == Sample("a red circle, bold", "here", "blurry, low quality", 256, 192, 5, 7.5, 20, "euler_a")
    assert samples.from_line("a cat --ss dpmsolver++", "x").scheduler == "dpm++2m"  # kohya's names for ours
    assert samples.from_line("a cat --ss unipc", "x").scheduler == "unipc"  # and ours
    assert samples.from_line("a plain cat", "x") == Sample("a plain cat", "x")


def test_a_sample_fills_what_it_does_not_give_from_the_trainer_and_the_run_seed():
    s = samples.from_line("a cat --s 3 --w 32", "x")
    assert s.call(2, 10, scheduler="lcm", steps=4, guidance=1.0) == {
        "scheduler": "lcm", "steps": 3, "guidance": 1.0, "width": 32, "seed": 12}
    assert samples.from_line("a cat --d 7", "x").call(2, 10)["seed"] == 7


@pytest.mark.parametrize("line, message", [
    ("a cat --x 3", r"line 4: --x is not a sample prompt option; use --n, --w"),
    ("a cat --w", r"line 4: --w has no value; give one after it, such as '--w 512'"),
    ("a cat --w 250", r"line 4: width=250 is invalid: use a multiple of 8, such as 248"),
    ("a cat --h big", r"line 4: height='big' is invalid: give a number, such as 512"),
    ("a cat --s 0", r"line 4: sample_steps=0 is invalid: use a whole number >= 1, such as 20"),
    ("a cat --l -1", r"line 4: scale=-1.0 is invalid: use a number >= 0"),
    ("a cat --d -2", r"line 4: seed=-2 is invalid"),
    ("a cat --ss dpmsingle", r"line 4: sample_sampler='dpmsingle' is unknown; use one of: ddim, .* \(or kohya's"),
    ("--n blurry", r"line 4: '--n blurry' starts with an option; write the prompt first"),
    ("   ", r"line 4: the prompt is empty"),
])
def test_a_bad_line_is_refused_naming_it_and_the_fix(line, message):
    with pytest.raises(ValueError, match=message):
        samples.from_line(line, "line 4")


def test_the_three_file_kinds(tmp_path):
    (tmp_path / "p.txt").write_text("# sample prompts\n\na red circle --s 4\n  \na blue square --n green --d 3\n")
    assert samples.read(tmp_path / "p.txt") == [Sample("a red circle", "p.txt line 3", steps=4),
                                                Sample("a blue square", "p.txt line 5", "green", seed=3)]
    (tmp_path / "p.json").write_text(json.dumps(["a red circle --s 4", {
        "prompt": "a blue square", "negative_prompt": "green", "width": 64, "sample_steps": "6", "scale": 3}]))
    assert samples.read(tmp_path / "p.json") == [Sample("a red circle", "p.json prompt 1", steps=4),
                                                 Sample("a blue square", "p.json prompt 2", "green", 64, steps=6,
                                                        guidance=3.0)]
    (tmp_path / "p.toml").write_text('[prompt]\nsample_steps = 5\nwidth = 32\nsample_sampler = "k_lms"\n'
                                     '[[prompt.subset]]\nprompt = "a red circle"\n'
                                     '[[prompt.subset]]\nprompt = "a blue square"\nwidth = 48\nseed = 2\n')
    assert samples.read(tmp_path / "p.toml") == [
        Sample("a red circle", "p.toml prompt 1", width=32, steps=5, scheduler="lms"),
        Sample("a blue square", "p.toml prompt 2", width=48, seed=2, steps=5, scheduler="lms")]
    assert [s.prompt for s in samples.gather(["a green star --s 2"], tmp_path / "p.txt")] == [
        "a green star", "a red circle", "a blue square"]


@pytest.mark.parametrize("name, text, message", [
    ("p.yaml", "a: 1", r"sample_prompts='.*p.yaml' is not a prompt file kohya reads: give a .txt"),
    ("p.txt", None, r"sample_prompts='.*p.txt' does not exist"),
    ("p.txt", "# only a comment\n\n", r"has no prompts"),
    ("p.json", "[1, 2", r"is not valid JSON"),
    ("p.json", '{"prompt": "a cat"}', r"holds no list"),
    ("p.json", '[{"prompt": "a cat", "steps": 4}]', r"p.json prompt 1: 'steps' is not a sample prompt key"),
    ("p.json", '[3]', r"p.json prompt 1: 3 is not a prompt"),
    ("p.json", '[{"prompt": "a cat", "negative_prompt": 2}]', r"negative_prompt=2 is invalid"),
    ("p.toml", 'prompt = "a cat"', r"has no \[\[prompt.subset\]\] tables"),
    ("p.toml", '[prompt\n', r"is not valid TOML"),
    ("p.toml", '[prompt]\nwidth = 12\n[[prompt.subset]]\nprompt = "a"\n', r"p.toml prompt 1: width=12 is invalid"),
])
def test_a_bad_file_is_refused_naming_it(tmp_path, name, text, message):
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        samples.read(tmp_path / name)


def test_the_model_checks_each_sample_naming_its_line(pipe):
    samples.check(pipe, [samples.from_line("a cat --s 60", "p.txt line 2")], 0)  # 60 DDIM steps: fine
    with pytest.raises(ValueError, match=r"p.txt line 2: steps=60 is more than the 'lcm' sampler takes \(50"):
        samples.check(pipe, [samples.from_line("a cat --s 60", "p.txt line 2")], 0, scheduler="lcm")


def test_the_samples_are_drawn_with_their_settings_and_named_as_kohya_names_them(pipe, tmp_path):
    found = [samples.from_line("a red circle --s 2 --d 9 --w 32 --h 48 --ss euler_a", "a"),
             samples.from_line("a blue square --n green --l 3 --s 3", "b")]
    grid = samples.draw(pipe, found, tmp_path, 20, 100, "purple", steps=4)
    files = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert files == ["purple_000020_00_9.png", "purple_000020_01_101.png", "step-0000020.png"]
    first, second = (tmp_path / "samples" / f for f in files[:2])
    assert Image.open(first).size == (32, 48) and Image.open(second).size == (pipe.defaults.width, pipe.defaults.height)
    text = metadata.read_parameters(first)
    assert "Steps: 2" in text and "Seed: 9" in text and "Sampler: Euler a" in text and "Size: 32x48" in text
    text = metadata.read_parameters(second)
    assert text.startswith("a blue square\nNegative prompt: green\n") and "Steps: 3" in text and "CFG scale: 3" in text
    # the file is the image generate draws for that line
    want = pipe.generate("a red circle", steps=2, seed=9, width=32, height=48, scheduler="euler_a")[0]
    assert Image.open(first).tobytes() == want.tobytes()
    w, h = Image.open(grid).size  # two cells of the larger image's size, side by side
    assert w > 2 * 2 * max(32, pipe.defaults.width) and h > 2 * max(48, pipe.defaults.height)
