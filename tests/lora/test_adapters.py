"""latentgen.lora.adapters: LoRAs applied to a pipeline; both file layouts and diffusers' load_lora_weights
draw the same images; scales, several LoRAs, fuse/unfuse/unload restore the weights bit for bit."""

import pytest
import torch
from conftest import max_diff as _max_diff
from conftest import random_lora

import latentgen
from latentgen.lora import formats as lora_io


def test_kohya_and_diffusers_layouts_give_the_same_images(tiny_folder, lora_files):
    peft_file, kohya_file, _ = lora_files
    images = []
    for f in (peft_file, kohya_file):
        p = latentgen.load(tiny_folder)
        p.load_lora(f, scale=0.8)
        images.append(p.generate("a red cat", seed=4, steps=3))
    base = latentgen.load(tiny_folder).generate("a red cat", seed=4, steps=3)
    assert _max_diff(images[0], images[1]) <= 1
    assert _max_diff(images[0], base) > 5  # the LoRA does something


@pytest.mark.parametrize("which", [0, 1])
def test_diffusers_load_lora_weights_has_the_same_effect(tiny_folder, lora_files, which):
    from diffusers import StableDiffusionPipeline

    path = lora_files[which]
    ref = StableDiffusionPipeline.from_pretrained(tiny_folder, safety_checker=None)
    ref.set_progress_bar_config(disable=True)
    ref.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="x")
    ref.set_adapters(["x"], adapter_weights=[0.7])
    theirs = ref("a blue dog", num_inference_steps=3, generator=torch.Generator().manual_seed(2),
                 height=64, width=64).images
    p = latentgen.load(tiny_folder)
    p.load_lora(path, scale=0.7)
    ours = p.generate("a blue dog", seed=2, steps=3, scheduler=None)
    assert _max_diff(ours, theirs) <= 1


def test_per_part_scales_draw_as_diffusers_per_component_weights(tiny_folder, lora_files):
    from diffusers import StableDiffusionPipeline

    path = lora_files[1]
    ref = StableDiffusionPipeline.from_pretrained(tiny_folder, safety_checker=None)
    ref.set_progress_bar_config(disable=True)
    ref.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="x")
    ref.set_adapters(["x"], adapter_weights=[{"text_encoder": 0.2, "unet": 0.9}])
    theirs = ref("a blue dog", num_inference_steps=3, generator=torch.Generator().manual_seed(2),
                 height=64, width=64).images
    p = latentgen.load(tiny_folder)
    p.load_lora(path, name="x", scale={"text_encoder": 0.2, "unet": 0.9})
    ours = p.generate("a blue dog", seed=2, steps=3, scheduler=None)
    assert _max_diff(ours, theirs) <= 1
    p.set_lora_scale("x", 0.9)
    assert _max_diff(p.generate("a blue dog", seed=2, steps=3, scheduler=None), ours) > 2  # the text encoder's counts


def test_a1111s_te_and_unet_tag_weights(fresh, tmp_path):
    from latentgen.backends import weights

    path = lora_io.save(random_lora(fresh, seed=1), tmp_path / "a.safetensors")
    ids = fresh.tokenizer("a cat", return_tensors="pt").input_ids
    with torch.no_grad():
        bare_text = fresh.text_encoder(ids)[0]
    fresh.load_lora(path, name="a", scale=(0.0, 0.5))  # (TE, UNET), as <lora:a:0:0.5>
    assert fresh.loras.loaded["a"].scale == {"text_encoder": 0.0, "unet": 0.5}
    with torch.no_grad():
        assert torch.equal(fresh.text_encoder(ids)[0], bare_text)  # te 0: the text encoder as without the LoRA
    unet_half = weights.effective(fresh.unet)[0]
    fresh.set_lora_scale("a", 0.5)
    with torch.no_grad():
        assert not torch.equal(fresh.text_encoder(ids)[0], bare_text)
    assert all(torch.equal(v, unet_half[k]) for k, v in weights.effective(fresh.unet)[0].items())
    untagged = fresh.generate("a cat", seed=1, steps=2)[0]
    fresh.set_lora_scale("a", 1.0)
    tagged = fresh.generate("a cat <lora:a:0.5:0.5>", seed=1, steps=2)[0]
    assert _max_diff([tagged], [untagged]) == 0 and fresh.loras.loaded["a"].scale == 1.0  # the tag's, then back
    split = fresh.generate("a cat <lora:a:0:unet=0.5>", seed=1, steps=2)[0]
    fresh.set_lora_scale("a", {"text_encoder": 0, "unet": 0.5})
    assert _max_diff([split], fresh.generate("a cat", seed=1, steps=2)) == 0
    assert 'Lora scales: "a: 0:0.5"' in split.info["parameters"] and _max_diff([split], [untagged]) > 2
    for bad, says in [({"vae": 1.0}, r"has parts \['vae'\]: use the keys 'text_encoder' and 'unet'"),
                      ({"unet": float("inf")}, r"scale\['unet'\]=inf is invalid"), ((1.0, "x"), "invalid")]:
        with pytest.raises(ValueError, match=says):
            fresh.set_lora_scale("a", bad)
    with pytest.raises(ValueError, match=r"<lora:a:1:inf>' has weight 'inf', not a finite number"):
        fresh.generate("a cat <lora:a:1:inf>", steps=1)


