"""latentgen.models.prediction: epsilon or v, detected from what a U-Net predicts for a known input."""

import torch

from latentgen.models import loading, prediction


class _Ideal(torch.nn.Module):
    """What a perfectly trained U-Net returns at t = T-1 on pure noise x: epsilon -> x; v -> ~0 * x + a mean."""

    def __init__(self, kind):
        super().__init__()
        self.kind, self.w = kind, torch.nn.Parameter(torch.zeros(1))
        self.config = type("C", (), {"in_channels": 4, "out_channels": 4, "cross_attention_dim": 8})

    def forward(self, x, t, encoder_hidden_states):
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2  # SD's scaled_linear schedule
        sigma = float((1 - (1 - betas).cumprod(0)[t]).sqrt())
        out = x * sigma if self.kind == "epsilon" else 0.07 * x - 0.3
        return type("O", (), {"sample": out})


def test_detection():
    assert prediction.detect(_Ideal("epsilon")) == "epsilon"
    assert prediction.detect(_Ideal("v_prediction")) == "v_prediction"
    assert prediction.detect(loading.load_components(None).unet) == "epsilon"  # the embedded model, trained on epsilon


def test_zero_snr_ends_the_schedule_at_pure_noise_and_starts_sampling_there():
    from diffusers import EulerDiscreteScheduler

    base = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                  prediction_type="v_prediction")
    z = prediction.zero_snr(base, True)
    assert z.config.rescale_betas_zero_snr and z.config.timestep_spacing == "trailing"
    assert float(base.alphas_cumprod[-1]) > 1e-3 and float(z.alphas_cumprod[-1]) < 1e-6  # SNR(T) = 0 (2^-24)
    z.set_timesteps(10)
    assert int(z.timesteps[0]) == 999  # the first step at the last timestep
    off = prediction.zero_snr(z, False)
    assert not off.config.rescale_betas_zero_snr and float(off.alphas_cumprod[-1]) > 1e-3


def _vpred_ztsnr_reference(tiny_folder, name, rescale=0.0, guidance=5.0):
    from conftest import diffusers_pipeline

    from latentgen import schedulers

    ref = diffusers_pipeline("StableDiffusionPipeline", tiny_folder)
    config = {**ref.scheduler.config, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True,
              "timestep_spacing": "trailing"}
    ref.scheduler = schedulers.make(name, config)
    return ref("a red circle", num_inference_steps=4, guidance_scale=guidance, height=64, width=64,
               generator=torch.Generator().manual_seed(3), guidance_rescale=rescale).images


def test_a_zero_terminal_snr_v_model_draws_as_diffusers_draws_it(tiny_folder):
    import pytest
    from conftest import max_diff

    import latentgen

    pipe = latentgen.load(tiny_folder, prediction_type="v_prediction", zero_terminal_snr=True)
    assert pipe.scheduler.config.rescale_betas_zero_snr and pipe.scheduler.config.timestep_spacing == "trailing"
    for name in ("euler", "ddim", "dpm++2m"):
        ours = pipe.generate("a red circle", seed=3, steps=4, guidance=5.0, scheduler=name)
        assert max_diff(ours, _vpred_ztsnr_reference(tiny_folder, name)) <= 1, name
    plain = latentgen.load(tiny_folder, prediction_type="v_prediction")
    assert max_diff(plain.generate("a red circle", seed=3, steps=4, guidance=5.0, scheduler="euler"),
                    pipe.generate("a red circle", seed=3, steps=4, guidance=5.0, scheduler="euler")) > 5
    with pytest.raises(ValueError, match=r"scheduler='lms' has no zero-terminal-SNR schedule.*use one of: ddim, "
                                         r"euler"):
        pipe.generate("a red circle", steps=2, scheduler="lms")
    with pytest.raises(ValueError, match=r"zero_terminal_snr='yes' is invalid"):
        latentgen.load(tiny_folder, zero_terminal_snr="yes")


def test_a_single_files_v_pred_and_ztsnr_tensors_say_what_it_is(tiny_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    import latentgen
    from latentgen.models import export

    path = export.export(tiny_folder, tmp_path / "tiny.safetensors")
    from safetensors import safe_open

    meta = safe_open(str(path), "pt").metadata()
    save_file({**load_file(str(path)), "v_pred": torch.tensor([]), "ztsnr": torch.tensor([])},
              str(tmp_path / "vpred.safetensors"), meta)  # as NoobAI-XL V-Pred marks itself
    pipe = latentgen.load(tmp_path / "vpred.safetensors")
    config = pipe.scheduler.config
    assert config.prediction_type == "v_prediction" and config.rescale_betas_zero_snr
    asked = latentgen.load(tiny_folder, prediction_type="v_prediction", zero_terminal_snr=True)
    a, b = (p.generate("a red circle", seed=1, steps=3)[0] for p in (pipe, asked))
    assert a.tobytes() == b.tobytes()
    off = latentgen.load(tmp_path / "vpred.safetensors", zero_terminal_snr=False, prediction_type="epsilon")
    assert off.scheduler.config.prediction_type == "epsilon" and not off.scheduler.config.rescale_betas_zero_snr
    assert not latentgen.load(path).scheduler.config.get("rescale_betas_zero_snr")  # no markers: as before
    out = export.export(tiny_folder, tmp_path / "z.safetensors", prediction_type="v", zero_terminal_snr=True)
    assert {"v_pred", "ztsnr"} <= set(load_file(str(out)))  # export writes the markers back
    again = latentgen.load(out).generate("a red circle", seed=1, steps=3)[0]
    assert again.tobytes() == b.tobytes()


def test_cfg_rescale_draws_as_diffusers_guidance_rescale(tiny_folder):
    import pytest
    from conftest import max_diff

    import latentgen

    pipe = latentgen.load(tiny_folder, prediction_type="v_prediction", zero_terminal_snr=True)
    # strong guidance, where the tiny random model's guided output strays from its text prediction's std
    ours = pipe.generate("a red circle", seed=3, steps=4, guidance=30.0, scheduler="euler", guidance_rescale=0.7)
    assert max_diff(ours, _vpred_ztsnr_reference(tiny_folder, "euler", rescale=0.7, guidance=30.0)) <= 1
    plain = pipe.generate("a red circle", seed=3, steps=4, guidance=30.0, scheduler="euler")
    assert max_diff(ours, plain) > 10  # it does something
    assert "CFG Rescale φ: 0.7" in ours[0].info["parameters"] and "CFG Rescale" not in plain[0].info["parameters"]
    both = pipe.generate("a red circle AND a blue square", seed=3, steps=4, guidance=30.0, guidance_rescale=0.7)
    assert max_diff(both, pipe.generate("a red circle AND a blue square", seed=3, steps=4, guidance=30.0)) > 5
    moved = pipe.img2img("a red circle", plain[0], strength=0.6, seed=1, steps=4, guidance_rescale=0.5)
    assert "CFG Rescale φ: 0.5" in moved[0].info["parameters"]
    for bad in (-0.1, 1.5, float("nan"), "0.7"):
        with pytest.raises(ValueError, match=r"guidance_rescale=.* is invalid: use 0 to 1, such as 0.7"):
            pipe.generate("a red circle", steps=2, guidance_rescale=bad)
