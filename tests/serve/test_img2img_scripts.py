"""latentgen.serve.img2img_scripts: A1111's "SD upscale" and "Loopback" img2img scripts through the webuiapi client.
The pictures equal the Python API's (``latentgen.upscale.sd_upscale``, ``latentgen.canvas.loopback``), returned as
A1111's scripts return them, and a script it cannot honour is a 422 before anything is drawn."""

import pytest

pytest.importorskip("fastapi", reason="latentgen serve needs the [serve] extra")
webuiapi = pytest.importorskip("webuiapi", reason="the A1111 client (the [dev] extra)")

from conftest import mask, photo  # noqa: E402
from serving import Served, max_diff  # noqa: E402

import latentgen  # noqa: E402
from latentgen.serve import ServeConfig  # noqa: E402

KW = dict(prompt="a red cat", seed=3, steps=3, cfg_scale=4, width=64, height=64, sampler_name="Euler a")


@pytest.fixture(scope="module")
def api(tiny_folder):
    s = Served(ServeConfig(model=str(tiny_folder)))
    yield webuiapi.WebUIApi(host="127.0.0.1", port=s.port)
    s.stop()


@pytest.fixture(scope="module")
def ref(tiny_folder):
    return latentgen.load(tiny_folder)


def test_sd_upscale_equals_the_python_api(api, ref):
    """[info, overlap, upscaler index, scale]: n_iter pictures, each the first init image upscaled and redrawn in
    tiles of the request's size."""
    from latentgen.upscale import sd_upscale

    r = api.img2img(images=[photo()], denoising_strength=0.4, script_name="SD upscale", script_args=[None, 16, 1, 2],
                    n_iter=2, **KW)  # upscaler 1: Lanczos, as in A1111's list
    want = sd_upscale.sd_upscale(ref, "a red cat", photo(), scale=2, upscaler="Lanczos", overlap=16, width=64,
                                 height=64, strength=0.4, seed=3, steps=3, guidance=4, scheduler="euler_a", num_images=2)
    assert [im.size for im in r.images] == [(128, 128)] * 2 and max(max_diff(a, b) for a, b in zip(r.images, want)) <= 1
    assert "SD upscale overlap: 16, SD upscale upscaler: Lanczos" in r.info["infotexts"][0]
    assert r.info["all_seeds"] == [3, 4]
    for args, extra, match in [
            ([None, 16, 99, 2], {}, r"script_args\[2\] \(upscaler\) 99 is not an upscaler.*s index: send 0 to 2"),
            ([None, 300, 1, 2], {}, r"script_args\[1\] \(tile overlap\)=300 is invalid"),
            ([None, 16, "4x-nope", 2], {}, r"4x-nope.* is not an upscaler here"),
            ([None, 16, 1, 2], {"mask_image": mask()}, r"redraws the whole picture: send no mask"),
            ([None, 64, 0, 2], {}, r"tiles of 64x64 with overlap=64 do not fit the upscaled picture 64x64")]:
        with pytest.raises(RuntimeError, match="422.*" + match):
            api.img2img(images=[photo()], denoising_strength=0.4, script_name="SD upscale", script_args=args, **KW,
                        **extra)


def test_loopback_equals_the_python_api(api, ref):
    """[loops, final_denoising_strength, denoising_curve, append_interrogation]: with one picture every loop's,
    with n_iter of them each one's last, a grid first; with a mask each loop inpaints."""
    from latentgen.canvas.loopback import loopback

    args = [3, 0.3, "Aggressive", "None"]
    r = api.img2img(images=[photo()], denoising_strength=0.7, script_name="Loopback", script_args=args, **KW)
    [want] = loopback(ref, "a red cat", photo(), loops=3, final_strength=0.3, curve="Aggressive", strength=0.7,
                      seed=3, steps=3, guidance=4, scheduler="euler_a", width=64, height=64)
    assert len(r.images) == 1 + 3 and r.images[0].size == (192, 64)  # the grid, then every loop
    assert max(max_diff(a, b) for a, b in zip(r.images[1:], want)) <= 1 and r.info["all_seeds"][1:] == [3, 4, 5]
    assert "Final denoising strength: 0.3, Denoising curve: Aggressive" in r.info["infotexts"][1]
    r = api.img2img(images=[photo()], mask_image=mask(), inpainting_fill=2, mask_blur=0, inpaint_full_res=False,
                    denoising_strength=0.9, script_name="Loopback", script_args=[2, 0.5, "Linear", "None"], n_iter=2,
                    **KW)
    want = loopback(ref, "a red cat", photo(), mask(), loops=2, final_strength=0.5, strength=0.9, fill="latent noise",
                    mask_blur=0, seed=3, num_images=2, steps=3, guidance=4, scheduler="euler_a")
    assert len(r.images) == 1 + 2 and max(max_diff(a, b[-1]) for a, b in zip(r.images[1:], want)) <= 1
    for args, match in [([2, 0.5, "Linear", "CLIP"], r"append interrogated prompt.*CLIP.*there is no interrogator"),
                        ([4, 0.9, "None"], r"are A1111 1.0-1.1"), ([40], r"script_args\[0\] \(loops\)=40"),
                        ([2, 0.5, "Steep"], r"curve=.*Steep.* is invalid")]:
        with pytest.raises(RuntimeError, match="422.*" + match):
            api.img2img(images=[photo()], denoising_strength=0.5, script_name="Loopback", script_args=args, **KW)
