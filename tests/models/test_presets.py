import pytest

from latentgen.models import components, loading
from latentgen.models.presets import Defaults, data_dir, list_presets, load_preset


def test_presets_ship_and_fit():
    assert {"sd15", "tiny-random"} <= set(list_presets())
    for name in list_presets():
        p = load_preset(name)
        components.check_fit(p.unet, p.vae, p.text_encoder, p.text_encoder_2)
        assert (p.tokenizer_dir / "vocab.json").is_file()


def test_sd15_architecture():
    p = load_preset("sd15")
    assert p.unet["block_out_channels"] == [320, 640, 1280, 1280] and p.unet["cross_attention_dim"] == 768
    assert p.text_encoder["hidden_size"] == 768 and p.vae["latent_channels"] == 4
    assert p.scheduler["beta_schedule"] == "scaled_linear"
    assert (p.defaults.width, p.defaults.height, p.defaults.scheduler) == (512, 512, "pndm")


def test_data_reaches_the_package():
    assert (data_dir("pipelines") / "sd15.json").is_file() and data_dir("weights").is_dir()


def test_unknown_default_is_rejected():
    with pytest.raises(ValueError, match="unknown defaults"):
        Defaults.from_dict({"stepz": 3})


def test_preset_builds_with_seeded_random_weights():
    a = loading.load_components("tiny-random")
    b = loading.load_components("tiny-random")
    assert all((x == y).all() for x, y in zip(a.unet.parameters(), b.unet.parameters()))
    assert a.vae_scale_factor == 2 and a.dtype.is_floating_point
