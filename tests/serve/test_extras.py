"""latentgen serve's Extras through webuiapi: upscaling one picture or a batch by scale or to a size (cropped), a
second upscaler blended in, upscaler model files of --upscalers-dir (in the Extras and as hr_upscaler), the
upscaler lists, and face restoration or unknown upscalers refused."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="latentgen serve needs the [serve] extra")
webuiapi = pytest.importorskip("webuiapi", reason="the A1111 client (the [dev] extra)")

from PIL import Image  # noqa: E402
from conftest import max_diff  # noqa: E402
from serving import Served  # noqa: E402

from latentgen.serve import ServeConfig  # noqa: E402
from latentgen.upscale import upscalers  # noqa: E402


@pytest.fixture(scope="module")
def api(tiny_folder, upscaler_folder):
    s = Served(ServeConfig(model=str(tiny_folder), upscalers_dir=upscaler_folder))
    api = webuiapi.WebUIApi(host="127.0.0.1", port=s.port)
    api.served = s
    yield api
    s.stop()


def _picture():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))


def test_single_and_batch_upscale_as_a1111(api):
    pic = _picture()
    r = api.extra_single_image(pic, upscaling_resize=2, upscaler_1="Nearest")
    assert r.image.size == (80, 48)
    assert np.array_equal(np.asarray(r.image.convert("RGB")), np.asarray(upscalers.pixels(pic, (80, 48), "Nearest")))
    assert "Postprocess upscale by: 2" in r.info
    r = api.extra_single_image(pic, resize_mode=1, upscaling_resize_w=64, upscaling_resize_h=64, upscaling_crop=True,
                               upscaler_1="Lanczos", upscaler_2="Nearest", extras_upscaler_2_visibility=0.5)
    want = Image.blend(upscalers.pixels(pic, (107, 64), "Lanczos"), upscalers.pixels(pic, (107, 64), "Nearest"), 0.5)
    assert r.image.size == (64, 64)
    assert np.array_equal(np.asarray(r.image.convert("RGB")), np.asarray(want.crop((21, 0, 85, 64))))
    r = api.extra_batch_images([pic, pic.transpose(Image.Transpose.ROTATE_90)], upscaling_resize=1.5,
                               upscaler_1="Lanczos")
    assert [im.size for im in r.images] == [(60, 36), (36, 60)]


def test_model_files_upscale_in_the_extras_and_the_hires_fix(api, tiny_folder, upscaler_folder):
    import latentgen

    pic, path = _picture(), str(upscaler_folder / "2x-compact.safetensors")
    r = api.extra_single_image(pic, upscaling_resize=3, upscaler_1="2x-compact")
    assert np.array_equal(np.asarray(r.image.convert("RGB")), np.asarray(upscalers.pixels(pic, (120, 72), path)))
    assert "Postprocess upscaler: 2x-compact" in r.info
    r = api.txt2img(prompt="a cat", seed=5, steps=2, cfg_scale=5, width=32, height=32, enable_hr=True, hr_scale=2,
                    hr_upscaler="2x-compact", denoising_strength=0.5, sampler_name="Euler")
    want = latentgen.load(tiny_folder).generate("a cat", seed=5, steps=2, guidance=5, width=32, height=32,
                                                scheduler="euler", hires=latentgen.Hires(scale=2, upscaler=path,
                                                                                         strength=0.5))
    assert r.image.size == (64, 64) and max_diff([r.image.convert("RGB")], want) <= 1
    assert "Hires upscaler: 2x-compact" in r.info["infotexts"][0]
    with pytest.raises(RuntimeError, match=r"hr_upscaler=.*4x-other.* is not an upscaler here: .*model files in "):
        api.txt2img(prompt="a cat", steps=2, enable_hr=True, hr_upscaler="4x-other")


def test_lists_and_refusals(api, upscaler_folder):
    listed = api.get_upscalers()
    assert [u["name"] for u in listed] == ["None", "Lanczos", "Nearest", "2x-compact", "4x-tiny"]
    assert listed[3] == {"name": "2x-compact", "model_name": "Compact", "scale": 2, "model_url": None,
                         "model_path": str(upscaler_folder / "2x-compact.safetensors")}
    assert (listed[4]["model_name"], listed[4]["scale"]) == ("ESRGAN", 4)
    assert [m["name"] for m in api.get_latent_upscale_modes()][:2] == ["Latent", "Latent (antialiased)"]
    for kwargs, words in [({"gfpgan_visibility": 1}, "no face restoration"), ({"upscaler_1": "R-ESRGAN 4x+"},
                                                                              r"R-ESRGAN 4x\+.* is not an upscaler"),
                          ({"upscaler_1": "Latent"}, "the latent ones work inside a hires fix only"),
                          ({"upscaling_resize": 0.5}, "upscaling_resize=0.5 is invalid"),
                          ({"resize_mode": 1, "upscaling_resize_w": 2048, "upscaling_resize_h": 2048},
                           r"upscaled to 3413x2048, above --max-pixels")]:
        with pytest.raises(RuntimeError, match=words):
            api.extra_single_image(_picture(), **kwargs)


def test_internal_progress_follows_a_forced_task_id(api):
    import threading
    import time

    import requests

    url = api.baseurl.replace("/sdapi/v1", "")

    def task(task_id):
        return requests.post(url + "/internal/progress", json={"id_task": task_id, "id_live_preview": -1}).json()

    assert task("nobody") == {"active": False, "queued": False, "completed": False, "progress": None, "eta": None,
                              "live_preview": None, "id_live_preview": -1, "textinfo": "Waiting..."}
    requests.post(url + "/sdapi/v1/options", json={"live_previews_enable": True, "show_progress_every_n_steps": 1})
    body = {"prompt": "a cat", "steps": 80, "width": 64, "height": 64, "force_task_id": "task(abc)"}
    done = threading.Thread(target=lambda: requests.post(url + "/sdapi/v1/txt2img", json=body, timeout=120))
    done.start()
    seen = {}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not seen.get("completed"):
        state = task("task(abc)")
        if state["active"] and state["progress"] and state["live_preview"] and state["textinfo"]:
            seen["active"] = state
        seen["completed"] = state["completed"]
        time.sleep(0.02)
    done.join()
    active = seen["active"]
    assert 0 < active["progress"] <= 1 and active["textinfo"].startswith("Step ") and active["id_live_preview"] > 0
    assert active["live_preview"].startswith("data:image/png;base64,") and seen["completed"]
    assert task("task(abc)")["completed"] and not task("task(abc)")["active"]


def _preview_mid_run(url: str, show_progress_type: str) -> Image.Image:
    """The /sdapi/v1/progress preview of a long job, taken while it runs, drawn as ``show_progress_type`` says."""
    import base64
    import io
    import threading
    import time

    import requests

    requests.post(url + "/sdapi/v1/options", json={"show_progress_type": show_progress_type,
                                                  "show_progress_every_n_steps": 1}).raise_for_status()
    body = {"prompt": "a cat", "steps": 60, "width": 64, "height": 64}
    job = threading.Thread(target=lambda: requests.post(url + "/sdapi/v1/txt2img", json=body, timeout=120))
    job.start()
    image, deadline = None, time.monotonic() + 60
    while image is None and time.monotonic() < deadline:
        p = requests.get(url + "/sdapi/v1/progress").json()
        if p["current_image"] and p["state"]["sampling_step"] < 50:
            image = Image.open(io.BytesIO(base64.b64decode(p["current_image"])))
        time.sleep(0.02)
    requests.post(url + "/sdapi/v1/interrupt")
    job.join()
    return image


def test_progress_previews_mid_run_as_show_progress_type_says(api):
    import requests

    url = api.baseurl.replace("/sdapi/v1", "")
    assert requests.get(url + "/sdapi/v1/options").json()["show_progress_type"] == "Approx cheap"
    for kind in ("Approx cheap", "Full"):
        assert _preview_mid_run(url, kind).size == (64, 64)
    r = requests.post(url + "/sdapi/v1/options", json={"show_progress_type": "TAESD"})
    assert r.status_code == 422 and "--preview-vae" in r.json()["detail"]
    r = requests.post(url + "/sdapi/v1/options", json={"show_progress_type": "Approx magic"})
    assert r.status_code == 422 and "Approx cheap" in r.json()["detail"]
    s = Served(ServeConfig(preview_vae=Path("default-tiny-vae"), warmup=False))  # the embedded model's, by name
    try:
        assert _preview_mid_run(f"http://127.0.0.1:{s.port}", "TAESD").size == (64, 64)
    finally:
        s.stop()


def test_a_tiling_jobs_previews_wrap_with_the_preview_vae_too():
    """While a tiling job runs (its model's VAE wrapped), --preview-vae previews on a torus too: latents rolled by k
    cells preview as the picture rolled by k * f pixels; a plain job's preview does not roll so."""
    import torch

    import latentgen
    from latentgen.canvas import seamless
    from latentgen.serve.live import Previews

    pipe, previews = latentgen.load(), Previews(Path("default-tiny-vae"))
    z = torch.randn(1, pipe.vae.config.latent_channels, 12, 12, generator=torch.Generator().manual_seed(0))
    k, f = 5, pipe.vae_scale_factor

    def rolled_error() -> int:
        a, b = (np.asarray(previews.draw(pipe, x, "tiny"), dtype=int) for x in (z, torch.roll(z, k, dims=-1)))
        return int(np.abs(np.roll(a, k * f, axis=1) - b).max())

    with seamless.circular([pipe.vae]):  # as generate(..., tiling=True) does while it runs
        assert seamless.wraps(pipe.vae) and rolled_error() <= 1
        assert not seamless.wraps(previews.vae)  # only while it draws
    assert not seamless.wraps(pipe.vae) and rolled_error() > 8


def test_what_the_server_has_not_its_memory_flags_and_unloading(api):
    """The routes A1111 clients call as they start: empty lists for what latentgen has not, the upscaler files
    (realesrgan-models), memory and flags in A1111's shapes; unload-checkpoint empties the memory, reload-checkpoint
    loads the current model again, and a job after draws as before."""
    import requests
    import torch

    assert api.get_face_restorers() == [] and api.get_hypernetworks() == []
    with pytest.raises(RuntimeError, match="422.*interrogate: latentgen has no captioning model"):
        api.interrogate(_picture())  # webuiapi's; A1111 captions with BLIP, which is not here
    assert {m["name"] for m in api.get_realesrgan_models()} == {"2x-compact", "4x-tiny"}  # --upscalers-dir's files
    memory = api.get_memory()
    assert 0 < memory["ram"]["used"] < memory["ram"]["total"] and memory["ram"]["free"] > 0
    assert (memory["cuda"] == {"error": "unavailable"}) != torch.cuda.is_available()
    flags = api.get_cmd_flags()
    assert flags["api"] is True and flags["listen"] is False and flags["api_auth"] is None and flags["port"] == 7860
    before = api.txt2img(prompt="a cat", seed=1, steps=2, width=32, height=32).image
    models = api.served.server_state.models
    assert requests.post(api.served.url + "/sdapi/v1/unload-checkpoint").json() == {} and models.loaded() is None
    assert requests.post(api.served.url + "/sdapi/v1/reload-checkpoint").json() == {} and models.loaded() is not None
    after = api.txt2img(prompt="a cat", seed=1, steps=2, width=32, height=32).image
    assert np.array_equal(np.asarray(before), np.asarray(after))


def test_skip_ends_the_running_call_with_its_picture_and_the_job_goes_on(api, tiny_folder):
    import json
    import threading
    import time

    import requests

    import latentgen

    url, answer = api.baseurl.replace("/sdapi/v1", ""), {}
    body = {"prompt": "a cat", "seed": 4, "steps": 30, "cfg_scale": 5, "sampler_name": "Euler a", "width": 64,
            "height": 64, "batch_size": 2, "n_iter": 2}
    job = threading.Thread(target=lambda: answer.update(r=requests.post(url + "/sdapi/v1/txt2img", json=body,
                                                                         timeout=300)))
    job.start()
    worker, deadline = api.served.server_state.worker, time.monotonic() + 120
    while not (worker.current and worker.progress.job_no == 0 and worker.progress.sampling_step > 0) \
            and time.monotonic() < deadline:  # this job's first image is being drawn
        time.sleep(0.01)
    api.skip()  # webuiapi's, during the first image of the first of the two calls (n_iter 2 of batch_size 2)
    job.join()
    r = answer["r"].json()
    info, images = json.loads(r["info"]), [api_image(b) for b in r["images"]]
    # the CPU draws a call's images one by one: seed 5, after the skipped one, is not drawn; the seeds say so
    assert len(images) == 3 and "interrupted" not in info and info["all_seeds"] == [4, 6, 7]
    assert ["Seed: 4," in t and "Seed: 7," in u for t, u in [info["infotexts"][::2]]] == [True]
    want = latentgen.load(tiny_folder).generate("a cat", seed=4, steps=30, guidance=5, scheduler="euler_a",
                                                width=64, height=64, num_images=4)
    assert max_diff(images[1:], want[2:]) == 0  # the second call drawn whole, after the skip
    assert max_diff(images[:1], want[:1]) > 0  # the first: its picture when skipped
    assert not requests.get(url + "/sdapi/v1/progress").json()["state"]["skipped"]


def api_image(b64: str) -> Image.Image:
    import base64
    import io

    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
