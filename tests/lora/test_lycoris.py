"""latentgen.lora.lycoris: LyCORIS files (LoHa, LoKr, LoCon with a Tucker core, DoRA on each) as LyCORIS itself
writes them draw what LyCORIS's own layers draw, on the fast path; peft's DoRA files draw as diffusers draws them;
the factor algebra equals A1111's formulas; other kinds are refused by name."""

import math
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import latentgen
from latentgen.backends import weights
from latentgen.lora import lycoris

PRESET = """enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
unet_target_name = ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
text_encoder_target_module = ["CLIPAttention", "CLIPMLP"]
text_encoder_target_name = []
"""  # kohya's SD 1.x targets: attention, feed-forward, ResNet and sampler convolutions, both ends; CLIP's layers
ALGOS = {"loha": {}, "lokr": {}, "loha-tucker": {"use_tucker": True},
         "lokr-tucker-both": {"use_tucker": True, "decompose_both": True, "factor": 4},
         "locon-tucker": {"use_tucker": True},
         "locon-dora": {"dora_wd": True}, "locon-dora-in": {"dora_wd": True, "wd_on_output": False},
         "loha-dora": {"dora_wd": True}, "lokr-dora-in": {"dora_wd": True, "wd_on_output": False}}


def pixels(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.int16))


def lycoris_network(pipe, tmp_path, algo, seed=0, magnitude=0.25):
    """A LyCORIS network of ``algo`` made by LyCORIS's kohya entry on ``pipe``'s text encoder and U-Net and applied
    to them (their layers then compute through LyCORIS), every parameter random, and the file it saves (kohya's
    names, as LyCORIS writes them with this transformers)."""
    from lycoris import kohya

    preset = tmp_path / "preset.toml"
    preset.write_text(PRESET)
    encoders = [pipe.text_encoder, pipe.xl.text_encoder_2] if pipe.xl else pipe.text_encoder  # SDXL: lora_te1/2_
    net = kohya.create_network(1.0, 4, 2.0, None, encoders, pipe.unet, algo=algo.split("-")[0],
                               preset=str(preset), conv_dim=4, conv_alpha=2.0, **ALGOS[algo])
    net.apply_to(encoders, pipe.unet, True, True)
    g = torch.Generator().manual_seed(seed)
    for name, p in net.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        dora = name.endswith("dora_scale")  # DoRA's m: near its init, ||W||
        p.data = p.data * (1 + noise * 0.2) if dora else noise * magnitude
    path = tmp_path / f"{algo}.safetensors"
    net.save_weights(str(path), torch.float32, {"ss_network_module": "lycoris.kohya"})
    return net, path


def _same_layers(net, ref, pipe, label):
    """Each layer LyCORIS adapted in ``ref`` gives, through LyCORIS, what ``pipe``'s peft layer gives."""
    g = torch.Generator().manual_seed(1)
    parts = {"unet": (ref.unet, pipe.unet)}
    parts.update({"te1": (ref.text_encoder, pipe.text_encoder), "te2": (ref.xl.text_encoder_2, pipe.xl.text_encoder_2)}
                 if ref.xl else {"te": (ref.text_encoder, pipe.text_encoder)})
    seen = 0
    for mine, theirs in parts.values():
        named = {id(m): n for n, m in mine.named_modules()}
        for module in net.loras:
            original = module.org_module[0]
            if id(original) not in named:
                continue
            x = torch.randn((2, original.in_features) if isinstance(original, torch.nn.Linear)
                            else (1, original.in_channels, 8, 8), generator=g)
            with torch.no_grad():
                torch.testing.assert_close(theirs.get_submodule(named[id(original)])(x), original(x), atol=1e-5,
                                           rtol=1e-4, msg=f"{label} {named[id(original)]}")
            seen += 1
    assert seen == len(net.loras)