def test_fuse_unfuse_and_unload_restore_weights_bit_for_bit(fresh, lora_files):
    before = {k: v.clone() for m in (fresh.unet, fresh.text_encoder) for k, v in m.state_dict().items()}
    fresh.load_lora(lora_files[0], name="a", scale=0.9)
    fresh.load_lora(lora_files[1], name="b", scale=0.3)
    unfused = fresh.generate("a cat", seed=1, steps=2)
    fresh.fuse_lora()
    assert _max_diff(fresh.generate("a cat", seed=1, steps=2), unfused) <= 1
    fresh.unfuse_lora()
    for m in (fresh.unet, fresh.text_encoder):
        for k, v in m.state_dict().items():
            if "lora_" not in k:
                assert torch.equal(v, before[k.replace(".base_layer", "")]), k
    fresh.unload_lora()
    after = {k: v for m in (fresh.unet, fresh.text_encoder) for k, v in m.state_dict().items()}
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_several_loras_and_scales(fresh, tiny_folder, tmp_path):
    a = lora_io.save(random_lora(fresh, seed=1), tmp_path / "a.safetensors")
    b = lora_io.save(random_lora(fresh, seed=2), tmp_path / "b.safetensors", "kohya")
    base = fresh.generate("a cat", seed=0, steps=2)
    fresh.load_lora(a, scale=0.5)
    fresh.load_lora(b, scale=0.5)
    both = fresh.generate("a cat", seed=0, steps=2)
    text = both[0].info["parameters"]
    assert f"a: {lora_io.file_hash(a)}" in text and f"b: {lora_io.file_hash(b)}" in text
    fresh.set_lora_scale("a", 0.0)
    fresh.set_lora_scale("b", 0.0)
    assert _max_diff(fresh.generate("a cat", seed=0, steps=2), base) <= 1
    fresh.set_lora_scale("a", 0.5)
    only_a = latentgen.load(tiny_folder)
    only_a.load_lora(a, scale=0.5)
    assert _max_diff(fresh.generate("a cat", seed=0, steps=2), only_a.generate("a cat", seed=0, steps=2)) <= 1
    assert _max_diff(both, only_a.generate("a cat", seed=0, steps=2)) > 2
    fresh.unload_lora("b")
    assert _max_diff(fresh.generate("a cat", seed=0, steps=2), only_a.generate("a cat", seed=0, steps=2)) <= 1
    with pytest.raises(ValueError, match="no LoRA named 'b'"):
        fresh.set_lora_scale("b", 1.0)
    with pytest.raises(ValueError, match="already loaded"):
        fresh.load_lora(a)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True, "0.5"])
def test_a_bad_scale_is_refused_before_any_file_is_read(fresh, bad):
    with pytest.raises(ValueError, match="scale=.* is invalid: use a finite number"):
        fresh.load_lora("no-such-file.safetensors", scale=bad)
    assert fresh.loras.loaded == {}


