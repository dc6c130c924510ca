"""latentgen serve's Extras through webuiapi: upscaling one picture or a batch by scale or to a size (cropped), a
second upscaler blended in, the upscaler lists, and face restoration or unknown upscalers refused."""

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="latentgen serve needs the [serve] extra")
webuiapi = pytest.importorskip("webuiapi", reason="the A1111 client (the [dev] extra)")

from PIL import Image  # noqa: E402
from serving import Served  # noqa: E402

from latentgen.serve import ServeConfig  # noqa: E402
from latentgen.upscale import upscalers  # noqa: E402


@pytest.fixture(scope="module")
def api(tiny_folder, tmp_path_factory):
    s = Served(ServeConfig(model=str(tiny_folder)))
    yield webuiapi.WebUIApi(host="127.0.0.1", port=s.port)
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


def test_lists_and_refusals(api):
    assert [u["name"] for u in api.get_upscalers()] == ["None", "Lanczos", "Nearest"]
    assert [m["name"] for m in api.get_latent_upscale_modes()][:2] == ["Latent", "Latent (antialiased)"]
    for kwargs, words in [({"gfpgan_visibility": 1}, "no face restoration"), ({"upscaler_1": "R-ESRGAN 4x+"},
                                                                              "use one of None, Lanczos, Nearest"),
                          ({"upscaler_1": "Latent"}, "the latent ones work inside a hires fix only"),
                          ({"upscaling_resize": 0.5}, "upscaling_resize=0.5 is invalid")]:
        with pytest.raises(RuntimeError, match=words):
            api.extra_single_image(_picture(), **kwargs)
