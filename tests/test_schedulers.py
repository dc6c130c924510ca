"""latentgen.schedulers: every sampler against diffusers' on the same tiny random folder (within 1/255),
and the folder's own scheduler as the default."""

import pytest
import torch

from conftest import max_diff as _max_diff
from conftest import reference_images as _reference
from latentgen import schedulers


@pytest.mark.parametrize("name", ["pndm", "lms", "heun", "dpm++2m_karras", "dpm++2m_sde", "unipc", "ddpm", "dpm2_a"])
def test_more_samplers_match_diffusers(pipe, reference, name):
    ours = pipe.generate("a blue dog", seed=5, steps=4, guidance=6.0, scheduler=name)
    assert _max_diff(ours, _reference(reference, pipe, name, "a blue dog", 5, 1, None)) <= 1


@pytest.mark.parametrize("name, guidance", [("lcm", 1.0), ("lcm", 2.0), ("tcd", 1.0)])
def test_few_step_samplers_match_diffusers(pipe, reference, name, guidance):
    """LCM and TCD as diffusers' pipeline runs them with an LCM-LoRA (guidance 1: no unconditional pass; TCD's
    gamma, the step's eta, at 0.3), two images with their own generators (both samplers draw fresh noise)."""
    ours = pipe.generate("a blue dog", seed=5, steps=4, guidance=guidance, scheduler=name, num_images=2)
    reference.scheduler = schedulers.make(name, pipe.scheduler.config)
    gens = [torch.Generator().manual_seed(5 + i) for i in range(2)]
    ref = reference("a blue dog", num_inference_steps=4, guidance_scale=guidance, generator=gens, height=64, width=64,
                    num_images_per_prompt=2, **({"eta": 0.3} if name == "tcd" else {})).images
    assert _max_diff(ours, ref) <= 1 and f"Sampler: {name.upper()}, " in ours[0].info["parameters"]
    assert _max_diff(ours, pipe.generate("a blue dog", seed=5, steps=4, guidance=guidance, num_images=2)) > 0


def test_few_step_samplers_refuse_more_steps_than_their_schedule_has(pipe, monkeypatch):
    monkeypatch.setattr(pipe.text_encoder, "forward", lambda *a, **k: pytest.fail("encoded before refusing"))
    for name in ("lcm", "tcd"):
        with pytest.raises(ValueError, match=rf"steps=51 is more than the '{name}' sampler takes \(50"):
            pipe.generate("a cat", scheduler=name, steps=51)


def test_default_scheduler_is_the_folders(pipe, reference):
    reference.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    ref = reference("a cat", num_inference_steps=3, guidance_scale=7.5, generator=torch.Generator().manual_seed(0),
                    height=64, width=64).images
    assert _max_diff(pipe.generate("a cat", steps=3), ref) <= 1


def _sigmas(sched, steps=10):
    """What a sampler runs: its timesteps and, for the k-diffusion style ones, its sigmas."""
    sched.set_timesteps(steps)
    return sched.timesteps, getattr(sched, "sigmas", None)


def test_ddim_and_ddpm_do_not_clip_x0_unless_the_config_says(pipe):
    """A config without ``clip_sample`` gets False, not diffusers' default True (x0 clipped to [-1, 1]
    in latent space); a config that sets it keeps it."""
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler

    bare = {k: v for k, v in pipe.scheduler.config.items() if k != "clip_sample"}
    own = EulerAncestralDiscreteScheduler.from_config(bare)  # a folder whose config says nothing of it
    for base in (bare, own.config, DDIMScheduler.from_config(bare).config):  # the last: True by default
        for name in ("ddim", "ddpm"):
            assert schedulers.make(name, base).config.clip_sample is False
    assert schedulers.make("ddim", {**bare, "clip_sample": True}).config.clip_sample is True
    # what it changes: one DDIM step on latents beyond [-1, 1] (SD latents are, often)
    sched = schedulers.make("ddim", own.config)
    sched.set_timesteps(10)
    x = torch.full((1, 4, 2, 2), 3.0)
    out = sched.step(torch.zeros_like(x), sched.timesteps[0], x).pred_original_sample
    assert out.min() > 1.5


