"""latentgen serve's ControlNet: sd-webui-controlnet units through PyPI's webuiapi (``ControlNetUnit``) draw what the
Python API draws with the same ``latentgen.Control``s (txt2img with two units, img2img reading the init image), the
infotext lines, the extension's endpoints (model and module lists, detect), and a 422 naming the field for every
unit that cannot be honoured."""

import os

import numpy as np
import pytest
import requests

pytest.importorskip("fastapi", reason="latentgen serve needs the [serve] extra: pip install 'latentgen[serve]'")
webuiapi = pytest.importorskip("webuiapi", reason="the A1111 client: pip install webuiapi (in the [dev] extra)")

from PIL import Image  # noqa: E402
from serving import Served, max_diff  # noqa: E402

from latentgen import Control  # noqa: E402
from latentgen.serve import ServeConfig  # noqa: E402

PROMPT = "a red circle on a blue background"


def _square(fill=(255, 255, 255), size=64) -> Image.Image:
    im = Image.new("RGB", (size, size), (0, 0, 0))
    im.paste(fill, (20, 16, 44, 40))
    return im


@pytest.fixture(scope="module")
def served(tiny_folder, controlnets, tmp_path_factory):
    folder = tmp_path_factory.mktemp("controlnets")
    for i, f in enumerate(controlnets):
        os.symlink(f, folder / f"cn{i}")
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    from latentgen.control import ldm_file

    net = ControlNetModel.from_pretrained(controlnets[0])  # cn0 as A1111's single file, listed by its stem
    save_file(ldm_file.to_ldm(net.state_dict(), net.config, "control_model."), folder / "control_cn0.safetensors")
    s = Served(ServeConfig(model=str(tiny_folder), controlnet_dir=folder, warmup=False))
    s.api = webuiapi.WebUIApi(host="127.0.0.1", port=s.port)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def ref(tiny_folder):
    import latentgen

    return latentgen.load(tiny_folder)


def test_two_units_through_webuiapi_draw_what_the_python_api_draws(served, ref, controlnets):
    units = [webuiapi.ControlNetUnit(image=_square((200, 60, 60)), module="canny", model="cn0 [0123abcd]", weight=0.8,
                                     resize_mode="Just Resize", processor_res=512, threshold_a=100, threshold_b=200,
                                     guidance_start=0.1, guidance_end=0.9, control_mode=2),
             webuiapi.ControlNetUnit(image=_square(size=96), module="none", model="cn1", weight=0.5,
                                     resize_mode="Crop and Resize", control_mode=1)]
    r = served.api.txt2img(prompt=PROMPT, seed=3, steps=4, cfg_scale=5, width=64, height=64, sampler_name="Euler a",
                           controlnet_units=units, alwayson_scripts={})  # webuiapi's default dict is shared
    want = ref.generate(PROMPT, seed=3, steps=4, guidance=5, scheduler="euler_a", control=[
        Control(_square((200, 60, 60)), controlnets[0], weight=0.8, start=0.1, end=0.9, mode="controlnet",
                resize_mode="just resize", preprocessor="canny", threshold_a=100, threshold_b=200, processor_res=512),
        Control(_square(size=96), controlnets[1], weight=0.5, mode="prompt", preprocessor="none")])
    assert max_diff(r.images[0], want[0]) <= 1
    plain = ref.generate(PROMPT, seed=3, steps=4, guidance=5, scheduler="euler_a")[0]
    assert max_diff(r.images[0], plain) > 8  # the units did change the picture
    text = r.info["infotexts"][0]
    assert ('ControlNet 0: "Module: canny, Model: cn0, Weight: 0.8, Resize Mode: Just Resize, Processor Res: 512, '
            'Threshold A: 100, Threshold B: 200, Guidance Start: 0.1, Guidance End: 0.9, Control Mode: ControlNet is '
            'more important"') in text
    assert 'ControlNet 1: "Module: none, Model: cn1, Weight: 0.5' in text


def test_img2img_unit_without_an_image_reads_the_init_image(served, ref, controlnets):
    init = _square((30, 200, 30))
    unit = webuiapi.ControlNetUnit(model="cn0", module="invert", resize_mode="Just Resize", processor_res=-1)
    r = served.api.img2img(images=[init], prompt=PROMPT, seed=5, steps=4, cfg_scale=5, denoising_strength=0.7,
                           width=64, height=64, sampler_name="Euler", controlnet_units=[unit], alwayson_scripts={})
    want = ref.img2img(PROMPT, init, strength=0.7, seed=5, steps=4, guidance=5, scheduler="euler", width=64, height=64,
                       control=Control(init, controlnets[0], resize_mode="just resize", preprocessor="invert"))
    assert max_diff(r.images[0], want[0]) <= 1


