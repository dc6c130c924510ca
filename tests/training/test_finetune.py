"""latentgen.training.finetune: finetune-lora on the tiny model: bad input, determinism, exact resume, 2 processes,
mixed precision, prior preservation; on the tiny SDXL model, both text encoders and kohya's SDXL names."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from latentgen.lora import formats as lora_io
from latentgen.lora import names as lora_names
from latentgen.training import captioned, finetune
from latentgen.training.finetune import LoraTrainConfig

TINY = dict(rank=2, steps=4, batch=2, save_every=2, resolution=64, lr=1e-3)


def _run(tiny_folder, data, out, **kw):
    return finetune.run(LoraTrainConfig(data=data, out=out, model=str(tiny_folder), **{**TINY, **kw}))


def test_bad_data_and_settings(tmp_path, data, tiny_folder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no images"):
        captioned.read_dataset(tmp_path / "empty")
    (tmp_path / "nocap").mkdir()
    (tmp_path / "nocap" / "x.png").write_bytes((data / "00000.png").read_bytes())
    with pytest.raises(ValueError, match="no caption.*default-caption"):
        captioned.read_dataset(tmp_path / "nocap")
    assert captioned.read_dataset(tmp_path / "nocap", default_caption="a shape")[0][1] == "a shape"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        captioned.read_dataset(tmp_path / "nope")
    for bad in (dict(rank=0), dict(rank=-3), dict(steps=0), dict(crop="zoom"), dict(conv_rank=-1),
                dict(conv_alpha=0.0)):
        with pytest.raises(ValueError, match=list(bad)[0]):
            _run(tiny_folder, data, tmp_path / "o", **bad)
    with pytest.raises(ValueError, match="exactly one of steps"):
        _run(tiny_folder, data, tmp_path / "o", epochs=2)  # steps given too


def test_sdxl_base_models_train_both_encoders_in_both_layouts(xl_folder, xl_refiner_folder, data, tmp_path):
    """An SDXL LoRA: adapters on the U-Net (attention and convolutions) and both text encoders, trained through
    both encoders' states, the pooled text and the size numbers; kohya's file in kohya's SDXL names (SGM U-Net,
    lora_te1_/lora_te2_) draws what the peft file draws."""
    from safetensors import safe_open

    import latentgen

    path = _run(xl_folder, data, tmp_path / "x", train_text_encoder=True, conv_rank=2, kohya=True)
    kohya = path.with_suffix(".kohya.safetensors")
    w, k = load_file(str(path)), load_file(str(kohya))
    layers = {}
    for part in ("unet.", "text_encoder.", "text_encoder_2."):  # trained: B starts at zero
        ups = {n: v.abs().sum() > 0 for n, v in w.items() if n.startswith(part) and n.endswith("lora_B.weight")}
        assert ups and all(ups.values()), part
        layers[part] = {int(n.split("layers.")[1].split(".")[0]) for n in ups if "layers." in n}
    base = latentgen.load(xl_folder)
    n, n2 = base.text_encoder.config.num_hidden_layers, base.xl.text_encoder_2.config.num_hidden_layers
    # ViT-L's last layer is never read (SDXL reads the penultimate states): no adapters there; bigG's pooled text
    # reads all of its layers
    assert layers["text_encoder."] == set(range(n - 1)) and layers["text_encoder_2."] == set(range(n2))
    assert any(n.startswith("lora_unet_input_blocks_") for n in k) and any(n.startswith("lora_te2_") for n in k)
    assert any(n.startswith("lora_te1_") for n in k) and not any(n.startswith(("lora_unet_down_blocks",
                                                                                "lora_te_")) for n in k)
    assert safe_open(str(path), "pt").metadata()["ss_base_model_version"] == "sdxl_base_v1-0"
    images = []
    for p in (None, path, kohya):
        pipe = latentgen.load(xl_folder)
        if p is not None:
            pipe.load_lora(p)
        images.append(torch.tensor(np.asarray(pipe.generate("a purple circle", seed=1, steps=2)[0], np.int16)))
    assert (images[0] - images[1]).abs().max() > 0 and (images[1] - images[2]).abs().max() <= 1
    with pytest.raises(ValueError, match="is an SDXL refiner: train on the SDXL base model"):
        _run(xl_refiner_folder, data, tmp_path / "r")


@pytest.mark.slow
def test_same_seed_same_lora_and_it_loads(tiny_folder, data, tmp_path):
    import latentgen

    (tmp_path / "prompts.txt").write_text("# kohya's sample prompt file\na red square --w 32 --s 2 --d 7\n")
    a = _run(tiny_folder, data, tmp_path / "a", kohya=True, validate_every=2, sample_at_first=True,
             validation_prompts=["a purple circle on a red background --s 3 --ss ddim"],
             sample_prompts=tmp_path / "prompts.txt", sample_sampler="k_euler")
    b = _run(tiny_folder, data, tmp_path / "b")  # no sample images: they must not disturb training
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(k.endswith("to_out.0.lora_B.weight") for k in wa)
    assert (tmp_path / "a" / "lora.kohya.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "a" / "samples").iterdir()) == [
        *(f"lora_{s:06d}_{i:02d}_{seed}.png" for s in (0, 2, 4) for i, seed in ((0, 0), (1, 7))),
        "step-0000000.png", "step-0000002.png", "step-0000004.png"]
    pipe = latentgen.load(tiny_folder)
    # before the first step: the base model's images, with each line's settings
    first = Image.open(tmp_path / "a" / "samples" / "lora_000000_01_7.png")
    assert first.tobytes() == pipe.generate("a red square", width=32, steps=2, seed=7, scheduler="euler")[0].tobytes()
    pipe.load_lora(a)  # the last step's: the trained LoRA's
    last = Image.open(tmp_path / "a" / "samples" / "lora_000004_00_0.png")
    assert last.tobytes() == pipe.generate("a purple circle on a red background", steps=3, seed=0,
                                           scheduler="ddim")[0].tobytes()
    assert "Lora hashes" in pipe.generate("a purple circle", steps=1)[0].info["parameters"]
    with pytest.raises(ValueError, match="--resume"):  # a second run into the same folder must opt in
        _run(tiny_folder, data, tmp_path / "a")


def test_conv_adapters_train_and_load_in_both_layouts(tiny_folder, data, tmp_path):
    """LoCon (``conv_rank``, kohya's conv_dim): each 3x3 ResNet/sampler conv gets an adapter with its own rank
    and alpha, beside rank-``rank`` attention adapters; both layouts hold the same deltas and draw one image."""
    from safetensors import safe_open

    import latentgen

    path = _run(tiny_folder, data, tmp_path / "c", conv_rank=3, conv_alpha=1.5, kohya=True)
    base = latentgen.load(tiny_folder)
    convs = lora_names.conv_targets(base.unet)
    assert len(convs) >= 4 and all(n.endswith(("conv1", "conv2", "samplers.0.conv")) for n in convs)
    w = load_file(str(path))
    for n in convs:
        down, up = w[f"unet.{n}.lora_A.weight"], w[f"unet.{n}.lora_B.weight"]
        assert down.shape[0] == 3 and down.shape[2:] == (3, 3) and up.shape[1:] == (3, 1, 1), n
        assert up.abs().sum() > 0, n  # trained: B starts at zero
    attention = [v for k, v in w.items() if k.endswith("to_q.lora_A.weight")]
    assert attention and all(v.shape[0] == 2 for v in attention)  # rank 2, as before
    assert json.loads(safe_open(str(path), "pt").metadata()["ss_network_args"]) == {"conv_dim": 3, "conv_alpha": 1.5}
    models = {"unet": base.unet, "text_encoder": base.text_encoder}
    peft_file, kohya_file = (lora_io.read(p, models)[0] for p in (path, path.with_suffix(".kohya.safetensors")))
    assert peft_file.modules["unet"][convs[0]][2] == kohya_file.modules["unet"][convs[0]][2] == 1.5
    for n in convs:
        assert torch.allclose(peft_file.delta("unet", n), kohya_file.delta("unet", n))
    images = []
    for p in (None, path, path.with_suffix(".kohya.safetensors")):
        pipe = latentgen.load(tiny_folder)
        if p is not None:
            pipe.load_lora(p)
        images.append(torch.tensor(np.asarray(pipe.generate("a purple circle", seed=1, steps=2)[0], np.int16)))
    assert (images[0] - images[1]).abs().max() > 0 and (images[1] - images[2]).abs().max() <= 1


def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_folder, data, tmp_path, monkeypatch, kill_after):
    full = load_file(str(_run(tiny_folder, data, tmp_path / "full", train_text_encoder=True, snr_gamma=5.0,
                              noise_offset=0.05, lr_schedule="cosine", grad_accum=2)))
    kill_after(2)  # killed right after the step-2 checkpoint
    kw = dict(train_text_encoder=True, snr_gamma=5.0, noise_offset=0.05, lr_schedule="cosine", grad_accum=2)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_folder, data, tmp_path / "killed", **kw)
    monkeypatch.undo()
    resumed = load_file(str(_run(tiny_folder, data, tmp_path / "killed", resume=True, **kw)))
    assert resumed.keys() == full.keys()
    assert any(k.startswith("text_encoder.") for k in full)
    for k in full:
        assert torch.allclose(resumed[k], full[k], atol=1e-6), k
    with pytest.raises(ValueError, match="another run"):  # other settings, same folder
        _run(tiny_folder, data, tmp_path / "killed", resume=True, **{**kw, "lr": 5e-4})


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [["--multi_gpu"], ["--cpu"]])
def test_accelerate_launch_two_processes_write_one_file(tiny_folder, data, tmp_path, launcher):
    """``--multi_gpu`` on a machine without CUDA starts 2 processes in a gloo group (MULTI_CPU); this
    accelerate's ``--cpu`` flag runs its simple launcher, a single process: both write one file. The text encoder
    trains at clip skip 2: its last layer gets no adapters, which DDP would find unused and stop on."""
    from safetensors import safe_open

    out = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "latentgen.cli", "finetune-lora", str(data), "--out", str(out), "--model", str(tiny_folder),
           "--rank", "2", "--steps", "3", "--batch", "1", "--save-every", "3", "--resolution", "64",
           "--train-text-encoder", "--clip-skip", "2"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "lora.safetensors"]
    assert len(list((out / "checkpoints").iterdir())) == 1
    meta = json.loads(safe_open(str(out / "lora.safetensors"), "pt").metadata()["latentgen_training"])
    if launcher == ["--multi_gpu"] and not torch.cuda.is_available():
        assert meta["processes"] == 2  # data sharded over two ranks, one writer


def test_epochs_mixed_precision_and_gradient_checkpointing(tiny_folder, data, tmp_path):
    """bf16 autocast, gradient checkpointing, epochs -> steps, resize crop: the run trains and saves."""
    from accelerate.state import AcceleratorState
    from safetensors import safe_open

    kw = {**TINY, "steps": None}
    AcceleratorState._reset_state(True)  # accelerate fixes the precision once per process
    try:
        path = finetune.run(LoraTrainConfig(data=data, out=tmp_path, model=str(tiny_folder), epochs=2,
                                            crop="resize", mixed_precision="bf16", gradient_checkpointing=True, **kw))
    finally:
        AcceleratorState._reset_state(True)
    meta = safe_open(str(path), "pt").metadata()
    assert meta["ss_max_train_steps"] == "6"  # 2 epochs x 6 images / batch 2
    assert json.loads(meta["latentgen_training"])["mixed_precision"] == "bf16"


@pytest.mark.slow
def test_prior_images_are_drawn_once_and_trained_beside_the_data(tiny_folder, data, tmp_path):
    """Prior preservation: the base model draws its own images of prior prompts, which then train
    beside the data (a prior image per data image), so the LoRA changes; a second run reuses them."""
    from safetensors import safe_open

    prior = tmp_path / "prior"
    kw = dict(prior_data=prior, prior_prompts=["a red circle on a blue background", "a white square on a black background"],
              prior_images=3)
    path = _run(tiny_folder, data, tmp_path / "a", **kw)
    assert sorted(p.name for p in prior.iterdir()) == [f"prior-0000{i}.{e}" for i in range(3) for e in ("png", "txt")]
    assert (prior / "prior-00001.txt").read_text().strip() == "a white square on a black background"
    meta = safe_open(str(path), "pt").metadata()
    assert meta["ss_num_reg_images"] == "3" and float(meta["latentgen_train_seconds"]) > 0
    plain = load_file(str(_run(tiny_folder, data, tmp_path / "plain")))
    with_prior = load_file(str(path))
    assert any(not torch.equal(plain[k], with_prior[k]) for k in plain)
    stamps = {p.name: p.stat().st_mtime_ns for p in prior.iterdir()}
    again = load_file(str(_run(tiny_folder, data, tmp_path / "b", **kw)))  # a full folder: nothing is redrawn
    assert {p.name: p.stat().st_mtime_ns for p in prior.iterdir()} == stamps
    assert all(torch.equal(again[k], with_prior[k]) for k in again)


def test_bad_prior_settings(tiny_folder, data, tmp_path):
    with pytest.raises(ValueError, match="prior_prompts need prior_data"):
        _run(tiny_folder, data, tmp_path / "o", prior_prompts=["a red circle"])
    for bad in (dict(prior_weight=0.0), dict(prior_images=0)):
        with pytest.raises(ValueError, match=list(bad)[0]):
            _run(tiny_folder, data, tmp_path / "o", prior_data=tmp_path / "p", **bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no images"):  # checked before any model loads
        _run(tiny_folder, data, tmp_path / "o", prior_data=tmp_path / "empty")

def test_kohya_repeat_folders_tag_shuffles_and_per_part_learning_rates(tiny_folder, data, tmp_path):
    from safetensors import safe_open

    pairs = captioned.read_dataset(data)
    for folder, picked in (("3_shapes", pairs[:2]), ("1_other", pairs[2:3])):
        (tmp_path / "d" / folder).mkdir(parents=True)
        for p, cap in picked:
            (tmp_path / "d" / folder / p.name).write_bytes(p.read_bytes())
            (tmp_path / "d" / folder / p.with_suffix(".caption").name).write_text(cap.replace(" on ", ", on "))
    path = _run(tiny_folder, tmp_path / "d", tmp_path / "out", steps=None, epochs=1, caption_extension=".caption",
                shuffle_caption=True, keep_tokens=1, caption_tag_dropout=0.1, train_text_encoder=True,
                unet_lr=1e-3, text_encoder_lr=1e-5, multires_noise_iterations=3, ip_noise_gamma=0.1,
                debiased_estimation=True)
    meta = safe_open(str(path), "pt").metadata()
    assert meta["ss_num_train_images"] == "7" and meta["ss_max_train_steps"] == "4"  # 2 x 3 + 1 x 1, batch 2
    assert (meta["ss_shuffle_caption"], meta["ss_keep_tokens"], meta["ss_caption_tag_dropout_rate"]) == \
        ("True", "1", "0.1")
    assert (meta["ss_unet_lr"], meta["ss_text_encoder_lr"]) == ("0.001", "1e-05")
    assert (meta["ss_multires_noise_iterations"], meta["ss_ip_noise_gamma"], meta["ss_debiased_estimation"]) == \
        ("3", "0.1", "True")
    w = load_file(str(path))
    moved = {part: max(w[k].abs().max().item() for k in w if k.startswith(part) and k.endswith("lora_B.weight"))
             for part in ("unet.", "text_encoder.")}  # B starts at 0; Adam moves it about lr per step
    assert moved["text_encoder."] < 5e-5 < 1e-3 < moved["unet."]


def test_network_weights_go_on_from_a_lora(tiny_folder, data, tmp_path):
    a = _run(tiny_folder, data, tmp_path / "a", train_text_encoder=True, conv_rank=2, conv_alpha=1.0)
    still = _run(tiny_folder, data, tmp_path / "b", network_weights=a, lr=1e-12)  # its weights, its ranks, alphas
    wa, wb = load_file(str(a)), load_file(str(still))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-9) for k in wa)
    assert all(torch.equal(wa[k], wb[k]) for k in wa if k.startswith("text_encoder."))  # kept, not trained
    assert safe_alphas(a) == safe_alphas(still)
    moved = load_file(str(_run(tiny_folder, data, tmp_path / "c", network_weights=a, train_text_encoder=True)))
    for part in ("unet.", "text_encoder."):
        assert any(not torch.allclose(wa[k], moved[k], atol=1e-5) for k in wa if k.startswith(part)), part
    with pytest.raises(ValueError, match="conv_rank is read from network_weights"):
        _run(tiny_folder, data, tmp_path / "d", network_weights=a, conv_rank=4)


def safe_alphas(path):
    from safetensors import safe_open

    return json.loads(safe_open(str(path), "pt").metadata()["lora_adapter_metadata"])


def _shaped_data(data, folder):
    """Three captioned pictures of the data, one wide (96 x 64), one tall (64 x 96), one square."""
    folder.mkdir(parents=True)
    for (p, cap), size in zip(captioned.read_dataset(data), ((96, 64), (64, 96), (64, 64))):
        Image.open(p).resize(size).save(folder / p.name)
        (folder / p.name).with_suffix(".txt").write_text(cap)
    return folder


@pytest.mark.parametrize("xl", [False, True])
def test_aspect_ratio_buckets_train_each_shape_at_its_own_size(tiny_folder, xl_folder, data, tmp_path, monkeypatch,
                                                               xl):
    from safetensors import safe_open

    seen = []  # (latent shape, SDXL size numbers) of every batch the objective gets
    forward = finetune.LoraObjective.forward

    def spy(self, input_ids, mean, std, generator, weights=None, input_ids_2=None, time_ids=None):
        seen.append((tuple(mean.shape), None if time_ids is None else time_ids.tolist()))
        return forward(self, input_ids, mean, std, generator, weights, input_ids_2, time_ids)

    monkeypatch.setattr(finetune.LoraObjective, "forward", spy)
    shaped = _shaped_data(data, tmp_path / "d")
    path = _run(xl_folder if xl else tiny_folder, shaped, tmp_path / "o", steps=None, epochs=2, enable_bucket=True)
    meta = safe_open(str(path), "pt").metadata()
    info = json.loads(meta["ss_bucket_info"])["buckets"]
    assert meta["ss_enable_bucket"] == "True" and meta["ss_max_train_steps"] == "6"  # 3 one-image buckets x 2
    assert sorted(tuple(b["resolution"]) for b in info.values()) == [(48, 80), (64, 64), (80, 48)]
    shapes = {s for s, _ in seen}
    assert len(shapes) == 3 and {s[3] / s[2] for s in shapes} == {48 / 80, 1.0, 80 / 48}  # each bucket's own latents
    if xl:  # original h, w; crop top, left in the resized picture; target h, w, as SDXL reads them
        assert {tuple(row) for _, t in seen for row in t} == {(64, 96, 2, 0, 48, 80), (96, 64, 0, 2, 80, 48),
                                                             (64, 64, 0, 0, 64, 64)}
    else:
        assert all(t is None for _, t in seen)


def test_clip_skip_trains_and_samples_on_the_penultimate_layer_and_flip_aug_mirrors(tiny_folder, data, tmp_path,
                                                                                    monkeypatch):
    import latentgen
    from diffusers import DDPMScheduler
    from safetensors import safe_open

    from latentgen.models import loading
    from latentgen.training import loop as train
    from latentgen.training.kohya_options import LossOptions

    c = loading.load_components(str(tiny_folder), dtype="fp32", backend="torch")
    ids = train.tokenize(c.tokenizer, ["a red circle", "a blue square"])
    mean, std = torch.randn(2, 4, 8, 8), torch.ones(2, 4, 8, 8) * 0.1
    noise = DDPMScheduler.from_config(c.scheduler.config)

    def loss(skip, hidden=None):
        if hidden is None:
            objective = finetune.LoraObjective(c.unet, c.text_encoder, noise, LossOptions(), clip_skip=skip)
            return objective(ids, mean, std, torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(0)  # the objective's draws: the latent, then noise and timesteps
        return train.diffusion_loss(c.unet, hidden, train.sample_latents(mean, std, g), noise, g)

    with torch.no_grad():  # kohya's clip_skip 2: the penultimate layer's states through the final layer norm
        states = c.text_encoder(ids, output_hidden_states=True).hidden_states
        penultimate = c.text_encoder.final_layer_norm(states[-2])  # (transformers 5: no text_model level)
        assert torch.equal(loss(2), loss(0, penultimate)) and not torch.equal(loss(2), loss(1))

    mirrored = []  # how many images of each batch the objective gets mirrored
    latents = captioned.Batches.latents
    monkeypatch.setattr(captioned.Batches, "latents", lambda self, idx, m=None: mirrored.append(sum(m)) or
                        latents(self, idx, m))
    path = _run(tiny_folder, data, tmp_path / "o", clip_skip=2, flip_aug=True, steps=8,
                validation_prompts=["a purple circle --s 2"], validate_every=8)
    meta = safe_open(str(path), "pt").metadata()
    assert (meta["ss_clip_skip"], meta["ss_flip_aug"]) == ("2", "True")
    assert 0 < sum(mirrored) < 2 * 8  # some of the 16 draws mirrored, not all
    sample = Image.open(tmp_path / "o" / "samples" / "lora_000008_00_0.png")
    assert "Clip skip: 2" in sample.info["parameters"]  # drawn as the LoRA was trained
    pipe = latentgen.load(tiny_folder)
    pipe.load_lora(path)
    assert sample.tobytes() == pipe.generate("a purple circle", steps=2, seed=0, clip_skip=2)[0].tobytes()


def test_bad_clip_skip(tiny_folder, xl_folder, data, tmp_path):
    with pytest.raises(ValueError, match=r"clip_skip=0 is invalid: use 1 \(the last layer\) or 2"):
        _run(tiny_folder, data, tmp_path / "a", clip_skip=0)
    with pytest.raises(ValueError, match="clip_skip=9 is invalid: this text encoder has 5 layers"):
        _run(tiny_folder, data, tmp_path / "b", clip_skip=9)
    with pytest.raises(ValueError, match="clip_skip=2 is for SD 1.x/2.x models"):
        _run(xl_folder, data, tmp_path / "c", clip_skip=2)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()  # refused before any training work


def test_bucket_no_upscale_trains_each_image_at_its_own_size(tiny_folder, data, tmp_path):
    from safetensors import safe_open

    shaped = _shaped_data(data, tmp_path / "d")  # 96 x 64 and 64 x 96: above 64^2 pixels, shrunk; 64 x 64: kept
    path = _run(tiny_folder, shaped, tmp_path / "o", steps=None, epochs=1, enable_bucket=True, bucket_no_upscale=True)
    meta = safe_open(str(path), "pt").metadata()
    info = json.loads(meta["ss_bucket_info"])["buckets"]
    assert meta["ss_bucket_no_upscale"] == "True"
    assert sorted(tuple(b["resolution"]) for b in info.values()) == [(48, 72), (64, 64), (72, 48)]
    Image.open(shaped / sorted(p.name for p in shaped.glob("*.png"))[0]).resize((6, 20)).save(shaped / "tiny.png")
    (shaped / "tiny.txt").write_text("a tiny picture")
    with pytest.raises(ValueError, match=r"tiny.png is 6x20: a side under the bucket step 8"):
        _run(tiny_folder, shaped, tmp_path / "o2", enable_bucket=True, bucket_no_upscale=True)
    with pytest.raises(ValueError, match="bucket_no_upscale shapes the aspect-ratio buckets: add enable_bucket"):
        _run(tiny_folder, shaped, tmp_path / "o3", bucket_no_upscale=True)
