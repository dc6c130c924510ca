"""latentgen serve through a real A1111 client: PyPI's ``webuiapi`` against uvicorn on 127.0.0.1.

Every image the server returns equals latentgen's Python API output for the same settings (within
1/255; in fact bit for bit), with the seed and size in ``info``; the list endpoints, options (model
switching), png-info, LoRA tags, clip skip, --outdir, the queue bound (429) and the job timeout (504)."""

import json
import os

import pytest
import requests

pytest.importorskip("fastapi", reason="latentgen serve needs the [serve] extra: pip install 'latentgen[serve]'")
webuiapi = pytest.importorskip("webuiapi", reason="the A1111 client: pip install webuiapi (in the [dev] extra)")

from serving import Served, green, max_diff, reference, square_mask  # noqa: E402

from latentgen.serve import RequestLimits, ServeConfig  # noqa: E402
from latentgen.serve.codec import decode_image  # noqa: E402

PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def served(tiny_folder, tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    os.symlink(tiny_folder, models / "tiny")
    outdir = tmp_path_factory.mktemp("outputs")
    (outdir / "txt2img-images").mkdir()
    (outdir / "txt2img-images" / "00000-1.png").write_bytes(b"not mine to overwrite")
    import torch
    from safetensors.torch import save_file

    save_file({"emb_params": torch.randn(2, 64, generator=torch.Generator().manual_seed(0))},
              str(outdir.parent / "shiny.safetensors"))  # a textual inversion for the embedded model's CLIP
    styles = outdir.parent / "styles.csv"  # A1111's, as its page saves it: a byte order mark, quoted fields
    styles.write_text('\ufeffname,prompt,negative_prompt\n"on blue","{prompt} on a blue background","blurry"\n'
                      'clean,flat colors,\n', encoding="utf-8")
    s = Served(ServeConfig(models_dir=models, outdir=outdir, embeddings=[str(outdir.parent / "shiny.safetensors")],
                           limits=RequestLimits(queue_size=3), styles_file=styles))
    s.outdir, s.models, s.styles = outdir, models, styles
    yield s
    s.stop()


@pytest.fixture(scope="module")
def api(served):
    return webuiapi.WebUIApi(host="127.0.0.1", port=served.port)


@pytest.fixture(scope="module")
def ref():
    return reference()


@pytest.mark.parametrize("sampler, scheduler, key", [("Euler a", "automatic", "euler_a"),
                                                     ("DPM++ 2M", "karras", "dpm++2m_karras")])
def test_txt2img_equals_the_python_api(api, ref, sampler, scheduler, key):
    r = api.txt2img(prompt=PROMPT, negative_prompt="green", seed=7, steps=5, cfg_scale=5.5, sampler_name=sampler,
                    scheduler=scheduler, width=96, height=64, batch_size=1, n_iter=2)
    want = ref.generate(PROMPT, negative_prompt="green", seed=7, steps=5, guidance=5.5, scheduler=key,
                        width=96, height=64, num_images=2)
    assert [im.size for im in r.images] == [(96, 64)] * 2
    assert max(max_diff(a, b) for a, b in zip(r.images, want)) <= 1
    assert (r.info["seed"], r.info["all_seeds"], r.info["width"], r.info["height"]) == (7, [7, 8], 96, 64)
    assert r.info["infotexts"] == [im.info["parameters"] for im in want]
    assert [im.info["parameters"] for im in r.images] == r.info["infotexts"]  # PNGs keep their parameters
    assert "Seed: 8, Size: 96x64" in r.info["infotexts"][1]
    assert r.parameters["prompt"] == PROMPT and r.parameters["steps"] == 5  # the request, echoed


def test_prompt_editing_alternation_and_and_equal_the_python_api(api, ref):
    prompt, negative = "a [red:yellow:0.5] circle on a [blue|green] background AND a star :0.7", "[dark::2]"
    r = api.txt2img(prompt=prompt, negative_prompt=negative, seed=3, steps=6, cfg_scale=5, width=64, height=64,
                    sampler_name="Euler a")
    want = ref.generate(prompt, negative_prompt=negative, seed=3, steps=6, guidance=5, scheduler="euler_a")
    assert max_diff(r.images[0], want[0]) <= 1
    plain = ref.generate("a red circle on a blue background", negative_prompt="dark", seed=3, steps=6, guidance=5,
                         scheduler="euler_a")
    assert max_diff(r.images[0], plain[0]) > 1 and r.info["infotexts"][0].startswith(prompt + "\n")


def test_variation_seeds_equal_the_python_api(api, ref):
    from latentgen import Variation

    r = api.txt2img(prompt=PROMPT, seed=5, subseed=11, subseed_strength=0.4, seed_resize_from_w=48,
                    seed_resize_from_h=64, steps=4, cfg_scale=5, width=64, height=64, batch_size=2,
                    sampler_name="Euler a")
    want = ref.generate(PROMPT, seed=5, steps=4, guidance=5, num_images=2, scheduler="euler_a",
                        variation=Variation(11, 0.4, (48, 64)))
    assert max(max_diff(a, b) for a, b in zip(r.images, want)) <= 1
    assert (r.info["subseed"], r.info["all_subseeds"], r.info["subseed_strength"]) == (11, [11, 12], 0.4)
    assert (r.info["seed_resize_from_w"], r.info["seed_resize_from_h"]) == (48, 64)
    assert "Variation seed: 12, Variation seed strength: 0.4, Seed resize from: 48x64" in r.info["infotexts"][1]
    r = requests.post(api.baseurl + "/txt2img", json={"prompt": "x", "subseed_strength": 2, "steps": 1})
    assert r.status_code == 422 and "subseed_strength=2" in r.json()["detail"]


def test_tiling_equals_the_python_api(api, ref):
    r = api.txt2img(prompt=PROMPT, seed=5, steps=4, cfg_scale=5, width=64, height=64, sampler_name="Euler a",
                    tiling=True)
    want = ref.generate(PROMPT, seed=5, steps=4, guidance=5, scheduler="euler_a", tiling=True)
    assert max_diff(r.images[0], want[0]) <= 1 and "Tiling: True" in r.info["infotexts"][0]
    r = api.img2img(images=[r.images[0]], prompt=PROMPT, seed=6, steps=4, cfg_scale=5, denoising_strength=0.5,
                    width=64, height=64, sampler_name="Euler a", tiling=True)
    want = ref.img2img(PROMPT, want[0], seed=6, steps=4, guidance=5, strength=0.5, scheduler="euler_a", tiling=True)
    assert max_diff(r.images[0], want[0]) <= 1 and "Tiling: True" in r.info["infotexts"][0]


def test_prompt_styles_of_the_styles_file_equal_the_python_api(api, served, ref):
    assert api.get_prompt_styles() == [{"name": "on blue", "prompt": "{prompt} on a blue background",
                                        "negative_prompt": "blurry"},
                                       {"name": "clean", "prompt": "flat colors", "negative_prompt": ""}]
    r = api.txt2img(prompt="a red circle", styles=["on blue", "clean"], seed=4, steps=4, cfg_scale=5, width=64,
                    height=64, sampler_name="Euler a")
    merged = "a red circle on a blue background, flat colors"  # each style in turn: {prompt} filled, or appended
    want = ref.generate(merged, negative_prompt="blurry", seed=4, steps=4, guidance=5, scheduler="euler_a")
    assert max_diff(r.images[0], want[0]) <= 1 and r.info["infotexts"][0] == want[0].info["parameters"]
    assert r.info["styles"] == ["on blue", "clean"] and r.parameters["prompt"] == "a red circle"  # echoed as sent
    from latentgen.plot.values import A1111_TXT2IMG

    sr = A1111_TXT2IMG.index("Prompt S/R")  # the X/Y/Z plot replaces in the prompts as written, then styles each cell
    plot = dict(prompt="a red circle", styles=["on blue"], seed=4, steps=2, cfg_scale=5, width=64, height=64,
                sampler_name="Euler a", script_name="X/Y/Z plot")
    r = api.txt2img(**plot, script_args=[sr, "circle, square", [], 0, "", [], 0, "", [], True, True])
    want = ref.generate("a red square on a blue background", negative_prompt="blurry", seed=4, steps=2, guidance=5,
                        scheduler="euler_a")
    assert len(r.images) == 3 and max_diff(r.images[2], want[0]) <= 1  # the grid, then the cells
    args = [sr, "blue, green", [], 0, "", [], 0, "", []]  # "blue" is the style's, not the prompt's
    bad = requests.post(api.baseurl + "/txt2img", json={**plot, "script_args": args})
    assert bad.status_code == 422 and "Prompt S/R did not find 'blue'" in bad.json()["detail"], bad.text
    bad = requests.post(api.baseurl + "/txt2img", json={"prompt": "x", "styles": ["nope"], "steps": 1})
    assert bad.status_code == 422 and "no style 'nope'; the styles are 'on blue', 'clean'" in bad.json()["detail"]
    for body, message in [({"styles": ["clean"] * 33}, "styles names 33 styles; at most 32"),
                          ({"prompt": "x" * 19_990, "styles": ["clean"]}, "over 20000 characters")]:
        bad = requests.post(api.baseurl + "/txt2img", json={"prompt": "x", "steps": 1, **body})
        assert bad.status_code == 422 and message in bad.json()["detail"], bad.text
    served.styles.write_text("name,prompt,negative_prompt\nwarm,{prompt} in orange light,\n")
    assert [s["name"] for s in api.get_prompt_styles()] == ["warm"]  # the file is read again when it changes
    served.styles.unlink()  # gone (or half written): the styles read before stay
    assert [s["name"] for s in api.get_prompt_styles()] == ["warm"]


def test_an_infotext_fills_the_fields_the_request_leaves_out(served):
    """A1111's infotext field (1.9+): a picture's parameters text redraws the picture (hires fix, variation seed,
    tiling and clip skip included); a field the request sends wins; a value of the wrong kind is a 422 naming it."""
    first = requests.post(served.url + "/sdapi/v1/txt2img", json=dict(
        prompt=PROMPT, negative_prompt="green", seed=5, steps=4, cfg_scale=5, width=64, height=64, sampler_name="Euler",
        subseed=9, subseed_strength=0.3, enable_hr=True, hr_scale=1.5, hr_upscaler="Lanczos", denoising_strength=0.5,
        hr_second_pass_steps=2, tiling=True, override_settings={"CLIP_stop_at_last_layers": 2})).json()
    text = json.loads(first["info"])["infotexts"][0]
    assert all(f in text for f in ("Variation seed: 9", "Clip skip: 2", "Tiling: True", "Hires upscaler: Lanczos"))
    again = requests.post(served.url + "/sdapi/v1/txt2img", json={"infotext": text}).json()
    assert json.loads(again["info"])["infotexts"][0] == text and again["images"] == first["images"]
    other = requests.post(served.url + "/sdapi/v1/txt2img", json={"infotext": text, "seed": 6}).json()
    assert "Seed: 6," in json.loads(other["info"])["infotexts"][0] and other["images"] != first["images"]
    bad = requests.post(served.url + "/sdapi/v1/txt2img", json={"infotext": text.replace("Steps: 4", "Steps: four")})
    assert bad.status_code == 422 and "infotext: Steps='four' is not a whole number" in bad.text, bad.text
    bad = requests.post(served.url + "/sdapi/v1/txt2img", json={"infotext": text.replace("Euler", "Euler z")})
    assert bad.status_code == 422 and "infotext: Sampler='Euler z'" in bad.text and "sampler_name" in bad.text
    plain = requests.post(served.url + "/sdapi/v1/txt2img", json=dict(prompt=PROMPT, seed=5, steps=2, width=64,
                                                                       height=64)).json()
    plain_text = json.loads(plain["info"])["infotexts"][0]
    assert "Clip skip" not in plain_text and "Model: default" in plain_text
    requests.post(served.url + "/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).raise_for_status()
    try:  # no "Clip skip" in the text is clip skip 1 (A1111's reading), whatever the option; "Model" switches nothing
        redrawn = requests.post(served.url + "/sdapi/v1/txt2img", json={
            "infotext": plain_text.replace("Model: default", "Model: tiny")}).json()
        assert redrawn["images"] == plain["images"]
    finally:
        requests.post(served.url + "/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1}).raise_for_status()


def test_xyz_plot_equals_the_python_api(api, ref):
    from latentgen.plot import xyz

    args = [4, "2,3", [], 6, "4, 6.5", [], 0, "", [], True, True, False, False, False, False, False, 0, False]
    r = api.txt2img(prompt=PROMPT, seed=3, steps=2, cfg_scale=5, width=64, height=64, sampler_name="Euler a",
                    script_name="X/Y/Z plot", script_args=args)
    want = xyz.plot(ref, PROMPT, [xyz.axis("Steps", "2,3"), xyz.axis("CFG Scale", "4, 6.5")], seed=3, steps=2,
                    guidance=5, width=64, height=64, scheduler="euler_a")
    assert len(r.images) == 1 + 4 and r.images[0].size == want.grid.size  # the grid, then the cells (lone images)
    assert max_diff(r.images[0], want.grid) <= 1 and max(max_diff(a, b) for a, b in zip(r.images[1:], want.cells)) <= 1
    with pytest.raises(RuntimeError, match="is not one latentgen plots"):
        api.txt2img(prompt="x", steps=2, script_name="X/Y/Z plot", script_args=[38, "a, b"] + args[2:])  # Refiner checkpoint


def test_prompt_matrix_equals_the_python_api(api, served, ref):
    """A1111's "Prompt matrix" script ([put_at_start, different_seeds, prompt_type, variations_delimiter,
    margin_size]): the grid, then every cell, each styled after its combination; the cells' prompts and seeds in the
    info; a matrix past --max-images, or a bad prompt type, is a 422 before anything is drawn."""
    from latentgen.plot import matrix
    from latentgen.text import styles

    served.styles.write_text('name,prompt,negative_prompt\n"on blue","{prompt} on a blue background","blurry"\n'
                             'clean,flat colors,\n')
    kw = dict(seed=3, steps=2, cfg_scale=5, width=64, height=64, sampler_name="Euler a", styles=["clean"])
    r = api.txt2img(prompt="a circle|red|large", script_name="Prompt matrix", script_args=[True, True, "positive",
                                                                                          "space", 2.0], **kw)
    table = styles.read(served.styles)
    want = matrix.matrix(ref, "a circle|red|large", at_start=True, different_seeds=True, joiner="space", margin=2,
                         style=lambda p, n: styles.apply(p, n, ["clean"], table, "styles"), seed=3, steps=2,
                         guidance=5, width=64, height=64, scheduler="euler_a")
    assert len(r.images) == 1 + 4 and max_diff(r.images[0], want.grid) <= 1
    assert max(max_diff(a, b) for a, b in zip(r.images[1:], want.cells)) <= 1
    assert r.info["all_prompts"] == [f"{p}, flat colors" for p in ("a circle", "red a circle", "large a circle",
                                                                   "red large a circle")]  # styled, as A1111's
    assert r.info["all_seeds"] == [3, 4, 5, 6] and r.info["index_of_first_image"] == 1
    assert r.info["infotexts"][0] == r.info["infotexts"][1] and "red large a circle, flat colors" in r.info["infotexts"][4]
    for args, match in [([False, False, "sideways"], "422.*prompt type.*sideways.*positive.*or.*negative"),
                        ([False, False, "negative"], "422.*has no .*\\|"), ([], "422.*has 32 images; at most 16")]:
        with pytest.raises(RuntimeError, match=match):
            api.txt2img(prompt="x|a|b|c|d|e", script_name="Prompt matrix", script_args=args, steps=2)


def test_img2img_plots_and_matrices_redraw_the_picture(api, ref):
    """On img2img, A1111's X/Y/Z plot (by its img2img axis indices: Denoising is 25, its strength) and prompt matrix
    draw from the first init image, and inpaint with a mask; each equals the Python API's plot of those calls."""
    from latentgen.plot import matrix, xyz

    start = ref.generate(PROMPT, seed=1, steps=4)[0]
    kw = dict(seed=3, steps=3, cfg_scale=5, width=64, height=64, sampler_name="Euler a")
    r = api.img2img(images=[start], prompt=PROMPT, denoising_strength=0.6, script_name="X/Y/Z plot",
                    script_args=[25, "0.4, 0.8", [], 4, "2, 3", [], 0, "", [], True, True], **kw)
    want = xyz.plot(ref, PROMPT, [xyz.axis("Denoising", "0.4, 0.8"), xyz.axis("Steps", "2, 3")], image=start,
                    strength=0.6, seed=3, steps=3, guidance=5, width=64, height=64, scheduler="euler_a")
    assert len(r.images) == 1 + 4 and max_diff(r.images[0], want.grid) <= 1
    assert max(max_diff(a, b) for a, b in zip(r.images[1:], want.cells)) <= 1
    assert "Denoising strength: 0.8" in r.info["infotexts"][2]
    r = api.img2img(images=[green()], mask_image=square_mask(), inpainting_fill=1, mask_blur=2, inpaint_full_res=False,
                    prompt="a square|red", denoising_strength=0.9, script_name="Prompt matrix",
                    script_args=[False, False], **kw)
    want = matrix.matrix(ref, "a square|red", image=green(), mask=square_mask(), fill="original", mask_blur=2,
                         strength=0.9, seed=3, steps=3, guidance=5, scheduler="euler_a")
    assert len(r.images) == 1 + 2 and max(max_diff(a, b) for a, b in zip(r.images, [want.grid, *want.cells])) <= 1
    assert r.info["all_prompts"] == ["a square", "a square, red"]
    with pytest.raises(RuntimeError, match="422.*axis .*Hires steps.* is a txt2img axis: img2img has no hires pass"):
        api.img2img(images=[start], prompt="x", steps=2, script_name="X/Y/Z plot", script_args=["Hires steps", "2", []])


def test_xyz_styles_prompt_order_and_schedule_type_equal_the_python_api(api, served, ref):
    """A1111's Styles (index 31: names of --styles-file, after the request's styles), Prompt order (8) and Schedule
    type (17) axes; a style the file has not is a 422 before anything is drawn."""
    from latentgen.plot import xyz
    from latentgen.text import styles

    served.styles.write_text('name,prompt,negative_prompt\n"on blue","{prompt} on a blue background","blurry"\n'
                             'clean,flat colors,\n')  # as the fixture wrote it (another test rewrites the file)
    args = [31, "on blue, clean", [], 8, "red, circle", [], 17, "Automatic, Karras", [], True, True]
    r = api.txt2img(prompt="a red circle", seed=3, steps=2, cfg_scale=5, width=64, height=64, sampler_name="DPM++ 2M",
                    script_name="X/Y/Z plot", script_args=args)
    axes = [xyz.axis("Styles", "on blue, clean"), xyz.axis("Prompt order", "red, circle"),
            xyz.axis("Schedule type", "Automatic, Karras")]
    want = xyz.plot(ref, "a red circle", axes, styles=styles.read(served.styles), seed=3, steps=2, guidance=5,
                    width=64, height=64, scheduler="dpm++2m")
    assert len(r.images) == 1 + 8 and max_diff(r.images[0], want.grid) <= 1
    assert max(max_diff(a, b) for a, b in zip(r.images[1:], want.cells)) <= 1
    assert r.info["infotexts"][0].startswith("a red circle on a blue background\nNegative prompt: blurry\n")
    assert "circle red, flat colors" in r.info["infotexts"][4] and "DPM++ 2M Karras" in r.info["infotexts"][5]
    with pytest.raises(RuntimeError, match=r"X/Y/Z plot, Styles: no style .*shiny.*--styles-file"):
        api.txt2img(prompt="x", steps=2, script_name="X/Y/Z plot", script_args=[31, "clean, shiny", []])


def test_xyz_plots_checkpoints_of_the_catalog(api, ref, tiny_folder):
    """The X/Y/Z plot's "Checkpoint name" axis (A1111's index 11): each cell drawn by that model of the catalog,
    named in its label and its PNG; a name the catalog has not is a 404 before anything is drawn."""
    import latentgen

    args = [11, "default, tiny", [], 0, "", [], 0, "", [], True, True]
    r = api.txt2img(prompt=PROMPT, seed=3, steps=2, cfg_scale=5, width=64, height=64, sampler_name="Euler a",
                    script_name="X/Y/Z plot", script_args=args)
    kw = dict(seed=3, steps=2, guidance=5, width=64, height=64, scheduler="euler_a")
    assert len(r.images) == 3 and max_diff(r.images[1], ref.generate(PROMPT, **kw)[0]) <= 1
    assert max_diff(r.images[2], latentgen.load(tiny_folder).generate(PROMPT, **kw)[0]) <= 1
    assert "Model: tiny" in r.images[2].info["parameters"] and "Model: default" in r.images[1].info["parameters"]
    with pytest.raises(RuntimeError, match=r"404.*model .*nowhere.* not found"):
        api.txt2img(prompt="x", steps=2, script_name="X/Y/Z plot", script_args=[11, "default, nowhere"] + args[2:])


def test_random_seed_is_reported_and_batches_draw_seed_plus_i(api, ref):
    r = api.txt2img(prompt=PROMPT, seed=-1, steps=2, cfg_scale=4, width=64, height=64, batch_size=2)
    seed = r.info["seed"]
    assert 0 <= seed < 2**32 and r.info["all_seeds"] == [seed, seed + 1]
    want = ref.generate(PROMPT, seed=seed, steps=2, guidance=4, num_images=2, scheduler="euler_a")
    assert max(max_diff(a, b) for a, b in zip(r.images, want)) <= 1


def test_img2img_equals_the_python_api(api, ref):
    start = ref.generate(PROMPT, seed=1, steps=4)[0]
    r = api.img2img(images=[start], prompt="a yellow circle on a blue background", seed=3, steps=6,
                    cfg_scale=4, denoising_strength=0.6, width=64, height=64, sampler_name="Euler a")
    want = ref.img2img("a yellow circle on a blue background", start, strength=0.6, seed=3, steps=6, guidance=4,
                       scheduler="euler_a")
    assert max_diff(r.images[0], want[0]) <= 1
    assert (r.info["seed"], r.info["denoising_strength"], r.info["width"]) == (3, 0.6, 64)
    assert r.parameters["init_images"] is None  # not echoed back unless include_init_images


@pytest.mark.parametrize("full_res", [False, True])
def test_inpainting_with_a_mask_equals_the_python_api(api, ref, full_res):
    prompt = "a red square on a green background"
    r = api.img2img(images=[green()], mask_image=square_mask(), inpainting_fill=1, inpaint_full_res=full_res,
                    inpaint_full_res_padding=8, mask_blur=2, prompt=prompt, seed=2, steps=6, cfg_scale=4,
                    denoising_strength=1.0, width=64, height=64, sampler_name="Euler a")
    want = ref.inpaint(prompt, green(), square_mask(), strength=1.0, mask_blur=2, only_masked=full_res, padding=8,
                       seed=2, steps=6, guidance=4, scheduler="euler_a")
    assert max_diff(r.images[0], want[0]) <= 1
    outside = [(0, 0), (63, 63), (10, 50), (50, 10)]
    assert all(r.images[0].convert("RGB").getpixel(p) == green().getpixel(p) for p in outside)


def test_inverted_mask_repaints_the_outside(api, ref):
    prompt = "a red square on a green background"
    r = api.img2img(images=[green()], mask_image=square_mask(), inpainting_mask_invert=1, inpainting_fill=1,
                    inpaint_full_res=False, mask_blur=0, prompt=prompt, seed=2, steps=3, denoising_strength=1.0,
                    width=64, height=64, sampler_name="Euler a")
    from PIL import ImageOps
    want = ref.inpaint(prompt, green(), ImageOps.invert(square_mask()), strength=1.0, mask_blur=0, seed=2, steps=3,
                       guidance=7.0, scheduler="euler_a")  # webuiapi sends cfg_scale=7.0 by default
    assert max_diff(r.images[0], want[0]) <= 1


@pytest.mark.parametrize("fill, name", [(0, "fill"), (2, "latent noise"), (3, "latent nothing")])
def test_every_masked_content_mode_equals_the_python_api(api, ref, fill, name):
    prompt = "a red square on a green background"
    r = api.img2img(images=[green()], mask_image=square_mask(), inpainting_fill=fill, inpaint_full_res=False,
                    mask_blur=2, prompt=prompt, seed=2, steps=6, cfg_scale=4, denoising_strength=0.6, width=64,
                    height=64, sampler_name="Euler a")
    want = ref.inpaint(prompt, green(), square_mask(), fill=name, strength=0.6, mask_blur=2, seed=2, steps=6,
                       guidance=4, scheduler="euler_a")
    assert max_diff(r.images[0], want[0]) <= 1


def test_hires_fix_equals_the_python_api(api, ref):
    from latentgen import Hires

    r = api.txt2img(prompt=PROMPT, seed=3, steps=4, cfg_scale=5, width=64, height=64, sampler_name="Euler a",
                    enable_hr=True, hr_scale=1.5, hr_upscaler="Latent (bicubic)", denoising_strength=0.5,
                    hr_second_pass_steps=3)
    want = ref.generate(PROMPT, seed=3, steps=4, guidance=5, width=64, height=64, scheduler="euler_a",
                        hires=Hires(scale=1.5, upscaler="Latent (bicubic)", strength=0.5, steps=3))
    assert r.images[0].size == (96, 96) and max_diff(r.images[0], want[0]) <= 1
    assert "Hires upscale: 1.5, Hires steps: 3, Hires upscaler: Latent (bicubic)" in r.info["infotexts"][0]
    with pytest.raises(RuntimeError, match=r"the hires pass draws 2048x2048, above --max-pixels"):
        api.txt2img(prompt="x", enable_hr=True, hr_resize_x=2048, hr_resize_y=2048, steps=2)  # from the default size
    with pytest.raises(RuntimeError, match=r"hr_upscaler=.*4x-UltraSharp.* is not an upscaler here"):
        api.txt2img(prompt="x", enable_hr=True, hr_upscaler="4x-UltraSharp", steps=2, width=64, height=64)


@pytest.mark.parametrize("mode, name", [(1, "crop and resize"), (2, "resize and fill"), (3, "latent upscale")])
def test_resize_modes_equal_the_python_api(api, ref, mode, name):
    start = ref.generate(PROMPT, seed=1, steps=4, width=96, height=64)[0]
    r = api.img2img(images=[start], prompt=PROMPT, seed=3, steps=4, cfg_scale=4, denoising_strength=0.6, width=64,
                    height=64, resize_mode=mode, sampler_name="Euler a")
    want = ref.img2img(PROMPT, start, width=64, height=64, resize_mode=name, strength=0.6, seed=3, steps=4,
                       guidance=4, scheduler="euler_a")
    assert r.images[0].size == (64, 64) and max_diff(r.images[0], want[0]) <= 1


def test_poor_mans_outpainting_equals_the_python_api(api, ref):
    r = api.img2img(images=[green()], prompt=PROMPT, seed=3, steps=4, cfg_scale=4, denoising_strength=0.8,
                    width=64, height=64, sampler_name="Euler a", script_name="Poor man's outpainting",
                    script_args=[16, 2, 0, ["left", "down"]])
    want = ref.outpaint(PROMPT, green(), left=16, bottom=16, mask_blur=2, fill="fill", strength=0.8, seed=3, steps=4,
                        guidance=4, scheduler="euler_a")
    assert r.images[0].size == (80, 80) and max_diff(r.images[0], want[0]) <= 1
    assert "poor man's outpainting" in requests.get(api.baseurl + "/scripts").json()["img2img"]
    with pytest.raises(RuntimeError, match="is not a script this server runs"):
        api.img2img(images=[green()], prompt="x", steps=2, script_name="Outpainting mk2", width=64, height=64)


def test_list_endpoints(api, served):
    samplers = {s["name"]: s for s in api.get_samplers()}
    assert {"Euler a", "DPM++ 2M Karras", "DDIM"} <= set(samplers)
    assert samplers["Euler a"]["aliases"] == ["euler_a"]
    assert [m["title"] for m in api.get_sd_models()] == ["default", "tiny"]
    assert [lo["name"] for lo in api.get_loras()] == ["lcm", "purple", "star"]  # the shipped ones
    assert api.get_loras()[1]["path"] == "purple.safetensors"
    assert api.get_embeddings() == {"loaded": {"shiny": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                                         "shape": 64, "vectors": 2}}, "skipped": {}}
    assert [s["name"] for s in api.get_schedulers()] == ["automatic", "karras"]
    assert api.get_scripts() == {"txt2img": ["x/y/z plot", "prompt matrix", "prompts from file or textbox"],
                                 "img2img": ["x/y/z plot", "prompt matrix", "poor man's outpainting", "sd upscale",
                                             "loopback", "prompts from file or textbox"]}
    options = api.get_options()
    assert options["sd_model_checkpoint"] == "default" and options["CLIP_stop_at_last_layers"] == 1
    progress = api.get_progress()
    assert progress["progress"] == 0 and progress["state"]["job_count"] == 0


def test_options_switch_the_model_between_jobs(api, served):
    api.set_options({"sd_model_checkpoint": "tiny"})
    try:
        assert api.util_get_current_model() == "tiny"
        skipped = api.get_embeddings()["skipped"]  # made for the embedded model's CLIP (64), not tiny's (32)
        assert list(skipped) == ["shiny"] and skipped["shiny"]["shape"] == 64 and "width" in skipped["shiny"]["reason"]
        r = api.txt2img(prompt="a cat", seed=1, steps=2, width=64, height=64)
        assert "Model: tiny" in r.info["infotexts"][0] and r.info["sd_model_name"] == "tiny"
        # one job on another model (A1111's override_settings); the current one stays
        r = api.txt2img(prompt=PROMPT, seed=1, steps=2, width=64, height=64,
                        override_settings={"sd_model_checkpoint": "default"})
        assert "Model: default" in r.info["infotexts"][0]
        assert api.get_options()["sd_model_checkpoint"] == "tiny"
    finally:
        api.set_options({"sd_model_checkpoint": "default"})
    assert api.get_options()["sd_model_checkpoint"] == "default"
    for name, status in [("../../x", 422), ("/etc/passwd", 422), ("nope", 404)]:
        r = requests.post(served.url + "/sdapi/v1/options", json={"sd_model_checkpoint": name})
        assert r.status_code == status and "default, tiny" in r.json()["detail"], r.text
        r = requests.post(served.url + "/sdapi/v1/txt2img", json={"override_settings": {"sd_model_checkpoint": name}})
        assert r.status_code == status


def test_lora_tags_and_clip_skip_as_a1111_clients_send_them(api, ref, served):
    prompt = "a purple star on a green background <lora:purple:0.9>"
    r = api.txt2img(prompt=prompt, seed=4, steps=5, cfg_scale=4, width=64, height=64, sampler_name="Euler a",
                    override_settings={"CLIP_stop_at_last_layers": 2})
    want = ref.generate(prompt, seed=4, steps=5, guidance=4, scheduler="euler_a", clip_skip=2)
    assert max_diff(r.images[0], want[0]) <= 1
    assert 'Lora hashes: "purple: ' in r.info["infotexts"][0] and "Clip skip: 2" in r.info["infotexts"][0]
    assert served.server_state.models.loaded().loras.loaded == {}  # unloaded after the job
    for tag, status in [("<lora:../../etc/passwd:1>", 422), ("<lora:missing:1>", 404), ("<hypernet:x:1>", 422)]:
        r = requests.post(served.url + "/sdapi/v1/txt2img", json={"prompt": "a cat " + tag, "steps": 1})
        assert r.status_code == status and "<lora:NAME:WEIGHT>" in r.json()["detail"], r.text


def test_a_tagged_lcm_lora_sets_what_the_request_leaves_out(ref, served):
    """A tag naming an LCM-LoRA (the shipped ``lcm``) applies its header's sampler, steps and guidance where the
    request sends none, as the Python API does; fields the request sends win."""
    prompt = "a yellow circle on a blue background <lora:lcm:1>"
    r = requests.post(served.url + "/sdapi/v1/txt2img", json={"prompt": prompt, "seed": 3, "width": 64,
                                                              "height": 64})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert (info["steps"], info["cfg_scale"], info["sampler_name"]) == (4, 1.0, "LCM")
    want = ref.generate(prompt, seed=3, width=64, height=64)[0]
    assert "Steps: 4, Sampler: LCM, CFG scale: 1.0" in want.info["parameters"]
    assert max_diff(decode_image(r.json()["images"][0], "image", 1 << 20), want) <= 1
    r = requests.post(served.url + "/sdapi/v1/txt2img", json={"prompt": prompt, "seed": 3, "steps": 2, "width": 64,
                                                              "height": 64, "sampler_name": "Euler"})
    assert (json.loads(r.json()["info"])["steps"], json.loads(r.json()["info"])["sampler_name"]) == (2, "Euler")


def test_png_info_reads_the_parameters_back(api):
    r = api.txt2img(prompt=PROMPT, negative_prompt="blurry, dark", seed=5, steps=2, width=64, height=64)
    info = api.png_info(r.images[0])
    assert info.info == r.info["infotexts"][0]
    p = info.parameters  # webuiapi puts the "parameters" field here
    assert (p["Prompt"], p["Negative prompt"], p["Seed"], p["Size-1"], p["Steps"]) == (
        PROMPT, "blurry, dark", "5", "64", "2")


def test_outdir_gets_every_image_atomically_and_never_overwrites(api, served):
    folder = served.outdir / "txt2img-images"
    before = set(os.listdir(folder))
    api.txt2img(prompt=PROMPT, seed=11, steps=1, width=64, height=64, batch_size=2)
    new = sorted(set(os.listdir(folder)) - before)
    assert len(new) == 2 and new[0].endswith("-11.png") and new[1].endswith("-12.png")
    assert (folder / "00000-1.png").read_bytes() == b"not mine to overwrite"
    assert not [n for n in os.listdir(folder) if n.startswith(".")]  # no temporary files left
    api.txt2img(prompt=PROMPT, seed=13, steps=1, width=64, height=64, do_not_save_samples=True)
    assert len(os.listdir(folder)) == len(before) + 2


def test_full_queue_gets_429_and_a_long_job_504(served):
    import threading
    import time

    worker, release = served.server_state.worker, threading.Event()
    hold = [worker.submit("hold", lambda ctx: release.wait(30))]
    try:
        while worker.current is None:
            time.sleep(0.01)
        hold += [worker.submit("hold", lambda ctx: None) for _ in range(worker.queue_size)]
        r = requests.post(served.url + "/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1})
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        assert "queue is full" in r.json()["detail"] and r.json()["error"] == "HTTPException"
    finally:
        release.set()
    for job in hold:
        job.future.result(timeout=30)
    worker.job_timeout = 0.2
    try:
        r = requests.post(served.url + "/sdapi/v1/txt2img", json={"prompt": "x", "steps": 150, "width": 64,
                                                                  "height": 64})
    finally:
        worker.job_timeout = 300
    assert r.status_code == 504 and "--job-timeout" in r.json()["detail"], r.text
    assert requests.post(served.url + "/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1}).status_code == 200


def test_models_and_loras_are_names_never_paths(tmp_path, tiny_folder):
    from latentgen.serve.catalog import Loras, Models
    from latentgen.serve.errors import ApiError

    os.symlink(tiny_folder, tmp_path / "tiny")
    (tmp_path / "sd15-pruned.safetensors").write_bytes(b"")  # a single-file checkpoint, listed by stem
    (tmp_path / "notes.txt").write_text("not a model")
    models = Models(None, tmp_path)
    assert models.names() == ["default", "tiny", "sd15-pruned"] and models.current == "default"
    assert models.check("sd15-pruned.safetensors") == "sd15-pruned" and models.check("tiny [0123abcd]") == "tiny"
    for name, status in [("../tiny", 422), ("/abs/tiny", 422), ("tiny/../tiny", 422), ("notes", 404), (3, 422)]:
        with pytest.raises(ApiError) as e:
            models.check(name)
        assert e.value.status == status
    assert Models(str(tmp_path / "tiny"), tmp_path).current == "tiny"  # --model given as a path inside the folder
    (tmp_path / "later.ckpt").write_bytes(b"")
    assert "later" not in models.names()  # the folder is read at start ...
    models.refresh()
    assert models.names() == ["default", "tiny", "later", "sd15-pruned"]  # ... and on refresh-checkpoints
    loras = Loras([])
    assert loras.names() == ["lcm", "purple", "star"] and loras.check("purple").name == "purple.safetensors"
    with pytest.raises(FileNotFoundError, match="no .safetensors file or folder"):
        Loras([str(tmp_path / "missing")])


@pytest.mark.parametrize("warmup", [True, False])
def test_each_model_draws_one_step_as_it_loads_so_first_call_work_is_done(tmp_path, tiny_folder, monkeypatch, warmup):
    from latentgen.pipeline import Pipeline
    from latentgen.serve.catalog import Models

    calls, real = [], Pipeline.generate
    monkeypatch.setattr(Pipeline, "generate", lambda self, *a, **k: calls.append((a, k)) or real(self, *a, **k))
    os.symlink(tiny_folder, tmp_path / "tiny")
    monkeypatch.setenv("LATENTGEN_BACKEND", "openvino")  # the CPU default, whose first call converts the U-Net
    models = Models(None, tmp_path, warmup=warmup)
    for name in ("default", "tiny"):  # the first model, and one switched to later
        pipe = models.get(name)
        assert len(pipe.runtime._compiled) == warmup  # the OpenVINO U-Net converted (or read) before any request
    assert calls == ([(("",), {"seed": 0, "steps": 1})] * 2 if warmup else [])


def test_a_failed_warm_up_is_a_warning_and_the_model_still_loads(monkeypatch):
    from latentgen.pipeline import Pipeline
    from latentgen.serve.catalog import Models

    monkeypatch.setattr(Pipeline, "generate", lambda self, *a, **k: (_ for _ in ()).throw(MemoryError("no room")))
    with pytest.warns(RuntimeWarning, match=r"model 'default': the warm-up image failed \(MemoryError: no room\)"):
        pipe = Models(None, warmup=True).get()
    assert isinstance(pipe, Pipeline)


def test_a_damaged_checkpoint_gets_a_clean_error_and_the_server_serves_on(served, api):
    import requests

    url = f"http://127.0.0.1:{served.port}/sdapi/v1/"
    # a safetensors file cut short whose header length starts with 0x80, a pickle's first byte
    (served.models / "cut.safetensors").write_bytes((0x2080).to_bytes(8, "little") + b'{"w": {"dtype": "F32", ')
    requests.post(url + "refresh-checkpoints", timeout=30)
    try:
        r = requests.post(url + "options", json={"sd_model_checkpoint": "cut"}, timeout=120)
    finally:
        (served.models / "cut.safetensors").unlink()
        requests.post(url + "refresh-checkpoints", timeout=30)
    # the server's own file is damaged, not the request: a clean 500 that names it (it was a pickle's traceback)
    assert r.status_code == 500 and "cut.safetensors is not a readable .safetensors file (truncated" in r.json()["detail"]
    assert "Traceback" not in r.text and api.get_options()["sd_model_checkpoint"] == "default"
    assert len(api.txt2img(prompt=PROMPT, steps=1).images) == 1


def test_an_sdxl_folder_is_served_as_a1111_serves_sdxl(xl_folder, tmp_path):
    """SDXL's diffusers folder in the models folder: listed, switched to per request, drawn as the Python API
    draws it; a tag naming an SD 1.x LoRA is a 422 naming the mismatch."""
    import latentgen

    os.symlink(xl_folder, tmp_path / "tiny-xl")
    s = Served(ServeConfig(models_dir=tmp_path))
    try:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=s.port)
        assert [m["title"] for m in api.get_sd_models()] == ["default", "tiny-xl"]
        r = api.txt2img(prompt="a red circle", seed=2, steps=3, cfg_scale=5.0, sampler_name="Euler", width=64,
                        height=64, override_settings={"sd_model_checkpoint": "tiny-xl"})
        assert "Model: tiny-xl" in r.info["infotexts"][0]
        ours = latentgen.load(xl_folder).generate("a red circle", seed=2, steps=3, guidance=5.0, scheduler="euler")
        assert max_diff(r.image, ours[0]) <= 1
        bad = requests.post(s.url + "/sdapi/v1/txt2img", json={
            "prompt": "a cat <lora:purple:1>", "steps": 1, "override_settings": {"sd_model_checkpoint": "tiny-xl"}})
        assert bad.status_code == 422 and "made for another architecture" in bad.text, bad.text
    finally:
        s.stop()


def test_hr_checkpoint_name_draws_the_hires_pass_with_another_model(tiny_folder, tiny_other, tmp_path):
    """A1111's hr_checkpoint_name names a model of the catalog for the second pass: the image equals the Python
    API's Hires(model=...), its infotext says "Hires checkpoint"; an unknown name is a 404, a model of another
    latent space a 422, and "Use same checkpoint" the model itself."""
    import latentgen

    os.symlink(tiny_folder, tmp_path / "tiny")
    os.symlink(tiny_other, tmp_path / "tiny-other")
    s = Served(ServeConfig(models_dir=tmp_path))
    try:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=s.port)
        ask = dict(prompt=PROMPT, seed=3, steps=4, cfg_scale=5, width=64, height=64, sampler_name="Euler",
                   enable_hr=True, hr_scale=1.5, hr_upscaler="Lanczos", denoising_strength=0.5,
                   override_settings={"sd_model_checkpoint": "tiny"})
        r = api.txt2img(**ask, hr_checkpoint_name="tiny-other")
        want = latentgen.load(tiny_folder).generate(PROMPT, seed=3, steps=4, guidance=5, width=64, height=64,
                                                    scheduler="euler", hires=latentgen.Hires(
                                                        scale=1.5, upscaler="Lanczos", strength=0.5,
                                                        model=latentgen.load(tiny_other)))
        assert r.images[0].size == (96, 96) and max_diff(r.images[0], want[0]) <= 1
        assert "Denoising strength: 0.5, Hires checkpoint: tiny-other, Hires upscale: 1.5" in r.info["infotexts"][0]
        models, loads = s.server_state.models, []
        load = models._load  # the current model, the override and the hires model: three, all held for the job
        models._load = lambda name, source: loads.append(name) or load(name, source)
        again = api.txt2img(**ask, hr_checkpoint_name="tiny-other")
        assert loads == [] and max_diff(again.images[0], r.images[0]) == 0  # the same job loads nothing again
        same = api.txt2img(**ask, hr_checkpoint_name="Use same checkpoint")
        assert "Hires checkpoint" not in same.info["infotexts"][0] and max_diff(same.images[0], want[0]) > 2
        for name, code, text in [("nowhere", 404, "hr_checkpoint_name: model 'nowhere' not found"),
                                 ("default", 422, "hires.model 'default' works in another latent space")]:
            bad = requests.post(s.url + "/sdapi/v1/txt2img", json={**ask, "hr_checkpoint_name": name})
            assert bad.status_code == code and text in bad.text, bad.text
    finally:
        s.stop()


def test_sd_vae_draws_with_a_vae_file_of_the_vae_folder(tiny_folder, tmp_path):
    """A1111's sd_vae (override_settings or options) names a file of --vae-dir: the job decodes with that VAE, as
    latentgen.load(..., vae=file) does, and the PNG says "VAE hash" and "VAE"; "Automatic" is the model's own; an
    unknown name is a 404 before any job runs."""
    import latentgen
    from safetensors.torch import save_file

    from latentgen.models import ldm

    (tmp_path / "models").mkdir()
    (tmp_path / "vae").mkdir()
    os.symlink(tiny_folder, tmp_path / "models" / "tiny")
    own = latentgen.load(tiny_folder)
    moved = {k: v * 1.1 for k, v in own.vae.state_dict().items()}
    file = tmp_path / "vae" / "my-vae.safetensors"
    save_file({k: v.contiguous() for k, v in ldm.vae_to_ldm(moved, own.vae.config, prefix="").items()}, str(file))
    s = Served(ServeConfig(models_dir=tmp_path / "models", vae_dir=tmp_path / "vae"))
    try:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=s.port)
        assert requests.get(s.url + "/sdapi/v1/sd-vae").json() == [{"model_name": "my-vae.safetensors",
                                                                       "filename": "my-vae.safetensors"}]
        ask = dict(prompt=PROMPT, seed=2, steps=3, cfg_scale=5, width=64, height=64, sampler_name="Euler")
        over = {"sd_model_checkpoint": "tiny"}
        r = api.txt2img(**ask, override_settings={**over, "sd_vae": "my-vae.safetensors"})
        want = latentgen.load(tiny_folder, vae=file).generate(PROMPT, seed=2, steps=3, guidance=5, scheduler="euler")
        named = want[0].info["parameters"].replace(f"Model: {own.name}", "Model: tiny")  # the catalog's name
        assert max_diff(r.images[0], want[0]) <= 1 and r.info["infotexts"][0] == named
        assert ", VAE hash: " in r.info["infotexts"][0] and r.info["sd_vae_name"] == "my-vae.safetensors"
        assert f"VAE hash: {r.info['sd_vae_hash']}, VAE: my-vae.safetensors" in named and len(r.info["sd_vae_hash"]) == 10
        plain = api.txt2img(**ask, override_settings={**over, "sd_vae": "Automatic"})  # the model's own again
        assert "VAE" not in plain.info["infotexts"][0] and max_diff(plain.images[0], want[0]) > 2
        assert plain.info["sd_vae_name"] is None and plain.info["sd_vae_hash"] is None
        assert max_diff(plain.images[0], own.generate(PROMPT, seed=2, steps=3, guidance=5, scheduler="euler")[0]) <= 1
        axis = [30, "Automatic, my-vae.safetensors", [], 0, "", [], 0, "", [], True, True]  # the X/Y/Z plot's VAE axis
        plot = api.txt2img(**ask, override_settings=over, script_name="X/Y/Z plot", script_args=axis)
        assert max_diff(plot.images[2], want[0]) <= 1 and max_diff(plot.images[1], plain.images[0]) == 0
        assert plot.info["infotexts"][2] == named
        bad = requests.post(s.url + "/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "script_name": "X/Y/Z plot",
                                                              "script_args": [30, "nope.pt", []]})
        assert bad.status_code == 404 and "X/Y/Z plot, VAE: VAE 'nope.pt' not found" in bad.text, bad.text
        kept = api.txt2img(**ask, override_settings={**over, "sd_vae": "my-vae.safetensors", "CLIP_stop_at_last_layers": 2},
                           override_settings_restore_afterwards=False)  # A1111's: the overrides stay as options
        options = api.get_options()
        assert (options["sd_vae"], options["CLIP_stop_at_last_layers"], options["sd_model_checkpoint"]) == \
            ("my-vae.safetensors", 2, "tiny") and "Clip skip: 2" in kept.info["infotexts"][0]
        api.set_options({"CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic"})
        assert max_diff(api.txt2img(**ask).images[0], plain.images[0]) == 0  # the model stays; its VAE its own again
        api.set_options({"sd_vae": "my-vae.safetensors"})  # A1111's quick setting: every job after
        assert max_diff(api.txt2img(**ask, override_settings=over).images[0], want[0]) <= 1
        file.rename(tmp_path / "moved-away.safetensors")  # the option's file gone: the model's own, with a warning
        requests.post(s.url + "/sdapi/v1/refresh-vae").raise_for_status()
        with pytest.warns(RuntimeWarning, match="sd_vae 'my-vae.safetensors' is gone from --vae-dir"):
            gone = api.txt2img(**ask, override_settings=over)
        assert max_diff(gone.images[0], plain.images[0]) == 0 and requests.get(s.url + "/sdapi/v1/sd-vae").json() == []
        for body in ({"override_settings": {"sd_vae": "nope.pt"}, "prompt": "x", "steps": 1}, {"sd_vae": "nope.pt"}):
            route = "/sdapi/v1/options" if "sd_vae" in body else "/sdapi/v1/txt2img"
            bad = requests.post(s.url + route, json=body)
            assert bad.status_code == 404 and "sd_vae: VAE 'nope.pt' not found" in bad.text, bad.text
    finally:
        s.stop()