def test_a_unit_acts_in_both_passes_of_the_hires_fix(served, ref, controlnets):
    from latentgen import Hires

    unit = webuiapi.ControlNetUnit(image=_square(), model="cn0", module="none", resize_mode="Just Resize")
    r = served.api.txt2img(prompt=PROMPT, seed=3, steps=3, cfg_scale=5, width=64, height=64, sampler_name="Euler a",
                           enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", denoising_strength=0.5,
                           controlnet_units=[unit], alwayson_scripts={})
    want = ref.generate(PROMPT, seed=3, steps=3, guidance=5, scheduler="euler_a", hires=Hires(scale=1.5, strength=0.5),
                        control=Control(_square(), controlnets[0], resize_mode="just resize"))
    assert r.images[0].size == (96, 96) and max_diff(r.images[0], want[0]) <= 1


def test_the_extensions_endpoints(served):
    api = served.api
    assert api.controlnet_version() == 2
    assert {"cn0", "cn1"} <= set(api.controlnet_model_list())
    modules = api.controlnet_module_list()
    assert {"none", "canny", "invert", "threshold", "scribble_xdog", "tile_resample"} <= set(modules)
    found = api.controlnet_detect([_square()], module="canny", processor_res=128, threshold_a=100, threshold_b=200)
    edges = np.asarray(found.images[0].convert("RGB"))
    assert edges.shape == (128, 128, 3) and edges.max() == 255 and edges[64, 64].max() == 0  # outline only
    r = requests.post(served.url + "/controlnet/detect", json={"controlnet_module": "depth_midas",
                                                               "controlnet_input_images": ["x"]})
    assert r.status_code == 422 and "annotator network" in r.json()["detail"]


def test_a_single_file_in_the_controlnet_dir_is_listed_by_its_stem_and_draws_as_its_folder(served):
    from latentgen.serve.codec import decode_image

    assert "control_cn0" in served.api.controlnet_model_list()
    drawn = []
    for model in ("cn0", "control_cn0 [0123abcd]"):
        r = _post(served, {"model": model}, seed=4)
        assert r.status_code == 200, r.text
        drawn.append(np.asarray(decode_image(r.json()["images"][0], "image", 1 << 20).convert("RGB")))
    assert np.array_equal(*drawn)
    assert 'Model: control_cn0,' in r.json()["info"]


def _post(served, unit: dict, mode: str = "txt2img", **fields):
    from latentgen.serve.codec import encode_png

    body = {"prompt": PROMPT, "steps": 1, "width": 64, "height": 64, **fields,
            "alwayson_scripts": {"controlnet": {"args": [{"image": encode_png(_square()), "model": "cn0", **unit}]}}}
    return requests.post(f"{served.url}/sdapi/v1/{mode}", json=body)


@pytest.mark.parametrize("unit, fields, status, says", [
    (dict(model="None"), {}, 422, "model is 'None'"),
    (dict(model="../cn0"), {}, 422, "is not a name"),
    (dict(model="nope"), {}, 404, "not found"),
    (dict(module="openpose_full"), {}, 422, "annotator network"),
    (dict(weight="heavy"), {}, 422, "weight='heavy'"),
    (dict(weight=3), {}, 422, "weight=3 is invalid"),
    (dict(guidance_start=0.8, guidance_end=0.2), {}, 422, "is not before"),
    (dict(control_mode="Loud"), {}, 422, "control_mode='Loud'"),
    (dict(resize_mode="Stretch"), {}, 422, "resize_mode='Stretch'"),
    (dict(mask="abc"), {}, 422, "mask='abc'"),
    (dict(ipadapter_input=["x"]), {}, 422, "ipadapter_input"),
    (dict(image=""), {}, 422, "image is empty"),
    (dict(hr_option="Low res only"), {"enable_hr": True, "hr_scale": 2}, 422, "hr_option='Low res only'"),
])
def test_a_unit_that_cannot_be_honoured_gets_a_422_naming_the_field(served, unit, fields, status, says):
    r = _post(served, unit, **fields)
    assert r.status_code == status and says in r.json()["detail"], r.text


def test_disabled_units_and_an_empty_args_list_draw_without_control(served, ref):
    r = _post(served, {"enabled": False}, seed=2)
    assert r.status_code == 200, r.text
    body = {"prompt": PROMPT, "steps": 1, "width": 64, "height": 64, "seed": 2,
            "alwayson_scripts": {"ControlNet": {"args": []}}}  # webuiapi's every request when the extension is there
    assert requests.post(served.url + "/sdapi/v1/txt2img", json=body).status_code == 200
    r = requests.post(served.url + "/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"ADetailer": {"args": []}}})
    assert r.status_code == 422 and "alwayson_scripts.ADetailer" in r.json()["detail"]