def test_a_parked_lora_computes_nothing_and_comes_back_without_a_read(pipe, tmp_path, monkeypatch):
    import os
    import shutil

    import numpy as np

    from conftest import max_diff, random_lora
    from latentgen.lora import formats as lora_formats

    a = lora_formats.save(random_lora(pipe, seed=1), tmp_path / "a.safetensors", "diffusers")
    bare = pipe.generate("a cat", seed=1, steps=2)
    pipe.load_lora(a, scale=0.9)
    with_a = pipe.generate("a cat", seed=1, steps=2)
    pipe.loras.park("a")
    assert pipe.loras.loaded == {} and max_diff(pipe.generate("a cat", seed=1, steps=2), bare) == 0
    reads, real = [], lora_formats.read
    monkeypatch.setattr(lora_formats, "read", lambda *x, **k: reads.append(x) or real(*x, **k))
    pipe.load_lora(a, scale=0.9)  # the same file: active again, not read
    assert reads == [] and max_diff(pipe.generate("a cat", seed=1, steps=2), with_a) == 0
    pipe.loras.park("a")
    shutil.copy(lora_formats.save(random_lora(pipe, seed=2), tmp_path / "b.safetensors", "diffusers"), a)
    os.utime(a, ns=(1, 1))  # another file under the same name: read again
    pipe.load_lora(a, scale=0.9)
    assert len(reads) == 1 and max_diff(pipe.generate("a cat", seed=1, steps=2), with_a) > 0
    pipe.unload_lora()
    for i in range(pipe.loras.PARKED + 2):  # the most recent few are kept
        pipe.load_lora(a, name=f"n{i}")
        pipe.loras.park(f"n{i}")
    assert list(pipe.loras.parked) == [f"n{i}" for i in range(2, pipe.loras.PARKED + 2)]
    pipe.unload_lora()  # all, parked ones too: the model as loaded
    assert pipe.loras.parked == {} and not any("lora" in n for n, _ in pipe.unet.named_parameters())
    assert np.array_equal(np.asarray(pipe.generate("a cat", seed=1, steps=2)[0]), np.asarray(bare[0]))


def test_a_lora_that_recommends_its_sampling_says_so_when_loaded(fresh, tmp_path, caplog):
    """An LCM-LoRA's header recommends the lcm sampler, 4 steps, guidance 1: loading it logs that in a line, and
    ``recommended`` gives it by name, or as the one recommendation of the active LoRAs."""
    import logging

    rec = lora_io.Recommendation(kind="lcm", sampler="lcm", steps=4, guidance=1.0)
    fast = random_lora(fresh)
    fast.metadata.update(rec.metadata())
    fast_path = lora_io.save(fast, tmp_path / "fast.safetensors")
    plain_path = lora_io.save(random_lora(fresh, seed=1), tmp_path / "plain.safetensors")
    with caplog.at_level(logging.INFO, logger="latentgen.lora"):
        fresh.load_lora(fast_path)
        fresh.load_lora(plain_path)
    said = [r.getMessage() for r in caplog.records if r.name == "latentgen.lora"]
    assert said == ["LoRA fast (lcm) recommends scheduler=lcm, steps=4, guidance=1"]
    assert fresh.loras.recommended("fast") == rec and fresh.loras.recommended("plain") is None
    assert fresh.loras.recommended() == rec
    fresh.set_lora_scale("fast", 0.0)  # off: it recommends nothing for this call
    assert fresh.loras.recommended() is None
    fresh.set_lora_scale("fast", 1.0)
    fresh.loras.park("fast")
    fresh.loras.load(fast_path, name="fast")  # parked and loaded again unread: the advice is kept
    assert fresh.loras.recommended("fast") == rec
    with pytest.raises(ValueError, match="no LoRA named 'nope'"):
        fresh.loras.recommended("nope")


def test_prompt_tags_are_checked_before_any_image_each_file_read_once(tiny_folder, lora_files, monkeypatch):
    """``check_tags``: what ``latentgen batch`` asks of every job's tags before its first image."""
    from latentgen.lora import formats

    pipe = latentgen.load(tiny_folder)
    reads, read_file = [], formats.read
    monkeypatch.setattr(formats, "read", lambda *a: reads.append(a[0]) or read_file(*a))
    seen: set[str] = set()
    for _ in range(2):
        pipe.loras.check_tags(f"a cat <lora:{lora_files[0]}:0.5>", None, seen)
    assert reads == [str(lora_files[0])] and seen == {str(lora_files[0])}
    with pytest.raises(FileNotFoundError, match=r"prompt tag <lora:nosuch>: LoRA file 'nosuch' does not exist"):
        pipe.loras.check_tags("a cat <lora:nosuch:1>", None, seen)
    with pytest.raises(ValueError, match=r"<lora:x:inf>' has weight 'inf', not a finite number"):
        pipe.loras.check_tags("a cat <lora:x:inf>", None, seen)
    with pytest.raises(ValueError, match=r"negative_prompt .* has a <lora:\.\.\.> tag"):
        pipe.loras.check_tags("a cat", "<lora:x>", seen)
