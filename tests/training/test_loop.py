"""latentgen.training.loop: the weighted diffusion loss, caption dropout, VAE posterior draws and per-step
generators, each a pure function of its seeds (so a resumed run draws what the uninterrupted one did)."""

import torch

from latentgen.training import loop as train


def test_weighted_loss_is_the_weighted_sum():
    from diffusers import DDPMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
                                norm_num_groups=4, attention_head_dim=2)
    sched, lat, hid = DDPMScheduler(), torch.randn(4, 4, 8, 8), torch.randn(4, 3, 8)
    mean = train.diffusion_loss(unet, hid, lat, sched, torch.Generator().manual_seed(0))
    even = train.diffusion_loss(unet, hid, lat, sched, torch.Generator().manual_seed(0), weights=torch.full((4,), 0.25))
    assert torch.allclose(mean, even)
    first = train.diffusion_loss(unet, hid, lat, sched, torch.Generator().manual_seed(0),
                                 weights=torch.tensor([1.0, 0, 0, 0]))
    assert not torch.allclose(first, mean)


def test_drop_captions_is_a_function_of_seed_step_micro_and_process():
    captions = [f"caption {i}" for i in range(200)]
    once = train.drop_captions(captions, 0.5, seed=3, step=7, micro=1, process=0)
    assert once == train.drop_captions(captions, 0.5, seed=3, step=7, micro=1, process=0)
    assert all(c in ("", captions[i]) for i, c in enumerate(once))
    for other in (dict(seed=4, step=7, micro=1, process=0), dict(seed=3, step=8, micro=1, process=0),
                  dict(seed=3, step=7, micro=0, process=0), dict(seed=3, step=7, micro=1, process=1)):
        assert train.drop_captions(captions, 0.5, **other) != once, other


def test_drop_captions_drops_about_p_of_them():
    captions = ["a red circle on a blue background"] * 2000
    dropped = train.drop_captions(captions, 0.3, seed=0, step=0).count("")
    assert 0.25 * 2000 <= dropped <= 0.35 * 2000, dropped
    for step in range(20):
        assert train.drop_captions(captions, 0.0, seed=0, step=step) == captions  # p=0: none dropped
    assert train.drop_captions(captions, 1.0, seed=0, step=0) == [""] * 2000  # p=1: all dropped


