"""latentgen.control.units: a call's ControlNet units checked before any model runs, their images fitted to the
drawing, their ControlNets loaded from folders and refused when made for another U-Net."""

import pytest
from PIL import Image

from latentgen import Control
from latentgen.control import units


@pytest.mark.parametrize("unit, error, match", [
    (dict(weight=3), ValueError, r"control\[0\].weight=3 is invalid"),
    (dict(start=0.6, end=0.4), ValueError, r"control\[0\].start=0.6 is not before control\[0\].end=0.4"),
    (dict(mode="strong"), ValueError, r"control\[0\].mode='strong' is invalid"),
    (dict(resize_mode="latent upscale"), ValueError, r"'latent upscale' is img2img's"),
    (dict(model="/nowhere"), FileNotFoundError, r"control\[0\].model='/nowhere' is no ControlNet folder"),
    (dict(model=3), TypeError, r"control\[0\].model must be a diffusers ControlNetModel"),
    (dict(preprocessor="depth_midas"), ValueError, r"control\[0\].preprocessor 'depth_midas' runs an annotator"),
    (dict(preprocessor="canny", threshold_a=-3), ValueError, r"control\[0\].threshold_a=-3 is invalid"),
    (dict(preprocessor="canny", processor_res=8), ValueError, r"control\[0\].processor_res=8 is invalid"),
])
def test_bad_units_are_refused(pipe, unit, error, match):
    kw = {"image": Image.new("RGB", (64, 64)), "model": "/nowhere", **unit}
    with pytest.raises(error, match=match):
        units.prepare(Control(**kw), pipe.unet, (64, 64), max_pixels=4096 * 4096)


def test_images_are_fitted_to_the_drawing_and_models_loaded(pipe, controlnets):
    wide = Image.new("RGB", (128, 64), (255, 255, 255))
    wide.paste((0, 0, 0), (0, 0, 32, 64))  # a black band on the left quarter
    p = units.prepare([Control(wide, controlnets[0]), Control(wide, controlnets[1], resize_mode="just resize")],
                      pipe.unet, (64, 64), max_pixels=4096 * 4096)
    crop, stretch = p.images
    assert crop.shape == stretch.shape == (1, 3, 64, 64) and 0 <= float(crop.min()) and float(crop.max()) <= 1
    assert float(crop[0, 0, 32, 2]) > 0.9 and float(stretch[0, 0, 32, 2]) < 0.1  # cropped away vs stretched
    assert all(m.dtype == pipe.unet.dtype for m in p.models) and units.prepare(None, pipe.unet, (64, 64),
                                                                              max_pixels=1) is None


def test_a_controlnet_for_another_unet_is_refused(pipe):
    from diffusers import ControlNetModel

    other = ControlNetModel(block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                            cross_attention_dim=32, layers_per_block=1, attention_head_dim=4, norm_num_groups=8)
    with pytest.raises(ValueError, match=r"control\[0\].model was made for another U-Net: its block_out_channels"):
        units.prepare(Control(Image.new("RGB", (64, 64)), other), pipe.unet, (64, 64), max_pixels=1 << 24)
    with pytest.raises(TypeError, match="control must be a latentgen.Control"):
        units.as_list(["edges.png"])


def test_a_preprocessor_makes_the_map_from_the_fitted_image(pipe, controlnets):
    """The image is fitted to the drawing first, then the preprocessor runs on it (A1111's pixel perfect)."""
    import numpy as np

    from latentgen.control import preprocess

    photo = Image.new("RGB", (128, 128), (10, 20, 200))
    photo.paste((250, 200, 0), (40, 40, 90, 90))
    p = units.prepare(Control(photo, controlnets[0], resize_mode="just resize", preprocessor="canny"), pipe.unet,
                      (64, 64), max_pixels=4096 * 4096)
    want = np.asarray(preprocess.run("canny", photo.resize((64, 64), Image.LANCZOS)), np.float32) / 255
    got = p.images[0][0].permute(1, 2, 0).numpy()
    assert np.array_equal(got, want) and set(np.unique(got)) == {0.0, 1.0}
