"""latentgen.serve.prompt_file: A1111's "Prompts from file or textbox" through the webuiapi client. Every line is a
request of its own (its prompt beside the request's, its options over the request's fields, its model of the
catalog), the seeds iterate as A1111's, the images are the Python API's, and a bad line is refused by number before
anything is drawn."""

import pytest

pytest.importorskip("fastapi", reason="latentgen serve needs the [serve] extra")
webuiapi = pytest.importorskip("webuiapi", reason="the A1111 client (the [dev] extra)")

from conftest import photo  # noqa: E402
from serving import Served, max_diff  # noqa: E402

import latentgen  # noqa: E402
from latentgen.serve import ServeConfig  # noqa: E402

SCRIPT = "Prompts from file or textbox"


@pytest.fixture(scope="module")
def api(tiny_folder, tiny_other, tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    (models / "other").symlink_to(tiny_other, target_is_directory=True)
    s = Served(ServeConfig(model=str(tiny_folder), models_dir=models))
    api = webuiapi.WebUIApi(host="127.0.0.1", port=s.port)
    yield api
    s.stop()


def test_every_line_is_a_request_of_its_own(api, tiny_folder, tiny_other):
    text = "a red circle\n\n--prompt a blue square --negative_prompt dark --steps 3 --cfg_scale 4 --seed 9\n" \
           "--prompt a cat --sd_model other --n_iter 2\n"
    r = api.txt2img(prompt="flat", seed=5, steps=2, cfg_scale=5, width=64, height=64, sampler_name="Euler",
                    script_name=SCRIPT, script_args=[True, False, "end", text, True])
    pipe, other, kw = latentgen.load(tiny_folder), latentgen.load(tiny_other), dict(width=64, height=64, scheduler="euler")
    want = [*pipe.generate("flat a red circle", seed=5, steps=2, guidance=5, **kw),  # seed 5, then 5 + 1 per line
            *pipe.generate("flat a blue square", negative_prompt="dark", seed=9, steps=3, guidance=4, **kw),  # its own
            *other.generate("flat a cat", seed=7, steps=2, guidance=5, num_images=2, **kw)]  # its model, 2 images
    assert len(r.images) == 5 and max(max_diff(a, b) for a, b in zip(r.images[1:], want)) <= 1
    assert r.images[0].size == (128, 128)  # make_combined: every image first, 2 x 2
    assert r.info["all_seeds"] == [5, 9, 7, 8] and r.info["all_prompts"][1:] == ["flat a red circle",
                                                                              "flat a blue square", *["flat a cat"] * 2]
    assert r.info["all_prompts"][0] == text and r.info["infotexts"][0] == "\n".join(r.info["infotexts"][1:])
    assert "Model: other" in r.info["infotexts"][3] and api.get_options()["sd_model_checkpoint"] != "other"
    start = api.txt2img(prompt="flat", seed=5, steps=2, width=64, height=64, sampler_name="Euler",
                        script_name=SCRIPT, script_args=[False, False, "a red circle\na cat"])  # A1111 1.0-1.5's args
    assert start.info["all_prompts"] == ["a red circle", "a cat"] and start.info["all_seeds"] == [5, 5]  # replaced
    assert r.info["index_of_first_image"] == 1 and start.info["index_of_first_image"] == 0


def test_img2img_lines(api, tiny_folder):
    r = api.img2img(images=[photo()], prompt="", seed=3, steps=2, denoising_strength=0.5, width=64, height=64,
                    sampler_name="Euler", script_name=SCRIPT, script_args=[False, False, "start", "a cat\na dog"])
    pipe = latentgen.load(tiny_folder)
    want = [pipe.img2img(p, photo(), seed=3, steps=2, strength=0.5, scheduler="euler")[0] for p in ("a cat", "a dog")]
    assert len(r.images) == 2 and max(max_diff(a, b) for a, b in zip(r.images, want)) <= 1


@pytest.mark.parametrize("args, status, match", [
    ([False, False, "start", "a cat\n\n--prompt a dog --steps x"], 422, "line 3: --steps 'x' is not a whole number"),
    ([False, False, "end", "a cat\n\n--prompt a dog --sd_model nowhere"], 404, "line 3: .*model 'nowhere' not found"),
    ([False, False, "start", "--prompt a dog --sampler_index 3"], 422, "--sampler_index is not taken"),
    ([False, False, "start", "--prompt a dog --sd_model nowhere"], 404, "line 1: .*model 'nowhere' not found"),
    ([False, False, "start", "--prompt a dog --sampler_name Nope"], 404, "line 1: .*Nope"),
    ([False, False, "start", "--n_iter 6\n--n_iter 6\n--n_iter 6"], 422, "3 lines .* make 18 images; at most 16"),
    ([False, False, "middle", "a dog"], 422, "prompt_position.*'start' or 'end'"),
    ([False, False, "start", " \n "], 422, "holds no lines"),
])
def test_a_bad_line_is_refused_by_number_before_drawing(api, args, status, match):
    import re

    import requests

    body = {"prompt": "x", "steps": 2, "script_name": SCRIPT, "script_args": args}
    r = requests.post(api.baseurl + "/txt2img", json=body, timeout=60)
    assert r.status_code == status and re.search(match, r.json()["detail"]), r.text
    assert requests.get(api.baseurl + "/progress", timeout=10).json()["state"]["job_count"] == 0  # nothing queued