def _draws_as_lycoris(folder, tmp_path, algo):
    ref = latentgen.load(folder, backend="torch")
    base = ref.generate("a red square", seed=3, steps=4)[0]
    net, path = lycoris_network(ref, tmp_path, algo)  # ref's layers now run LyCORIS's forward
    pipe = latentgen.load(folder, backend="openvino")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every key of the file names a module
        pipe.load_lora(path, name="ly")
    _same_layers(net, ref, pipe, algo)
    a, b = (pixels(p.generate("a red square", seed=3, steps=4)[0]) for p in (pipe, ref))
    assert "openvino" in repr(pipe) and "torch" in repr(ref)
    assert (a - b).abs().max() <= 1, algo  # on the fast path, with the file vs LyCORIS's own layers on torch
    assert (a - pixels(base)).abs().float().mean() > 2  # it does something


@pytest.mark.parametrize("algo", list(ALGOS))
def test_a_lycoris_file_draws_what_lycoris_itself_draws(tiny_folder, tmp_path, algo):
    _draws_as_lycoris(tiny_folder, tmp_path, algo)


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_an_sdxl_lycoris_file_draws_what_lycoris_itself_draws(xl_folder, tmp_path, algo):
    _draws_as_lycoris(xl_folder, tmp_path, algo)  # lora_te1_, lora_te2_ and the U-Net


@pytest.mark.parametrize("algo", ["loha", "locon-dora"])
def test_scales_fuse_and_unload_work_on_lycoris_files(tiny_folder, tmp_path, algo):
    """A weight s gives W + s dW (a DoRA's dW: its whole update W' - W), and fuse/unfuse/unload restore W bit for
    bit, as with any LoRA."""
    pipe = latentgen.load(tiny_folder)
    _, path = lycoris_network(pipe, tmp_path, algo)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora(path, name="ly", scale=0.5)
    half, _ = weights.effective(pipe.unet)
    pipe.set_lora_scale("ly", 1.0)
    whole, _ = weights.effective(pipe.unet)
    for name in before:
        torch.testing.assert_close(half[name] - before[name], (whole[name] - before[name]) / 2, atol=1e-6, rtol=1e-4)
    assert sum((whole[n] - before[n]).abs().sum() for n in before) > 1
    pipe.fuse_lora()
    pipe.unfuse_lora()
    pipe.unload_lora()
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())  # bit for bit


def _direct(g: dict, shape) -> torch.Tensor:
    """dW as A1111's network_hada / network_lokr compute it (their formulas, written out)."""
    def cp(t, wa, wb):  # Tucker: wa (r, out), wb (r, in), t (r, r, *k)
        return torch.einsum("ij...,jq,ip->pq...", t, wb, wa)

    def conventional(wa, wb):  # lyco_helpers.rebuild_conventional: wb flattened to (r, n)
        return wa @ wb.reshape(wb.shape[0], -1)

    if "hada_w1_a" in g:
        w1 = cp(g["hada_t1"], g["hada_w1_a"], g["hada_w1_b"]) if "hada_t1" in g else conventional(g["hada_w1_a"],
                                                                                                 g["hada_w1_b"])
        w2 = cp(g["hada_t2"], g["hada_w2_a"], g["hada_w2_b"]) if "hada_t2" in g else conventional(g["hada_w2_a"],
                                                                                                 g["hada_w2_b"])
        d, dim = w1.reshape(shape) * w2.reshape(shape), g["hada_w1_b"].shape[0]
    else:
        w1 = g["lokr_w1"] if "lokr_w1" in g else g["lokr_w1_a"] @ g["lokr_w1_b"]
        if "lokr_w2" in g:
            w2 = g["lokr_w2"]
        elif "lokr_t2" in g:
            w2 = cp(g["lokr_t2"], g["lokr_w2_a"], g["lokr_w2_b"])
        else:
            w2 = conventional(g["lokr_w2_a"], g["lokr_w2_b"])
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        d = torch.kron(w1, torch.empty(w2.shape).copy_(w2)).reshape(shape)  # (row-major: torch's kron views it)
        dim = g["lokr_w2_b"].shape[0] if "lokr_w2_b" in g else g["lokr_w1_b"].shape[0] if "lokr_w1_b" in g else None
    return d * (float(g["alpha"]) / dim if dim else 1.0)


