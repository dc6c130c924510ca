"""latentgen.lora.formats: the two file layouts (diffusers/peft and kohya) and their keys; unknown keys are
reported, LoRAs of other architectures and foreign files refused."""

import warnings

import pytest
import torch


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
