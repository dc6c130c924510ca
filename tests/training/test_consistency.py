"""latentgen.training.consistency: distill-lcm on the tiny model: the boundary conditions and the DDIM solver against
diffusers' LCMScheduler and DDIMScheduler, the teacher without its adapters, bad input refused before any model
loads, the LoRA and its header, exact resume after a kill, 2 processes equal to 1."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from latentgen.lora import formats as lora_io
from latentgen.training import consistency
from latentgen.training import loop as train
from latentgen.training.consistency import LcmDistillConfig

TINY = dict(rank=2, steps=4, batch=2, save_every=2, resolution=64, lr=1e-3)


def _run(tiny_folder, data, out, **kw):
    return consistency.run(LcmDistillConfig(data=data, out=out, model=str(tiny_folder), **{**TINY, **kw}))


def _sd_schedule(cls, **kw):
    return cls(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", **kw)


def test_boundary_conditions_are_lcm_schedulers():
    from diffusers import LCMScheduler

    for scaling in (10.0, 4.0):
        ref = LCMScheduler(timestep_scaling=scaling)
        t = torch.tensor([0, 19, 39, 259, 999])
        c_skip, c_out = consistency.boundary_conditions(t, scaling)
        for i, step in enumerate(t.tolist()):
            want = ref.get_scalings_for_boundary_condition_discrete(step)
            assert torch.allclose(torch.stack([c_skip[i], c_out[i]]).double(), torch.tensor(want).double(), atol=1e-6)
    c_skip, c_out = consistency.boundary_conditions(torch.tensor([0]), 10.0)
    assert c_skip.item() == 1.0 and c_out.item() == 0.0  # f(x, 0) = x


def test_solver_timesteps_are_the_ones_the_lcm_sampler_picks_from():
    from diffusers import LCMScheduler

    ref = LCMScheduler(original_inference_steps=50)
    ref.set_timesteps(50)
    assert consistency.solver_timesteps(1000, 50).tolist() == sorted(ref.timesteps.tolist())
    assert consistency.solver_timesteps(1000, 4).tolist() == [249, 499, 749, 999]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_the_solver_step_is_ddims(prediction_type):
    """x0 and eps read from the model's output, then one DDIM step from t to t - k (t' = 0, with alphas_cumprod[0],
    from the first solver step), equal diffusers' DDIMScheduler.step on the same output."""
    from diffusers import DDIMScheduler

    ref = _sd_schedule(DDIMScheduler, timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=False,
                       prediction_type=prediction_type)
    ref.set_timesteps(50)
    acp = ref.alphas_cumprod
    g = torch.Generator().manual_seed(0)
    for t in (999, 519, 39, 19):
        out, x = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        want = ref.step(out, t, x, eta=0.0).prev_sample
        x0, eps = consistency.x0_and_eps(out, x, acp[t].view(1, 1, 1, 1), prediction_type)
        got = consistency.ddim_step(x0, eps, acp[max(t - 20, 0)].view(1, 1, 1, 1))
        assert torch.allclose(got, want, atol=1e-5), t


def test_pseudo_huber_is_quadratic_near_zero_and_linear_far():
    a, c = torch.tensor([0.0, 1e-4, 3.0]), 0.001
    loss = [consistency.pseudo_huber(a[i:i + 1], torch.zeros(1), c).item() for i in range(3)]
    assert loss[0] == 0.0
    assert loss[1] == pytest.approx(1e-8 / (2 * c), rel=0.01)
    assert loss[2] == pytest.approx(3.0 - c, rel=1e-4)


def test_bad_settings_and_data_are_refused_before_any_model_loads(tmp_path, data):
    no_model = str(tmp_path / "no-such-model")  # were it loaded, the error would name it instead
    cases = [(dict(w_min=8.0, w_max=4.0), r"w_min=8.0 is above w_max=4.0: give w_min <= w_max"),
             (dict(w_min=-1.0), r"w_min=-1.0 is invalid"),
             (dict(num_ddim_timesteps=30), r"num_ddim_timesteps=30 .* must divide .* 1000 .* such as 50"),
             (dict(num_ddim_timesteps=2000), r"num_ddim_timesteps=2000 .* must divide"),
             (dict(num_ddim_timesteps=0), r"num_ddim_timesteps=0 is invalid"),
             (dict(huber_c=0.0), r"huber_c=0.0 is invalid"),
             (dict(timestep_scaling=-10.0), r"timestep_scaling=-10.0 is invalid: use 10"),
             (dict(data=tmp_path / "nope"), r"data='.*nope' is not a folder.*latentgen shapes-data"),
             (dict(rank=0), r"rank=0")]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            consistency.run(LcmDistillConfig(**{"data": data, "out": tmp_path / "o", "model": no_model, **TINY, **bad}))
    assert not (tmp_path / "o").exists()