@pytest.mark.parametrize("schedule", ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"])
def test_the_name_sets_the_sigma_schedule_not_the_models_config(pipe, schedule):
    """"unipc" on a DPM++ 2M Karras config is plain UniPC, labelled "UniPC"; "_karras" names are Karras."""
    import inspect

    plain = dict(pipe.scheduler.config)
    other = {**plain, schedule: True}
    for name, s in schedulers.SAMPLERS.items():
        ours = schedulers.make(name, other)
        assert schedulers.label(ours) == s.label, name
        if schedule in inspect.signature(s.cls.__init__).parameters:
            assert ours.config[schedule] is (schedule == "use_karras_sigmas" and name.endswith("_karras")), name
        want = _sigmas(schedulers.make(name, plain))
        got = _sigmas(ours)
        assert torch.equal(got[0], want[0]), name
        assert (got[1] is None) == (want[1] is None) and (got[1] is None or torch.allclose(got[1], want[1])), name
    from diffusers import UniPCMultistepScheduler

    karras_unipc = UniPCMultistepScheduler.from_config(plain, use_karras_sigmas=True)
    assert schedulers.label(karras_unipc) == "UniPCMultistepScheduler"  # not "UniPC": it is not that sampler


@pytest.mark.parametrize("preset", ["default", "sd15", "sd2", "sd21", "tiny-random"])
def test_the_presets_default_samplers_are_diffusers_own(preset):
    """The scheduler a preset's default sampler builds is what diffusers builds from the preset's config:
    the options latentgen sets change nothing there, so the parity of a preset's default holds."""
    from latentgen.models.presets import load_preset

    p = load_preset(preset)
    ours = schedulers.make(p.defaults.scheduler, p.scheduler)
    theirs = type(ours).from_config(p.scheduler)
    for k in ("clip_sample", "skip_prk_steps", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        assert ours.config.get(k) == theirs.config.get(k), k
    a, b = _sigmas(ours, 20), _sigmas(theirs, 20)
    assert torch.equal(a[0], b[0]) and (a[1] is None or torch.equal(a[1], b[1]))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_denoised_falls_back_to_ddims_x0_where_the_sampler_keeps_none(pipe, kind):
    """DPM++ 2M reports no x0; ``schedulers.denoised`` computes it as DDIM's step does from the same input."""
    config = {**pipe.scheduler.config, "prediction_type": kind}
    dpm, ddim = schedulers.make("dpm++2m", config), schedulers.make("ddim", config)
    dpm.set_timesteps(10)
    ddim.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = ddim.timesteps[3]
    step = dpm.step(out, dpm.timesteps[3], x)
    assert getattr(step, "pred_original_sample", None) is None
    want = ddim.step(out, t, x).pred_original_sample
    assert torch.allclose(schedulers.denoised(dpm, step, out, t, x), want, atol=1e-5)
    euler = schedulers.make("euler_a", config)
    euler.set_timesteps(10)
    s = euler.step(out, euler.timesteps[0], x, generator=g)
    assert schedulers.denoised(euler, s, out, euler.timesteps[0], x) is s.pred_original_sample


@pytest.mark.parametrize("name", ["euler_a", "dpm++2m", "lcm"])
def test_a_four_argument_callback_gets_the_clean_estimate_which_ends_as_the_image(pipe, name):
    got = []
    pipe.generate("a cat", seed=2, steps=4, scheduler=name, callback=lambda i, n, z, x0: got.append((z, x0)))
    assert len(got) == 4
    first, last = got[0], got[-1]
    assert (first[1] - first[0]).abs().max() > 0.1  # early on, the estimate is not the noisy latents
    assert torch.allclose(last[1], last[0], atol=1e-4)  # the last step lands on its estimate
