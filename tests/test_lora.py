"""LoRA: the two file layouts, loading into latentgen and diffusers, scales, fuse/unfuse, bad files."""

import warnings

import numpy as np
import pytest
import torch

import latentgen
from latentgen import lora as lora_io
from latentgen.cli import main
from latentgen.metadata import read_parameters


def _max_diff(a, b):
    return max(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max() for x, y in zip(a, b))


def random_lora(pipe, seed=0, rank=4, alpha=2.0, text=True, magnitude=0.3) -> lora_io.Lora:
    """A random LoRA on the U-Net's attention projections (and the text encoder's)."""
    g = torch.Generator().manual_seed(seed)
    out = lora_io.Lora(metadata={"ss_output_name": "random"})
    parts = [("unet", pipe.unet, lora_io.UNET_TARGETS)] + \
        ([("text_encoder", pipe.text_encoder, lora_io.TEXT_TARGETS)] if text else [])
    for part, model, targets in parts:
        for name, mod in lora_io._module_names(model, part).items():
            if name.endswith(tuple("." + t for t in targets)):
                w = mod.weight
                out.modules.setdefault(part, {})[name] = (
                    torch.randn(rank, w.shape[1], generator=g) * magnitude,
                    torch.randn(w.shape[0], rank, generator=g) * magnitude, alpha)
    return out


@pytest.fixture
def fresh(tiny_folder):
    return latentgen.load(tiny_folder)


@pytest.fixture
def lora_files(tiny_folder, tmp_path):
    lora = random_lora(latentgen.load(tiny_folder))
    return (lora_io.save(lora, tmp_path / "a.safetensors", "diffusers"),
            lora_io.save(lora, tmp_path / "a_kohya.safetensors", "kohya"), lora)


def test_layouts_have_the_field_keys(lora_files):
    from safetensors import safe_open

    peft_file, kohya_file, _ = lora_files
    with safe_open(str(kohya_file), "pt") as f:
        keys = set(f.keys())
        assert f.metadata()["ss_network_dim"] == "4"
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_out_0.alpha" in keys
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in keys
    with safe_open(str(peft_file), "pt") as f:
        assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in set(f.keys())


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


def test_unknown_keys_are_reported_and_other_architectures_refused(fresh, tmp_path, lora_files):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(lora_files[1]))
    sd["lora_unet_no_such_block_to_q.lora_down.weight"] = torch.zeros(4, 8)
    save_file(sd, str(tmp_path / "extra.safetensors"))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fresh.load_lora(tmp_path / "extra.safetensors")
    assert any("lora_unet_no_such_block_to_q" in str(x.message) for x in w)

    other = {k: (torch.zeros(4, 99) if k.endswith("lora_down.weight") else v) for k, v in sd.items()}
    save_file(other, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match=r"another architecture: \d+ module.*self_attn.k_proj: LoRA \(32, 99\) vs model \(32, 32\)"):
        fresh.load_lora(tmp_path / "other.safetensors", name="other")
    save_file({"foo.bar": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="foo.bar"):
        fresh.load_lora(tmp_path / "foreign.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fresh.load_lora(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError, match="name of a shipped LoRA"):  # a bare name that is not shipped
        fresh.load_lora("no-such-lora")
    with pytest.raises(ValueError, match="cannot contain"):
        fresh.load_lora(tmp_path / "extra.safetensors", name="a.b")


def test_cli_lora_flag_and_metadata(tiny_folder, lora_files, tmp_path):
    out = tmp_path / "o.png"
    assert main(["generate", "a cat", "--model", str(tiny_folder), "--steps", "2",
                 "--lora", f"{lora_files[1]}:0.6", "-o", str(out)]) == 0
    text = read_parameters(out)
    assert f"a_kohya: {lora_io.file_hash(lora_files[1])}" in text
    assert "a_kohya: 0.6" in text
    assert main(["generate", "a cat", "--model", str(tiny_folder), "--lora", str(tmp_path / "nope.safetensors"),
                 "-o", str(tmp_path / "p.png")]) == 2
