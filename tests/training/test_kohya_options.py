"""latentgen.training.kohya_options: the bucket options' defaults scale with the resolution (kohya's at 512) and
bad ones are refused by name."""

import pytest

from latentgen.training import configs


def _cfg(**kw):
    return configs.LoraTrainConfig(data=".", out=".", steps=2, **kw)


def test_bucket_sides_default_to_kohyas_at_512_and_scale_with_the_resolution():
    assert _cfg(enable_bucket=True).bucket_sides(512, 8) == (256, 1024, 64)
    assert _cfg(enable_bucket=True).bucket_sides(64, 2) == (32, 128, 8)
    assert _cfg(enable_bucket=True, bucket_reso_steps=32, min_bucket_reso=384).bucket_sides(512, 8) == (384, 1024, 32)


@pytest.mark.parametrize("kw, res, message", [
    (dict(min_bucket_reso=256), 512, r"min_bucket_reso shapes the aspect-ratio buckets: add enable_bucket=True"),
    (dict(enable_bucket=True, bucket_reso_steps=0), 512, r"bucket_reso_steps=0 is invalid"),
    (dict(enable_bucket=True, bucket_reso_steps=60), 512, r"bucket_reso_steps=60 is invalid: use a multiple of the "
                                                          r"VAE's factor 8, such as 56"),
    (dict(enable_bucket=True, min_bucket_reso=640), 512, r"must hold the resolution 512 between them"),
    (dict(enable_bucket=True, prior_data="p"), 512, r"enable_bucket with prior_data is not supported yet"),
])
def test_bad_bucket_settings_are_refused_by_name(kw, res, message):
    with pytest.raises(ValueError, match=message):
        cfg = _cfg(**kw)
        cfg.check()
        cfg.bucket_sides(res, 8)