def test_a_sample_prompt_the_lcm_sampler_cannot_draw_is_refused_before_training(tmp_path, data, tiny_folder):
    """The samples are drawn with the lcm sampler unless a line names another: 60 steps are more than it takes."""
    with pytest.raises(ValueError, match=r"validation prompt 2: steps=60 is more than the 'lcm' sampler takes"):
        consistency.run(LcmDistillConfig(data=data, out=tmp_path / "o", model=str(tiny_folder), **TINY,
                                         validate_every=2, validation_prompts=["a cat", "a dog --s 60"]))
    assert not (tmp_path / "o").exists()


def test_the_guidance_range_defaults_to_the_models_guidance():
    cfg = LcmDistillConfig(data="d", out="o", steps=1)
    assert cfg.guidance_range(7.5) == (7.5, 15.0) and cfg.guidance_range(4.0) == (4.0, 8.0)
    assert LcmDistillConfig(data="d", out="o", w_max=3.0).guidance_range(4.0) == (3.0, 3.0)
    assert LcmDistillConfig(data="d", out="o", w_min=9.0).guidance_range(4.0) == (9.0, 9.0)
    assert LcmDistillConfig(data="d", out="o", w_min=1.0, w_max=2.0).guidance_range(4.0) == (1.0, 2.0)


def _objective(tiny_folder, **kw):
    from diffusers import DDPMScheduler

    from latentgen.models import loading
    from latentgen.training import network

    cfg = LcmDistillConfig(data="d", out="o", steps=1, rank=2, **kw)
    c = loading.load_components(str(tiny_folder), device="cpu", dtype="fp32", backend="torch")
    network.attach_lora(c, cfg)
    sched = DDPMScheduler.from_config(c.scheduler.config)
    return c, consistency.ConsistencyObjective(c.unet, c.text_encoder, sched, train.tokenize(c.tokenizer, [""]), cfg,
                                               cfg.guidance_range(c.defaults.guidance))


def test_the_teacher_is_the_model_without_its_adapters(tiny_folder):
    from latentgen.models import loading

    c, objective = _objective(tiny_folder)
    base = loading.load_components(str(tiny_folder), device="cpu", dtype="fp32", backend="torch").unet
    for layer in objective.lora_layers:  # a LoRA that changes the output (B starts at zero)
        torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.5)
    x, t, hid = torch.randn(1, 4, 8, 8), torch.tensor([500]), torch.randn(1, 77, c.text_encoder.config.hidden_size)
    with torch.no_grad():
        plain = base(x, t, encoder_hidden_states=hid).sample
        with consistency.adapters_off(objective.lora_layers):
            teacher = c.unet(x, t, encoder_hidden_states=hid).sample
        student = c.unet(x, t, encoder_hidden_states=hid).sample
    assert torch.equal(teacher, plain) and not torch.allclose(student, plain)
    assert all(p.requires_grad for n, p in c.unet.named_parameters() if "lora_" in n)  # trainable again


def test_the_loss_is_finite_and_trains_the_lora_only(tiny_folder):
    c, objective = _objective(tiny_folder)
    g = torch.Generator().manual_seed(0)
    mean, std = torch.randn(3, 4, 8, 8, generator=g), torch.full((3, 4, 8, 8), 0.1)
    ids = train.tokenize(c.tokenizer, ["a red circle on a blue background"] * 3)
    loss = objective(ids, mean, std, train.step_generator(0, 0))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    grads = {n: p.grad for n, p in objective.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)
    again = objective(ids, mean, std, train.step_generator(0, 0))
    assert torch.equal(again, loss.detach())  # a function of the generator's seed alone


def test_it_writes_both_layouts_with_the_lcm_header_and_loads(tiny_folder, data, tmp_path, caplog):
    import latentgen

    path = _run(tiny_folder, data, tmp_path / "a", kohya=True)
    kohya = path.with_suffix(".kohya.safetensors")
    assert path.name == "lcm.safetensors" and kohya.is_file()
    for f in (path, kohya):
        assert lora_io.recommendation(f) == consistency.LCM == lora_io.Recommendation("lcm", "lcm", 4, 1.0)
    meta = safe_open(str(path), "pt").metadata()
    assert meta["latentgen_kind"] == "lcm" and json.loads(meta["latentgen_teacher_guidance"]) == [7.5, 15.0]
    assert json.loads(meta["latentgen_training"])["num_ddim_timesteps"] == 50
    w = load_file(str(path))
    assert any(k.endswith("lora_B.weight") and w[k].abs().sum() > 0 for k in w)  # trained: B starts at zero
    pipe = latentgen.load(tiny_folder)
    with caplog.at_level("INFO", logger="latentgen.lora"):
        pipe.load_lora(path)
    assert "LoRA lcm (lcm) recommends scheduler=lcm, steps=4, guidance=1" in caplog.text
    assert pipe.loras.recommended("lcm") == consistency.LCM
    image = pipe.generate("a purple circle", steps=4, scheduler="lcm", guidance=1.0)[0]
    assert "Sampler: LCM" in image.info["parameters"]