def test_a1111s_refiner_fields_hand_over_to_a_refiner_model(xl_folder, xl_refiner_folder, tmp_path):
    """refiner_checkpoint names a model of the catalog, refiner_switch_at where it takes over: the image equals the
    Python API's hand-over; an unknown refiner is a 404; with enable_hr, A1111's option hires_fix_refiner_pass says
    which pass it acts in."""
    import latentgen

    os.symlink(xl_folder, tmp_path / "tiny-xl")
    os.symlink(xl_refiner_folder, tmp_path / "tiny-xl-refiner")
    s = Served(ServeConfig(models_dir=tmp_path))
    try:
        ask = {"prompt": "a red circle", "seed": 2, "steps": 4, "cfg_scale": 5.0, "sampler_name": "Euler", "width": 64,
               "height": 64, "override_settings": {"sd_model_checkpoint": "tiny-xl"}}
        r = requests.post(s.url + "/sdapi/v1/txt2img", json={**ask, "refiner_checkpoint": "tiny-xl-refiner",
                                                             "refiner_switch_at": 0.5})
        assert r.status_code == 200, r.text
        info = json.loads(r.json()["info"])
        assert "Refiner: tiny-xl-refiner, Refiner switch at: 0.5" in info["infotexts"][0]
        image = decode_image(r.json()["images"][0], "image", 10**6)
        refiner = latentgen.load(xl_refiner_folder)
        ours = latentgen.load(xl_folder).generate("a red circle", seed=2, steps=4, guidance=5.0, scheduler="euler",
                                                  refiner=latentgen.Refiner(refiner, 0.5))
        assert max_diff(image, ours[0]) <= 1
        plot = requests.post(s.url + "/sdapi/v1/txt2img", json={  # the X/Y/Z plot's Refiner switch at axis (39)
            **ask, "refiner_checkpoint": "tiny-xl-refiner", "refiner_switch_at": 0.8, "script_name": "X/Y/Z plot",
            "script_args": [39, "0.5", [], 0, "", [], 0, "", [], True, True]})
        assert max_diff(decode_image(plot.json()["images"][1], "image", 10**6), ours[0]) <= 1
        plain = requests.post(s.url + "/sdapi/v1/txt2img", json={**ask, "refiner_checkpoint": "None"})
        assert "Refiner" not in json.loads(plain.json()["info"])["infotexts"][0]
        missing = requests.post(s.url + "/sdapi/v1/txt2img", json={**ask, "refiner_checkpoint": "nowhere"})
        assert missing.status_code == 404 and "model 'nowhere' not found" in missing.text
        hr = {"enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos", "denoising_strength": 0.6,
              "hr_second_pass_steps": 4}
        both = requests.post(s.url + "/sdapi/v1/txt2img", json={
            **ask, **hr, "refiner_checkpoint": "tiny-xl-refiner", "refiner_switch_at": 0.5,
            "override_settings": {**ask["override_settings"], "hires_fix_refiner_pass": "both passes"}})
        assert both.status_code == 200, both.text
        assert "Hires refiner: both passes, Refiner: tiny-xl-refiner" in json.loads(both.json()["info"])["infotexts"][0]
        ours = latentgen.load(xl_folder).generate("a red circle", seed=2, steps=4, guidance=5.0, scheduler="euler",
                                                  hires=latentgen.Hires(scale=1.5, strength=0.6, steps=4,
                                                                        upscaler="Lanczos"),
                                                  refiner=latentgen.Refiner(refiner, 0.5, hires_pass="both"))
        assert max_diff(decode_image(both.json()["images"][0], "image", 10**6), ours[0]) <= 1
        bad = requests.post(s.url + "/sdapi/v1/txt2img", json={
            **ask, "override_settings": {**ask["override_settings"], "hires_fix_refiner_pass": "third pass"}})
        assert bad.status_code == 422 and "hires_fix_refiner_pass='third pass' is invalid" in bad.text
    finally:
        s.stop()