CASES = {  # (weight shape, factors)
    "loha linear": ((24, 20), dict(hada_w1_a=(24, 3), hada_w1_b=(3, 20), hada_w2_a=(24, 2), hada_w2_b=(2, 20))),
    "loha conv": ((8, 6, 3, 3), dict(hada_w1_a=(8, 2), hada_w1_b=(2, 54), hada_w2_a=(8, 2), hada_w2_b=(2, 6, 3, 3))),
    "loha tucker": ((8, 6, 3, 3), dict(hada_t1=(2, 2, 3, 3), hada_w1_a=(2, 8), hada_w1_b=(2, 6), hada_t2=(2, 2, 3, 3),
                                       hada_w2_a=(2, 8), hada_w2_b=(2, 6))),
    "loha dense": ((6, 40), dict(hada_w1_a=(6, 4), hada_w1_b=(4, 40), hada_w2_a=(6, 4), hada_w2_b=(4, 40))),
    "lokr linear": ((24, 20), dict(lokr_w1=(4, 4), lokr_w2_a=(6, 2), lokr_w2_b=(2, 5))),
    "lokr whole": ((24, 20), dict(lokr_w1=(4, 4), lokr_w2=(6, 5))),
    "lokr both": ((24, 20), dict(lokr_w1_a=(4, 1), lokr_w1_b=(1, 4), lokr_w2_a=(6, 2), lokr_w2_b=(2, 5))),
    "lokr conv": ((8, 6, 3, 3), dict(lokr_w1=(2, 2), lokr_w2_a=(4, 1), lokr_w2_b=(1, 27))),
    "lokr conv whole": ((8, 6, 3, 3), dict(lokr_w1=(2, 3), lokr_w2=(4, 2, 3, 3))),
    "lokr tucker": ((8, 6, 3, 3), dict(lokr_w1=(2, 2), lokr_t2=(1, 1, 3, 3), lokr_w2_a=(1, 4), lokr_w2_b=(1, 3))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_factors_multiply_to_a1111s_update(case):
    shape, spec = CASES[case]
    g = torch.Generator().manual_seed(len(case))
    t = {k: torch.randn(s, generator=g, dtype=torch.float64).float() for k, s in spec.items()}
    t["alpha"] = torch.tensor(3.0)
    down, up, alpha = lycoris.update(t, shape)
    assert alpha == down.shape[0] and down.shape[1:] == shape[1:] and up.shape[:2] == (shape[0], down.shape[0])
    assert down.shape[0] <= min(shape[0], math.prod(shape[1:]))  # never wider than dW itself
    mine = (up.flatten(1) @ down.flatten(1)).reshape(shape)
    torch.testing.assert_close(mine, _direct(t, shape), atol=1e-5, rtol=1e-5)


def test_other_kinds_and_damaged_files_are_refused_by_name(fresh, tmp_path, lora_files):
    sd = load_file(str(lora_files[1]))
    key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    for extra, says in [({f"{key}.oft_blocks": torch.ones(4, 16, 16)}, "OFT"),
                        ({f"{key}.diff": torch.zeros(64, 64)}, "full"),
                        ({f"{key}.on_input": torch.ones(1)}, "IA3")]:
        save_file({**sd, **extra}, str(tmp_path / "odd.safetensors"))
        with pytest.raises(ValueError, match=rf"odd.safetensors: unet\..*attn1.to_q: .*{says}.*reads LoRA, LoCon, "
                                             rf"LoHa and LoKr"):
            fresh.load_lora(tmp_path / "odd.safetensors")
    loha = {f"{key}.hada_w1_a": torch.ones(32, 2), f"{key}.hada_w1_b": torch.ones(2, 32),
            f"{key}.hada_w2_a": torch.ones(32, 2)}
    save_file(loha, str(tmp_path / "damaged.safetensors"))
    with pytest.raises(ValueError, match="LoHa module without hada_w2_b"):
        fresh.load_lora(tmp_path / "damaged.safetensors")
    save_file({**loha, f"{key}.hada_w2_b": torch.ones(2, 99)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match=r"another architecture.*LoHa halves \(32, 32\) and \(32, 99\)"):
        fresh.load_lora(tmp_path / "other.safetensors")
    save_file({f"{key}.lokr_w1": torch.ones(8, 8), f"{key}.lokr_w2": torch.ones(8, 9)}, str(tmp_path / "k.safetensors"))
    with pytest.raises(ValueError, match=r"another architecture.*lokr \(64, 72\) vs model \(64, 64\) \(flattened\)"):
        fresh.load_lora(tmp_path / "k.safetensors")
    assert fresh.loras.loaded == {}


def _peft_dora(tiny_folder, tmp_path):
    """diffusers' pipeline with a DoRA LoRA as diffusers and peft train it (``use_dora``) on the U-Net's attention
    and ResNet convolutions and on the text encoder, random, live in its models; and the file it saves (peft's
    layout: lora_A, lora_B and ``lora_magnitude_vector``)."""
    from conftest import diffusers_pipeline
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    ref = diffusers_pipeline("StableDiffusionPipeline", tiny_folder)
    ref.unet.add_adapter(LoraConfig(r=4, lora_alpha=2, target_modules=["to_q", "to_v", "conv1"], use_dora=True))
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], use_dora=True),
                            ref.text_encoder)  # (transformers' add_adapter wants a newer peft)
    g = torch.Generator().manual_seed(5)
    for model in (ref.unet, ref.text_encoder):
        for name, p in model.named_parameters():
            if "lora_" in name:
                noise = torch.randn(p.shape, generator=g)
                p.data = p.data * (1 + 0.2 * noise) if "magnitude" in name else noise * 0.3
    StableDiffusionPipeline.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(ref.unet),
                                              text_encoder_lora_layers=get_peft_model_state_dict(ref.text_encoder),
                                              unet_lora_adapter_metadata=ref.unet.peft_config["default"].to_dict(),
                                              text_encoder_lora_adapter_metadata=ref.text_encoder.peft_config[
                                                  "default"].to_dict(), weight_name="dora.safetensors")
    return ref, tmp_path / "dora.safetensors"


