"""latentgen.memory: limits refuse at once (before any model runs) what the machine cannot hold, naming the
number that fits and how to raise the bound; the plan tiles the VAE and decodes fewer images at once only
when memory asks for it, and tiles/slices when told to."""

import numpy as np
import pytest

from latentgen import memory

PROMPT = "a red circle on a blue background"


@pytest.fixture
def no_model_runs(fresh, monkeypatch):
    """``fresh`` whose text encoder, U-Net and VAE fail the test if they are called."""
    def called(*a, **k):
        raise AssertionError("a model ran before the request was refused")
    for part in (fresh.text_encoder, fresh.unet, fresh.vae):
        monkeypatch.setattr(part, "forward", called)
    return fresh


def test_a_million_images_are_refused_at_once_with_the_number_that_fits(no_model_runs):
    with pytest.raises(ValueError, match=r"num_images=1000000 would hold .* GiB.*Ask for at most \d+.*latentgen batch"):
        no_model_runs.generate(PROMPT, num_images=10**6)


def test_many_prompts_count_together(no_model_runs):
    no_model_runs.limits.max_images = 3
    with pytest.raises(ValueError, match=r"num_images=4 .*at most 3"):
        no_model_runs.generate([PROMPT, PROMPT], num_images=2)


def test_steps_beyond_the_training_timesteps_are_refused(no_model_runs):
    for steps in (5000, 1000, 999):
        with pytest.raises(ValueError, match=rf"steps={steps} .* 1000 training timesteps.*steps <= 998"):
            no_model_runs.generate(PROMPT, steps=steps)


def _sample(sched, steps):
    """Run ``sched`` over ``steps`` steps with a random noise prediction in place of the U-Net: the final
    latents, or the error (the U-Net is not what breaks past the bound: the timesteps are)."""
    import inspect

    import torch

    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g) * sched.init_noise_sigma
    extra = {"generator": g} if "generator" in inspect.signature(sched.step).parameters else {}
    for t in sched.timesteps:
        sched.scale_model_input(x, t)
        x = sched.step(torch.randn(x.shape, generator=g), t, x, **extra).prev_sample
    return x


def test_every_sampler_runs_at_the_steps_bound_and_one_more_breaks_some(pipe):
    import torch

    from latentgen import schedulers

    cap = memory.max_sampler_steps(pipe.scheduler.config.num_train_timesteps)
    assert cap == 998
    for name in schedulers.SAMPLERS:
        sched = schedulers.make(name, pipe.scheduler.config)
        steps = min(cap, schedulers.step_bound(name, pipe.scheduler.config) or cap)  # LCM, TCD: 50 of their own
        assert torch.isfinite(_sample(sched, steps)).all(), name
        assert ((sched.timesteps >= 0) & (sched.timesteps < 1000)).all(), name
    beyond = schedulers.make("dpm++2m", pipe.scheduler.config)  # the bound is the real one: 999 makes NaN
    assert not torch.isfinite(_sample(beyond, cap + 1)).all()


def test_a_size_that_cannot_fit_is_refused_with_the_size_that_does(no_model_runs):
    with pytest.raises(ValueError, match=r"65536x65536 has a side above pipe.limits.max_side=8192 pixels"):
        no_model_runs.generate(PROMPT, width=65536, height=65536)  # refused by its side first
    no_model_runs.limits.max_side = 10**6
    with pytest.raises(ValueError, match=r"65536x65536 needs about .* GiB .* at most \d+ pixels fit \(about \d+x\d+\)"):
        no_model_runs.generate(PROMPT, width=65536, height=65536)
    no_model_runs.limits.max_pixels = 64 * 64
    with pytest.raises(ValueError, match="at most 4096 pixels"):
        no_model_runs.img2img(PROMPT, np.zeros((128, 128, 3), np.uint8))


def test_limits_can_be_raised(fresh):
    fresh.limits.max_steps = 1
    with pytest.raises(ValueError, match=r"steps=2 is more than pipe.limits.max_steps=1; use steps <= 1"):
        fresh.generate(PROMPT, steps=2)
    fresh.limits = memory.Limits(max_images=10**7)
    memory.check(fresh.limits, fresh.unet, num_images=10**6, steps=1, width=64, height=64, batch=1, cfg=True,
                 train_steps=1000)


def test_the_plan_tiles_and_slices_only_when_memory_asks(pipe, monkeypatch):
    kw = dict(width=512, height=512, batch=4)
    assert memory.plan(pipe.vae, memory.Limits(), **kw) == memory.Plan(vae_tiling=False, vae_batch=4)
    one = memory.vae_bytes(pipe.vae, 512 * 512)
    monkeypatch.setattr(memory, "free_bytes", lambda device: one)  # a whole decode no longer fits
    assert memory.plan(pipe.vae, memory.Limits(), **kw) == memory.Plan(vae_tiling=True, vae_batch=1)
    assert memory.plan(pipe.vae, memory.Limits(vae_tiling=False, vae_batch=2), **kw) == memory.Plan(False, 2)


def test_sliced_decoding_draws_the_same_images(pipe):
    whole = pipe.generate(PROMPT, num_images=2, batch_size=2, steps=2)
    pipe.limits.vae_batch = 1
    try:
        sliced = pipe.generate(PROMPT, num_images=2, batch_size=2, steps=2)
    finally:
        pipe.limits.vae_batch = None
    for a, b in zip(whole, sliced):
        assert np.abs(np.asarray(a, int) - np.asarray(b, int)).max() <= 1


def test_tiled_decoding_is_used_when_asked(fresh, monkeypatch):
    calls = []
    tiled = fresh.vae.tiled_decode
    monkeypatch.setattr(fresh.vae, "tiled_decode", lambda z, **k: calls.append(z.shape) or tiled(z, **k))
    fresh.limits.vae_tiling = True
    image = fresh.generate(PROMPT, steps=2, width=64, height=64)[0]
    f = fresh.vae_scale_factor
    assert calls == [(1, 4, 64 // f, 64 // f)] and image.size == (64, 64)


def test_cuda_free_memory_counts_the_allocators_cache_and_images_count_against_ram(fresh, monkeypatch):
    import torch

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 10 * gib)  # 9 GiB of it unused
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 * gib)
    assert memory.free_bytes(torch.device("cuda")) == 10 * gib  # a second call may reuse the cache
    ram = {"cpu": 2 * gib, "cuda": 10**6 * gib}  # a small host beside a huge device: the images live on the host
    monkeypatch.setattr(memory, "free_bytes", lambda device: ram[device.type])
    monkeypatch.setattr(memory.precision, "device_of", lambda module: torch.device("cuda"))
    held = 512 * 512 * 3 + memory.IMAGE_OVERHEAD
    fits = int(memory.IMAGES_SHARE * 2 * gib // held)
    with pytest.raises(ValueError, match=rf"{fits} images of 512x512 fit in a quarter of the 2.0 GiB of RAM free"):
        memory.check(fresh.limits, fresh.unet, num_images=fits + 1, steps=1, width=512, height=512, batch=1,
                     cfg=True, train_steps=1000)