def test_resume_after_a_kill_is_bit_identical(tiny_folder, data, tmp_path, monkeypatch, kill_after):
    kw = dict(grad_accum=2, lr_schedule="cosine", w_min=2.0, w_max=6.0)
    full = load_file(str(_run(tiny_folder, data, tmp_path / "full", **kw)))
    kill_after(2)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_folder, data, tmp_path / "killed", **kw)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="--resume"):  # a second run into the same folder must opt in
        _run(tiny_folder, data, tmp_path / "killed", **kw)
    resumed = load_file(str(_run(tiny_folder, data, tmp_path / "killed", resume=True, **kw)))
    assert resumed.keys() == full.keys()
    assert all(torch.equal(resumed[k], full[k]) for k in full)
    with pytest.raises(ValueError, match="another run"):  # other distillation settings, same folder
        _run(tiny_folder, data, tmp_path / "killed", resume=True, **{**kw, "w_max": 7.0})


def _cli(data, out, tiny_folder, *flags, launcher=()):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", *(("accelerate.commands.launch", *launcher, "-m") if launcher else ()),
           "latentgen.cli", "distill-lcm", str(data), "--out", str(out), "--model", str(tiny_folder),
           "--rank", "2", "--steps", "2", "--batch", "1", "--save-every", "2", "--resolution", "64", *flags]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return load_file(str(out / "lcm.safetensors"))


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the 2 processes are CPU ones (gloo)")
def test_two_processes_equal_one_with_twice_the_micro_batches(tiny_folder, data, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` (on CPU: 2 processes in a gloo group), a micro-batch
    each, trains the very LoRA of one process with ``--grad-accum 2``: same images, same draws, and DDP's mean
    of the two gradients is the accumulated half of each."""
    two = _cli(data, tmp_path / "two", tiny_folder, launcher=("--multi_gpu", "--num_processes", "2",
                                                            "--num_machines", "1", "--mixed_precision", "no",
                                                            "--dynamo_backend", "no"))
    one = _cli(data, tmp_path / "one", tiny_folder, "--grad-accum", "2")
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["checkpoints", "lcm.safetensors"]
    meta = safe_open(str(tmp_path / "two" / "lcm.safetensors"), "pt").metadata()
    assert json.loads(meta["latentgen_training"])["processes"] == 2
    assert one.keys() == two.keys() and any(one[k].abs().sum() > 0 for k in one if "lora_B" in k)
    assert all(torch.equal(one[k], two[k]) for k in one)


def test_an_sdxl_model_distills_with_both_encoders_the_pooled_text_and_size_numbers(xl_folder, xl_refiner_folder,
                                                                                    data, tmp_path):
    """SDXL: the teacher and the student read both encoders' states, the pooled text and the size numbers; the empty
    prompt is zeros where the model says so (as drawing reads it). The loss depends on the size numbers, and the LoRA
    it writes (kohya's SDXL names too) loads and draws with the lcm sampler; a refiner is refused."""
    from diffusers import DDPMScheduler

    import latentgen
    from latentgen.models import loading
    from latentgen.training import network

    c = loading.load_components(str(xl_folder), device="cpu", dtype="fp32", backend="torch")
    cfg = LcmDistillConfig(data=data, out=tmp_path / "x", steps=1, rank=2)
    network.attach_lora(c, cfg)
    g = torch.Generator().manual_seed(0)
    mean, std = torch.randn(2, 4, 32, 32, generator=g), torch.full((2, 4, 32, 32), 0.1)
    ids, ids_2 = (train.tokenize(t, ["a red circle"] * 2) for t in (c.tokenizer, c.xl.tokenizer_2))

    def loss(size):
        objective = consistency.ConsistencyObjective(c.unet, c.text_encoder, DDPMScheduler.from_config(
            c.scheduler.config), train.tokenize(c.tokenizer, [""]), cfg, (5.0, 10.0), c.xl, size)
        return objective(ids, mean, std, train.step_generator(0, 0), input_ids_2=ids_2)

    first = loss(64)
    assert torch.isfinite(first) and first > 0 and not torch.equal(first.detach(), loss(128).detach())
    cond, uncond = consistency.ConsistencyObjective(c.unet, c.text_encoder, DDPMScheduler.from_config(
        c.scheduler.config), train.tokenize(c.tokenizer, [""]), cfg, (5.0, 10.0), c.xl, 64).texts(ids, ids_2)
    assert c.xl.force_zeros and uncond[0].abs().sum() == 0 and uncond[1]["text_embeds"].abs().sum() == 0
    assert cond[1]["time_ids"].tolist() == [[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * 2
    path = _run(xl_folder, data, tmp_path / "a", kohya=True)
    assert any(k.startswith("lora_unet_") for k in load_file(str(path.with_suffix(".kohya.safetensors"))))
    pipe = latentgen.load(xl_folder)
    pipe.load_lora(path)
    assert pipe.loras.recommended("lcm") == consistency.LCM
    assert "Sampler: LCM" in pipe.generate("a purple circle", steps=4, scheduler="lcm", guidance=1.0)[0].info["parameters"]
    with pytest.raises(ValueError, match="is an SDXL refiner: train on the SDXL base model"):
        _run(xl_refiner_folder, data, tmp_path / "r")