def test_sample_latents_is_the_mean_without_spread_and_reproducible():
    mean = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    std = torch.rand(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) + 0.1
    assert torch.equal(train.sample_latents(mean, torch.zeros_like(std), torch.Generator().manual_seed(5)), mean)
    a = train.sample_latents(mean, std, torch.Generator().manual_seed(5))
    b = train.sample_latents(mean, std, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == mean.shape and a.dtype == mean.dtype
    assert not torch.equal(a, mean)
    assert not torch.equal(a, train.sample_latents(mean, std, torch.Generator().manual_seed(6)))


def test_step_generator_depends_only_on_its_arguments():
    def draw(*args):
        return torch.randn(16, generator=train.step_generator(*args))

    assert torch.equal(draw(0, 5, 1, 0), draw(0, 5, 1, 0))
    for other in ((1, 5, 1, 0), (0, 6, 1, 0), (0, 5, 0, 0), (0, 5, 1, 1)):
        assert not torch.equal(draw(0, 5, 1, 0), draw(*other)), other


class Regression(torch.nn.Module):
    """A one-layer least-squares objective: the loop's contract on the smallest model."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        torch.nn.init.zeros_(self.layer.weight)
        torch.nn.init.zeros_(self.layer.bias)

    def forward(self, x, y):
        return ((self.layer(x) - y) ** 2).mean()


def _batch(step, micro, acc):
    g = train.step_generator(0, step, micro)
    x = torch.randn(8, 3, generator=g)
    return {"x": x, "y": x @ torch.tensor([[1.0], [-2.0], [0.5]])}


def _train(out, ema=0.0, trajectory=None):
    """Train 6 steps; the final weights, flat. ``trajectory``: a list that gets the weights after every step."""
    model = Regression()
    weights = lambda: torch.cat([p.detach().flatten().clone() for p in model.parameters()])  # noqa: E731
    cfg = train.LoopConfig(out=out, steps=6, lr=0.02, save_every=2, ema=ema, weight_decay=0.0)
    train.run(cfg, model, _batch, run_id={"test": "ema"},
              on_step=None if trajectory is None else lambda step: trajectory.append(weights()))
    return weights()


def test_ema_ends_as_the_moving_average_of_the_trajectory(tmp_path):
    trajectory = []  # the raw weights after every step, recorded by a run without EMA
    _train(tmp_path / "raw", trajectory=trajectory)
    assert len(trajectory) == 6
    shadow = trajectory[0]  # diffusers' warm-up: decay 0 at the first step, then min(0.9, (1+t)/(10+t))
    for t, w in enumerate(trajectory[1:], start=1):
        decay = min(0.9, (1 + t) / (10 + t))
        shadow = decay * shadow + (1 - decay) * w
    averaged = _train(tmp_path / "ema", ema=0.9)
    assert torch.allclose(averaged, shadow, atol=1e-6)
    assert not torch.allclose(averaged, trajectory[-1], atol=1e-3)  # the average is not the last weights


def test_ema_resumes_exactly_after_a_kill(tmp_path, monkeypatch, kill_after):
    import pytest

    full = _train(tmp_path / "full", ema=0.9)
    kill_after(4)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "killed", ema=0.9)
    monkeypatch.undo()
    assert torch.equal(_train(tmp_path / "killed", ema=0.9), full)


def test_ema_outside_zero_to_one_is_refused_by_name(tmp_path):
    import pytest

    for bad in (1.0, -0.1, float("nan"), True):
        with pytest.raises(ValueError, match=r"ema=.*decay in \[0, 1\)"):
            train.LoopConfig(out=tmp_path, steps=1, ema=bad).check()


class _Payload:
    """What a planted pickle does when it is unpickled: run a command (here, touch a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_in_a_checkpoint_is_refused_unread(tmp_path):
    import pytest

    _train(tmp_path / "run", ema=0.9)
    ckpt = train.latest_checkpoint(tmp_path / "run")[0]
    assert sorted(f.name for f in ckpt.iterdir() if f.suffix == ".pkl") == ["random_states_0.pkl"]  # accelerate's
    marker = tmp_path / "ran"
    torch.save(_Payload(marker), ckpt / "custom_checkpoint_0.pkl")  # what accelerate would unpickle with code on
    with pytest.raises(ValueError, match=r"holds custom_checkpoint_0.pkl, which latentgen does not write and will not "
                                         r"load \(a pickle can run code\)"):
        _train(tmp_path / "run", ema=0.9)
    assert not marker.exists()


def test_no_pickle_is_loaded_with_code_anywhere_in_the_package():
    """The rule, read from the code (calls, not strings): no weights_only=False, no pickle.load(s), no objects
    registered for accelerate to pickle."""
    import ast
    from pathlib import Path

    import latentgen

    found = []
    for path in Path(latentgen.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler") or name.endswith("register_for_checkpointing"):
                found.append(f"{path.name}:{node.lineno}: {name}")
            if any(k.arg == "weights_only" and not (isinstance(k.value, ast.Constant) and k.value.value is True)
                   for k in node.keywords):
                found.append(f"{path.name}:{node.lineno}: {name}(weights_only=...)")
    assert found == []


def test_each_parameter_gets_its_own_learning_rate(tmp_path):
    model = Regression()
    cfg = train.LoopConfig(out=tmp_path, steps=1, lr=0.5, save_every=1, weight_decay=0.0, max_grad_norm=0.0)
    train.run(cfg, model, _batch, run_id={"test": "lr"}, lr_of=lambda n: 0.1 if n.endswith("weight") else 0.01)
    # Adam's first step moves each parameter by its learning rate (times the gradient's sign)
    assert torch.allclose(model.layer.weight.abs(), torch.full((1, 3), 0.1), atol=1e-4)
    assert torch.allclose(model.layer.bias.abs(), torch.full((1,), 0.01), atol=1e-4)