def test_a_peft_dora_file_draws_what_its_diffusers_model_draws(tiny_folder, tmp_path):
    from conftest import max_diff as _max_diff

    ref, path = _peft_dora(tiny_folder, tmp_path)
    magnitudes = [k.split(".")[0] for k in load_file(str(path)) if k.endswith("lora_magnitude_vector")]
    assert set(magnitudes) == {"unet", "text_encoder"}
    theirs = ref("a blue dog", num_inference_steps=3, generator=torch.Generator().manual_seed(2),
                 height=64, width=64).images  # through peft's DoRA layers
    pipe = latentgen.load(tiny_folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the magnitudes are read, not skipped as unknown keys
        pipe.load_lora(path, name="dora")
    ours = pipe.generate("a blue dog", seed=2, steps=3, scheduler=None)
    assert _max_diff(ours, theirs) <= 1
    pipe.unload_lora()
    assert _max_diff(pipe.generate("a blue dog", seed=2, steps=3, scheduler=None), ours) > 5  # it does something


def test_dora_decomposition_on_either_axis():
    g = torch.Generator().manual_seed(0)
    w, d = torch.randn(6, 4, 3, 3, generator=g), torch.randn(6, 36, generator=g) * 0.1
    merged = w + d.reshape(w.shape)
    rows = merged.reshape(6, -1).norm(dim=1)  # per output row
    m = rows.reshape(6, 1, 1, 1) * 1.5
    torch.testing.assert_close(lycoris.decompose(d, m, w).reshape(w.shape), merged * 1.5 - w, atol=1e-5, rtol=1e-5)
    cols = merged.transpose(0, 1).reshape(4, -1).norm(dim=1)  # per input channel
    m = (cols * torch.tensor([1.0, 2.0, 0.5, 1.0])).reshape(1, 4, 1, 1)
    expect = merged * torch.tensor([1.0, 2.0, 0.5, 1.0]).reshape(1, 4, 1, 1) - w
    torch.testing.assert_close(lycoris.decompose(d, m, w).reshape(w.shape), expect, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lycoris.decompose(d, rows, w), d, atol=1e-5, rtol=1e-5)  # m = ||W + dW||: dW
    with pytest.raises(lycoris.Mismatch, match=r"DoRA magnitude \(5,\) vs model \(6, 4, 3, 3\)"):
        lycoris.decompose(d, torch.ones(5), w)
