"""latentgen.lora.formats: the two file layouts (diffusers/peft and kohya) and their keys; unknown keys are
reported, LoRAs of other architectures and foreign files refused."""

import warnings

import pytest
import torch

from latentgen.lora import formats as lora_io
from latentgen.lora import names as lora_names


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


def test_unknown_keys_are_reported_and_other_architectures_refused(fresh, tmp_path, lora_files):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(lora_files[1]))
    sd["lora_unet_no_such_block_to_q.lora_down.weight"] = torch.zeros(4, 8)
    save_file(sd, str(tmp_path / "extra.safetensors"))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fresh.load_lora(tmp_path / "extra.safetensors")
    assert any("lora_unet_no_such_block_to_q" in str(x.message) for x in w)
    half = {k: v for k, v in sd.items() if not k.endswith("attn1_to_q.lora_up.weight")}  # some modules lack their up
    save_file(half, str(tmp_path / "half.safetensors"))
    with pytest.raises(ValueError, match=r"name='half' is invalid: it is a torch module's own attribute; pass "
                                         r"another name=..., such as 'half_lora'"):
        fresh.load_lora(tmp_path / "half.safetensors")  # the file's stem, as peft could not hold it
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        fresh.load_lora(tmp_path / "half.safetensors", name="partial")
    assert any("attn1.to_q (missing its up weight)" in str(x.message) for x in w)

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


