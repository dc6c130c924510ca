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


def test_each_optimizer_is_built_with_kohyas_defaults_under_the_given_args_and_steps():
    import torch

    from latentgen.training import loop
    from latentgen.training.configs import LoopConfig

    for name, cls_name in (("adamw", "AdamW"), ("adafactor", "Adafactor"), ("prodigy", "Prodigy"), ("lion", "Lion"),
                           ("sgd", "SGD")):
        cfg = _cfg(optimizer=name, optimizer_args=["weight_decay=0.001"], lr=1.0 if name == "prodigy" else 1e-2)
        cfg.check()
        model = torch.nn.Linear(4, 1)
        torch.manual_seed(0)
        loop_cfg = LoopConfig(out=".", steps=1, lr=cfg.lr, optimizer=cfg.optimizer_class(),
                              optimizer_kwargs=cfg.optimizer_kwargs())
        params, opt = loop.optimizer(model, loop_cfg, None)
        assert type(opt).__name__ == cls_name and opt.param_groups[0]["weight_decay"] == 0.001
        x, y = torch.randn(64, 4), torch.randn(64, 1)
        losses = []
        for _ in range(20):
            loss = ((model(x) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss))
        assert losses[-1] < losses[0], name  # it optimizes
    sgd = _cfg(optimizer="sgd").optimizer_kwargs()
    assert sgd == {"momentum": 0.9, "nesterov": True}  # kohya's SGDNesterov
    assert _cfg(optimizer="adafactor").optimizer_kwargs()["relative_step"] is False  # at the given lr, as kohya


@pytest.mark.parametrize("kw, error, message", [
    (dict(optimizer="adam8bit"), ValueError, r"optimizer='adam8bit'"),
    (dict(optimizer_args=["d_coef"]), ValueError, r"'d_coef' is not KEY=VALUE with a Python literal value"),
    (dict(optimizer_args=["decouple=yes please"]), ValueError, r"is not KEY=VALUE"),
    (dict(optimizer="prodigy", optimizer_args=["d_coeff=2"]), ValueError, r"Prodigy takes no 'd_coeff'; it takes "
                                                                          r"betas, .*d_coef"),
    (dict(optimizer_args=["lr=2"]), ValueError, r"AdamW takes no 'lr'"),
    (dict(optimizer_args=["x={[1]: 2}"]), ValueError, r"is not KEY=VALUE with a Python literal value"),
    (dict(optimizer_args=["betas=(2, 3)"]), ValueError, r"AdamW refuses \{'betas': \(2, 3\)\}: Invalid beta"),
])
def test_bad_optimizer_settings_are_refused_by_name(kw, error, message):
    with pytest.raises(error, match=message):
        _cfg(**kw).check()


def test_a_missing_optimizer_package_is_named_with_its_install(monkeypatch):
    from latentgen.training import kohya_options

    monkeypatch.setitem(kohya_options.OPTIMIZERS, "lion", ("not_lion_pytorch", "Lion", "lion-pytorch", {}))
    with pytest.raises(ImportError, match=r"optimizer='lion' needs the lion-pytorch package: pip install "
                                          r"lion-pytorch \(or latentgen\[optimizers\]\)"):
        _cfg(optimizer="lion").check()
