"""latentgen.text.lines: A1111's "Prompts from file or textbox" lines. A plain line is a prompt; a line of options is
read as A1111 reads it (a prompt runs to the next option, quotes hold words together, "true" is the only true);
a line of options that cannot be read is refused naming the line and the option; ``job`` gives generate's names."""

import pytest

from latentgen.text import lines


def test_options_are_read_as_a1111_reads_them():
    f = lines.fields('--prompt "a cat" on a mat --negative_prompt blurry, dark --steps 20 --cfg_scale 7.5 --seed 5 '
                     '--tiling true --restore_faces yes --sampler_name "DPM++ 2M"')
    assert f == {"prompt": "a cat on a mat", "negative_prompt": "blurry, dark", "steps": 20, "cfg_scale": 7.5,
                 "seed": 5, "tiling": True, "restore_faces": False, "sampler_name": "DPM++ 2M"}
    assert lines.fields("  a cat -- on a mat  ") == {"prompt": "a cat -- on a mat"}  # a prompt: not options
    assert lines.read("a cat\n\n   \n--prompt a dog --steps 3\n") == [(1, {"prompt": "a cat"}),
                                                                      (4, {"prompt": "a dog", "steps": 3})]


@pytest.mark.parametrize("line, match", [
    ("--steps", "f:2: --steps has no value"),
    ("--steps 20 --seed", "--seed has no value"),
    ("--steps twenty", "--steps 'twenty' is not a whole number"),
    ("--cfg_scale high", "--cfg_scale 'high' is not a number"),
    ("--stpes 20", "--stpes is not an option of A1111's prompt lines; write '--name value' pairs of --prompt"),
    ("--prompt a -- b", "'--' is not an option"),
    ("--sampler_index 2", "--sampler_index is not taken: an index into A1111's own sampler list"),
    ("--outpath_samples /tmp", "--outpath_samples is not taken: output folders"),
    ('--prompt "a cat', "No closing quotation"),
])
def test_a_line_of_options_that_cannot_be_read_is_refused(line, match):
    with pytest.raises(ValueError, match=match):
        lines.fields(line, "f:2")


def test_a_job_has_generates_names():
    args, n = lines.job(lines.fields('--prompt a cat --cfg_scale 4 --sampler_name "Euler a" --subseed 3 '
                                     '--subseed_strength 0.2 --seed_resize_from_w 32 --seed_resize_from_h 48 '
                                     '--n_iter 2 --batch_size 3 --width 64 --tiling true'))
    assert n == 6 and args == {"prompt": "a cat", "guidance": 4.0, "scheduler": "euler_a", "width": 64, "tiling": True,
                               "variation": {"seed": 3, "strength": 0.2, "resize_from": [32, 48]}}
    for line, match in [("--prompt a --sd_model x", "--sd_model is not taken by latentgen batch: give the model with"),
                        ("--prompt a --styles s", "--styles is not taken"), ("--prompt a --restore_faces true",
                                                                           "no face restoration"),
                        ("--prompt a --sampler_name Nope", "--sampler_name: sampler 'Nope' is unknown"),
                        ("--prompt a --n_iter 0", "counts of images: use 1 or more"),
                        ("--negative_prompt a --steps 3", "p.txt:1: a line of options needs its --prompt")]:
        with pytest.raises(ValueError, match=match):
            lines.job(lines.fields(line), "p.txt:1")