def test_a_checkpoint_given_as_a_lora_is_named_for_what_it_is(pipe, tmp_path):
    import torch

    torch.save({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, tmp_path / "style.ckpt")
    with pytest.raises(ValueError, match=r"style.ckpt is a torch zip file \(.ckpt/.pt\), not a .safetensors LoRA"):
        pipe.load_lora(tmp_path / "style.ckpt")
    assert pipe.loras.loaded == {}


def test_saved_loras_get_the_usual_mode(pipe, tmp_path):
    from conftest import random_lora

    from latentgen import files
    from latentgen.lora import formats

    for layout in ("diffusers", "kohya"):
        path = formats.save(random_lora(pipe), tmp_path / f"{layout}.safetensors", layout)
        assert (path.stat().st_mode & 0o777) == 0o666 & ~files.umask()


def test_a_recommendation_in_the_header_is_written_and_read_back_in_both_layouts(pipe, tmp_path):
    from conftest import random_lora

    from latentgen.lora import formats

    rec = formats.Recommendation(kind="lcm", sampler="lcm", steps=4, guidance=1.0)
    assert rec.metadata() == {"latentgen_kind": "lcm", "latentgen_sampler": "lcm", "latentgen_steps": "4",
                              "latentgen_guidance": "1"}
    lora = random_lora(pipe)
    lora.metadata.update(rec.metadata())
    for layout in ("diffusers", "kohya"):
        path = formats.save(lora, tmp_path / f"{layout}.safetensors", layout)
        assert formats.recommendation(path) == rec
        assert formats.recommendation(formats.read(path, {"unet": pipe.unet})[0].metadata) == rec
    assert formats.recommendation(formats.save(random_lora(pipe), tmp_path / "plain.safetensors")) is None
    assert formats.recommendation({"ss_network_dim": "4"}) is None


@pytest.mark.parametrize("bad", [{"latentgen_sampler": "warp"}, {"latentgen_steps": "four"}, {"latentgen_steps": "0"},
                                 {"latentgen_guidance": "-1"}, {"latentgen_guidance": "nan"}])
def test_an_unusable_recommendation_is_ignored_with_a_warning(bad):
    from latentgen.lora import formats

    header = {**formats.Recommendation("lcm", "lcm", 4, 1.0).metadata(), **bad}
    key, value = next(iter(bad.items()))
    with pytest.warns(UserWarning, match=f"recommended sampling .*'{key}': '{value}'.* is ignored"):
        assert formats.recommendation(header) is None


def _sdxl_lora(pipe):
    """A random LoRA on every attention projection of an SDXL model: U-Net, CLIP-L and bigG."""
    from conftest import random_lora

    lora = random_lora(pipe, seed=3)
    g = torch.Generator().manual_seed(5)
    for name, mod in lora_names.module_names(pipe.xl.text_encoder_2, "text_encoder_2").items():
        if name.endswith(tuple("." + t for t in lora_names.TEXT_TARGETS)):
            w = mod.weight
            lora.modules.setdefault("text_encoder_2", {})[name] = (
                torch.randn(4, w.shape[1], generator=g) * 0.3, torch.randn(w.shape[0], 4, generator=g) * 0.3, 2.0)
    return lora


def _kohya_sdxl(lora, pipe, path):
    """``lora`` as kohya's SDXL scripts write it: lora_te1_/lora_te2_, the U-Net in SGM block names."""
    from safetensors.torch import save_file

    models = {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.xl.text_encoder_2}
    wanted = {"unet": ("lora_unet_input_blocks", "lora_unet_middle_block", "lora_unet_output_blocks"),
              "text_encoder": ("lora_te1_",), "text_encoder_2": ("lora_te2_",)}
    tensors = {}
    for part, mods in lora.modules.items():
        stems = {}
        for k, n in lora_names.kohya_names(part, models[part], mods).items():  # the first name: kohya's own
            if k.startswith(wanted[part]):
                stems.setdefault(n, k)
        for m, (down, up, alpha) in mods.items():
            tensors[f"{stems[m]}.lora_down.weight"], tensors[f"{stems[m]}.lora_up.weight"] = down, up
            tensors[f"{stems[m]}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path), {"ss_network_module": "networks.lora"})
    return path


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
def test_an_sdxl_lora_draws_as_diffusers_draws_it(xl_folder, tmp_path, layout):
    import latentgen
    from conftest import diffusers_pipeline, max_diff

    pipe = latentgen.load(xl_folder)
    lora = _sdxl_lora(pipe)
    assert {"unet", "text_encoder", "text_encoder_2"} <= set(lora.modules)
    path = _kohya_sdxl(lora, pipe, tmp_path / "xl.safetensors") if layout == "kohya" else \
        lora_io.save(lora, tmp_path / "xl.safetensors", "diffusers")
    args = dict(seed=2, steps=3, guidance=5.0)
    bare = pipe.generate("a red circle", **args)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every key names a module
        pipe.load_lora(path, name="xl", scale=0.8)
    ours = pipe.generate("a red circle", **args)
    ref = diffusers_pipeline("StableDiffusionXLPipeline", xl_folder)
    ref.load_lora_weights(str(path), adapter_name="xl")
    ref.set_adapters(["xl"], adapter_weights=[0.8])
    theirs = ref("a red circle", num_inference_steps=3, guidance_scale=5.0, height=64, width=64,
                 generator=torch.Generator().manual_seed(2)).images
    assert max_diff(ours, theirs) <= 2 and max_diff(ours, bare) > 2
    before = {k: v.clone() for k, v in pipe.xl.text_encoder_2.state_dict().items() if "lora_" not in k}
    pipe.fuse_lora()
    assert max_diff(pipe.generate("a red circle", **args), ours) <= 2
    pipe.unfuse_lora()  # bit for bit, bigG included
    assert all(torch.equal(v, pipe.xl.text_encoder_2.state_dict()[k]) for k, v in before.items())
    pipe.unload_lora()
    assert max_diff(pipe.generate("a red circle", **args), bare) == 0


def test_lora_hashes_are_a1111s(fresh, tmp_path, lora_files):
    import hashlib

    from safetensors.torch import load_file, save_file

    kohya = lora_files[1]
    data = kohya.read_bytes()
    tensors = hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()[:12]  # kohya's addnet hash
    assert lora_io.file_hash(kohya) == tensors != hashlib.sha256(data).hexdigest()[:12]
    save_file(load_file(str(kohya)), str(tmp_path / "said.safetensors"), {"sshs_model_hash": "0x" + "ab" * 32})
    assert lora_io.file_hash(tmp_path / "said.safetensors") == "0xababababab"  # the trainer's, as A1111 takes it
    fresh.load_lora(kohya, name="k")
    assert f'Lora hashes: "k: {tensors}"' in fresh.generate("a red circle", steps=1)[0].info["parameters"]
