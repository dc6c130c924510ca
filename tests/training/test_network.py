"""latentgen.training.network: the adapters LoRA trainers train (LoRA, DoRA, LoHa, LoKr), put on the model and
read back into files that latentgen, diffusers and LyCORIS read as training drew them."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from latentgen.lora import lycoris
from latentgen.training import finetune, network
from latentgen.training.finetune import LoraTrainConfig

TINY = dict(rank=2, steps=4, batch=2, save_every=2, resolution=64, lr=1e-3)


def _run(tiny_folder, data, out, **kw):
    return finetune.run(LoraTrainConfig(data=data, out=out, model=str(tiny_folder), **{**TINY, **kw}))


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_lycoris_tensors_fold_peft_scale_so_the_file_gives_peft_update(algo):
    from peft import LoHaConfig, LoKrConfig, inject_adapter_in_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.Conv2d(96, 32, 3))  # LoKr: w2 factored
    config = (LoHaConfig if algo == "loha" else LoKrConfig)(r=4, alpha=2, target_modules=["0", "1"])
    inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        if "default" in name:
            p.data = torch.randn(p.shape) * 0.3  # every factor nonzero
    for layer in model:
        g = network.lycoris_tensors(layer)
        assert float(g["alpha"]) == next((g[n].shape[0] for n in ("hada_w1_b", "lokr_w2_b", "lokr_w1_b") if n in g), 1)
        base = layer.get_base_layer().weight
        down, up, alpha = lycoris.update(g, tuple(base.shape))
        ours = (up.flatten(1) @ down.flatten(1)).reshape(base.shape) * alpha / down.shape[0]
        torch.testing.assert_close(ours, layer.get_delta_weight("default"), atol=1e-5, rtol=1e-4)


def test_dora_trains_magnitudes_and_its_files_draw_what_training_drew(tiny_folder, data, tmp_path):
    import warnings

    import latentgen
    from conftest import diffusers_pipeline, max_diff
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = _run(tiny_folder, data, tmp_path / "o", dora=True, conv_rank=2, train_text_encoder=True, kohya=True,
                validation_prompts=["a purple circle --s 2"], validate_every=4)
    peft_file, kohya_file = path, tmp_path / "o" / "lora.kohya.safetensors"
    w, kw = load_file(str(peft_file)), load_file(str(kohya_file))
    mags = {k: v for k, v in w.items() if k.endswith(".lora_magnitude_vector")}  # peft's, as diffusers saves it
    assert {k.split(".")[0] for k in mags} == {"unet", "text_encoder"} and any(".conv" in k for k in mags)
    assert len([k for k in kw if k.endswith(".dora_scale")]) == len(mags)  # LyCORIS's dora_wd layout
    meta = safe_open(str(kohya_file), "pt").metadata()
    assert meta["ss_network_module"] == "lycoris.kohya" and json.loads(meta["ss_network_args"])["dora_wd"]
    base = latentgen.load(tiny_folder)
    q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    init = base.unet.get_submodule(q).weight.norm(dim=1)  # peft starts m at ||W|| (B = 0)
    assert not torch.allclose(mags[f"unet.{q}.lora_magnitude_vector"], init, atol=1e-5)  # trained
    sample = Image.open(tmp_path / "o" / "samples" / "lora_000004_00_0.png")  # drawn by peft's DoRA layers
    assert max_diff(base.generate("a purple circle", steps=2, seed=0), [sample]) > 5  # it learned something
    for f in (peft_file, kohya_file):
        pipe = latentgen.load(tiny_folder)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # every key read
            pipe.load_lora(f)
        assert max_diff(pipe.generate("a purple circle", steps=2, seed=0), [sample]) <= 1, f.name
    unet_only = {k: v for k, v in w.items() if k.startswith("unet.")}  # (diffusers drops the text encoder's m)
    save_file(unet_only, str(tmp_path / "u.safetensors"), safe_open(str(peft_file), "pt").metadata())
    ref = diffusers_pipeline("StableDiffusionPipeline", tiny_folder)
    ref.load_lora_weights(str(tmp_path), weight_name="u.safetensors")
    theirs = ref("a blue dog", num_inference_steps=3, generator=torch.Generator().manual_seed(2),
                 height=64, width=64).images
    base.load_lora(tmp_path / "u.safetensors")
    assert max_diff(base.generate("a blue dog", seed=2, steps=3, scheduler=None), theirs) <= 1
    with pytest.raises(ValueError, match="dora trains new adapters, and network_weights goes on from a file"):
        _run(tiny_folder, data, tmp_path / "x", dora=True, network_weights=path)


@pytest.mark.parametrize("algo", ["loha", "lokr"])
def test_lycoris_kinds_train_into_files_lycoris_reads(tiny_folder, data, tmp_path, algo, monkeypatch):
    import warnings

    import latentgen
    from conftest import max_diff
    from lycoris import kohya
    from safetensors import safe_open

    path = _run(tiny_folder, data, tmp_path / "o", algo=algo, rank=4, conv_rank=2, train_text_encoder=True, lr=1e-2,
                validation_prompts=["a purple circle --s 2"], validate_every=4)
    w, meta = load_file(str(path)), safe_open(str(path), "pt").metadata()
    prefix = "hada_w1_a" if algo == "loha" else "lokr_w1"
    assert any(k.startswith("lora_unet_") and k.endswith(prefix) for k in w)
    assert any(k.startswith("lora_te_") and k.endswith(prefix) for k in w)
    assert any("resnets" in k and k.endswith(prefix) for k in w)  # and the convolutions (--conv-rank)
    assert meta["ss_network_module"] == "lycoris.kohya" and json.loads(meta["ss_network_args"])["algo"] == algo
    assert not (tmp_path / "o" / "lora.kohya.safetensors").exists()  # the one file is LyCORIS's layout
    sample = Image.open(tmp_path / "o" / "samples" / "lora_000004_00_0.png")  # drawn by peft's layers
    base = latentgen.load(tiny_folder)
    assert max_diff(base.generate("a purple circle", steps=2, seed=0), [sample]) > 5  # it learned something
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every key read
        base.load_lora(path)
    ours = base.generate("a purple circle", steps=2, seed=0)
    assert max_diff(ours, [sample]) <= 1
    ref = latentgen.load(tiny_folder, backend="torch")  # LyCORIS reads the file and draws through its own layers
    monkeypatch.setattr(kohya.LycorisNetworkKohya, "UNET_TARGET_REPLACE_NAME", [])  # (its default preset names
    # time_embedding.linear_1 twice on this diffusers, which it then refuses; the file's modules load regardless)
    net = kohya.create_network_from_weights(1.0, str(path), None, ref.text_encoder, ref.unet)[0]
    net.apply_to(ref.text_encoder, ref.unet, True, True)
    assert len(net.unet_loras) == sum(k.endswith(f".{prefix}") and k.startswith("lora_unet_") for k in w)
    theirs = ref.generate("a purple circle", steps=2, seed=0)
    unet_only = latentgen.load(tiny_folder)  # (LyCORIS names the text encoder without transformers 4's text_model)
    unet_only.load_lora(path, scale={"text_encoder": 0.0, "unet": 1.0})
    assert max_diff(theirs, unet_only.generate("a purple circle", steps=2, seed=0)) <= 1


def test_bad_network_options(tiny_folder, data, tmp_path):
    with pytest.raises(ValueError, match="dora is trained with algo 'lora'"):
        _run(tiny_folder, data, tmp_path / "a", algo="loha", dora=True)
    with pytest.raises(ValueError, match="algo='lokr' trains new adapters, and network_weights"):
        (tmp_path / "old.safetensors").write_bytes(b"")  # refused before it is read
        _run(tiny_folder, data, tmp_path / "b", algo="lokr", network_weights=tmp_path / "old.safetensors")
    with pytest.raises(ValueError, match="algo"):
        _run(tiny_folder, data, tmp_path / "c", algo="oft")


def test_attach_lora_puts_each_kind_on_the_same_modules(tiny_folder):
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer
    from peft.tuners.lora import LoraLayer

    from latentgen.models import loading

    seen = {}
    for algo, kind in (("lora", LoraLayer), ("loha", LoHaLayer), ("lokr", LoKrLayer)):
        c = loading.load_components(str(tiny_folder), dtype="fp32", backend="torch")
        cfg = LoraTrainConfig(data=".", out=".", steps=1, rank=2, conv_rank=2, algo=algo)
        network.attach_lora(c, cfg, text_encoder=True)
        layers = {n for n, m in [*c.unet.named_modules(), *c.text_encoder.named_modules()] if isinstance(m, kind)}
        assert layers and all(p.requires_grad == (".base_layer" not in n)
                              for n, p in c.unet.named_parameters() if n.startswith(next(iter(layers)) + "."))
        lora = network.trained_lora(c, {})
        assert bool(lora.raw) == (algo != "lora") and bool(lora.modules) == (algo == "lora")
        seen[algo] = layers
    assert seen["lora"] == seen["loha"] == seen["lokr"]


def test_a_killed_loha_run_with_kohyas_options_and_prodigy_resumes_exactly(tiny_folder, data, tmp_path, monkeypatch,
                                                                           kill_after):
    from safetensors import safe_open

    kw = dict(algo="loha", train_text_encoder=True, multires_noise_iterations=3, ip_noise_gamma=0.1,
              debiased_estimation=True, flip_aug=True, optimizer="prodigy", optimizer_args=["d_coef=2"], lr=1.0)
    path = _run(tiny_folder, data, tmp_path / "full", **kw)
    assert safe_open(str(path), "pt").metadata()["ss_optimizer"] == "prodigyopt.prodigy.Prodigy(d_coef=2)"
    full = load_file(str(path))
    kill_after(2)  # killed right after the step-2 checkpoint, which must hold the LoHa weights
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_folder, data, tmp_path / "killed", **kw)
    monkeypatch.undo()
    resumed = load_file(str(_run(tiny_folder, data, tmp_path / "killed", resume=True, **kw)))
    assert resumed.keys() == full.keys() and any(k.endswith("hada_w2_b") for k in full)
    for k in full:
        assert torch.allclose(resumed[k], full[k], atol=1e-6), k


def test_training_does_not_go_on_from_a_dora_file(tmp_path):
    from safetensors.torch import save_file

    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file({f"{key}.lora_down.weight": torch.ones(2, 32), f"{key}.lora_up.weight": torch.zeros(32, 2),
               f"{key}.dora_scale": torch.ones(32, 1)}, str(tmp_path / "dora.safetensors"))
    with pytest.raises(ValueError, match=r"is a DoRA file: training does not go on from DoRA yet .* \(--dora\)"):
        LoraTrainConfig(data=".", out=".", steps=1, network_weights=tmp_path / "dora.safetensors").check()


def test_text_encoder_layers_the_loss_never_reads_get_no_adapters(tiny_folder, xl_folder):
    from latentgen.models import loading

    def adapted(model):
        return {int(n.split("layers.")[1].split(".")[0]) for n, m in model.named_modules()
                if hasattr(m, "lora_A") and "layers." in n}

    c = loading.load_components(str(tiny_folder), dtype="fp32", backend="torch")
    network.attach_lora(c, LoraTrainConfig(data=".", out=".", steps=1, clip_skip=2), text_encoder=True)
    n = c.text_encoder.config.num_hidden_layers
    assert adapted(c.text_encoder) == set(range(n - 1))  # clip skip 2: the last layer's states are not read
    xl = loading.load_components(str(xl_folder), dtype="fp32", backend="torch")
    network.attach_lora(xl, LoraTrainConfig(data=".", out=".", steps=1), text_encoder=True)
    assert adapted(xl.text_encoder) == set(range(xl.text_encoder.config.num_hidden_layers - 1))  # CLIP-L: penultimate
    assert adapted(xl.xl.text_encoder_2) == set(range(xl.xl.text_encoder_2.config.num_hidden_layers))  # bigG: pooled
