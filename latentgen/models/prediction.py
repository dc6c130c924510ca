"""What a U-Net predicts: the noise (``epsilon``, SD 1.x, SD 2 512-base, inpainting) or the velocity
v = alpha_t * noise - sigma_t * x0 (``v_prediction``, SD 2.x 768). The file does not say; the
source of the answer, first found wins (``resolve``):

1. the ``prediction_type=`` argument (``--prediction-type``);
2. ``<checkpoint stem>.yaml`` beside the file, A1111's convention: ``model.params.parameterization: "v"``
   (absent or ``"eps"``: epsilon);
3. the file header's ``modelspec.prediction_type`` (``"v"`` or ``"epsilon"``: latentgen's export and
   kohya's scripts write it);
4. SD 1.x and SD 2 inpainting: epsilon (A1111 does the same; no such release predicts v);
5. SD 2.x: ``detect``, one U-Net call.

Detection (``detect``): one U-Net call at the last training timestep t = T-1 (SD's betas leave
alpha_bar = 0.0047 there: x_t is 99.8% noise) on a seeded N(0, 1) latent x (1, C, 8, 8) and a
constant context, reading the least-squares slope s = <out, x> / <x, x>. An epsilon model must return
the noise, which at t = T-1 is x itself: s = sigma_T = 1.0. A v model returns E[v | x_t] =
alpha E[noise | x_t] - sigma E[x0 | x_t], whose two terms cancel to first order (both are
alpha * sigma * x for unit-variance latents): s = 0. Rule: v_prediction when s < 0.5.

Measured (``tests/benchmarks/measure_prediction.py``, CPU, fp32):

* trained, epsilon: the embedded model, s = 1.003 -> epsilon (right);
* trained, v: the embedded model fine-tuned to predict v on its own world (400 steps of 16 images,
  U-Net only; drawn as v it keeps 100% prompt adherence on 21 prompts, drawn as epsilon it falls to
  29-43%): s = 0.26 after 50 steps, 0.11-0.20 from 100 to 400 -> v at all 8 checkpoints (right);
  A1111's test (mean(output - input) < -1 on a constant 0.5 input) read -0.59 to -0.76 there, so
  epsilon at all 8 (wrong): its threshold fits the statistics of SD 2's latents, not v as such;
* random weights (no right answer): 40 tiny SD 2-shaped, 40 ``tiny-random`` and 2 full-size ``sd2``
  U-Nets give s in [-0.10, 0.05], all read as v_prediction (their output ignores the input);
  A1111's test reads all 82 as epsilon.

Not measured: the released SD 2.x files (nothing is downloaded here). Where it matters, put the yaml
beside the file or pass ``prediction_type``; a wrong guess shows as washed-out or noisy images.

A single file with an (empty) ``v_pred`` tensor predicts v, and one with ``ztsnr`` was trained on a noise schedule
of zero terminal SNR (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
https://arxiv.org/abs/2305.08891): the markers NoobAI-XL's v-prediction releases carry and ComfyUI reads
(``load_components``; ``prediction_type=`` and ``zero_terminal_snr=`` count over them). ``zero_snr`` puts such a
schedule on a scheduler: diffusers' ``rescale_betas_zero_snr`` (the last timestep pure noise) with the paper's
"trailing" timesteps, so sampling starts there.
"""

from __future__ import annotations

import torch

MARKERS = ("v_pred", "ztsnr")  # a single file's tensors that say v-prediction, zero terminal SNR
ALIASES = {"epsilon": "epsilon", "eps": "epsilon", "v_prediction": "v_prediction", "v": "v_prediction",
           "v-prediction": "v_prediction"}


def normalize(value: str | None, what: str = "prediction_type") -> str | None:
    """'epsilon', 'v_prediction' or None from the spellings people use ('eps', 'v', ...)."""
    if value is None:
        return None
    key = str(value).strip().lower()
    if key not in ALIASES:
        raise ValueError(f"{what}={value!r} is unknown; use 'epsilon' (SD 1.x, SD 2 512-base) or "
                         f"'v_prediction' (SD 2.x 768).")
    return ALIASES[key]


def from_yaml(text: str) -> dict:
    """The entries of an LDM/A1111 model yaml that latentgen honours: ``prediction_type`` (from
    ``parameterization``), ``scale_factor``, the U-Net's ``num_heads`` / ``num_head_channels``, and a ControlNet's
    ``global_average_pooling`` (``control_stage_config``: v1.1's shuffle model pools its residuals)."""
    import yaml

    params = ((yaml.safe_load(text) or {}).get("model") or {}).get("params") or {}
    unet = (params.get("unet_config") or {}).get("params") or {}
    out = {"prediction_type": normalize(params.get("parameterization") or "eps", "parameterization")}
    out.update({k: params[k] for k in ("scale_factor",) if k in params})
    out.update({k: unet[k] for k in ("num_heads", "num_head_channels") if unet.get(k, -1) not in (-1, None)})
    control = (params.get("control_stage_config") or {}).get("params") or {}
    out.update({k: bool(control[k]) for k in ("global_average_pooling",) if k in control})
    return out


def resolve(argument: str | None, yaml_value: str | None, header: dict, family: str,
            inpainting: bool) -> tuple[str | None, str]:
    """(prediction type or None to detect, where it came from)."""
    if argument:
        return argument, "argument"
    if yaml_value:
        return yaml_value, "model yaml"
    if header.get("modelspec.prediction_type"):
        return normalize(header["modelspec.prediction_type"], "modelspec.prediction_type"), "file header"
    if family == "sd1" or inpainting:
        return "epsilon", "family"
    return None, "detected"


@torch.no_grad()
def probe(unet, kind: str = "slope", timesteps: int = 1000) -> float:
    """One U-Net call at the last training timestep on an 8x8 latent, with a constant context of two
    tokens (0.5 everywhere, as A1111). kind "slope": the least-squares slope of the output on a
    seeded N(0, 1) input; kind "a1111": mean(output - input) on 0.5 everywhere (A1111's
    ``is_using_v_parameterization_for_sd2``, which calls it v below -1)."""
    cfg = unet.config
    p = next(unet.parameters())
    g = torch.Generator().manual_seed(0)
    shape = (1, cfg.in_channels, 8, 8)
    x = torch.full(shape, 0.5) if kind == "a1111" else torch.randn(shape, generator=g)
    context = torch.full((1, 2, cfg.cross_attention_dim), 0.5)
    t = torch.tensor([timesteps - 1])  # the last training timestep
    out = unet(x.to(p), t.to(p.device), encoder_hidden_states=context.to(p)).sample.float().cpu()  # (1, C, 8, 8)
    x = x[:, :cfg.out_channels]
    if kind == "a1111":
        return float((out - x).mean())
    return float((out * x).sum() / (x * x).sum())


def detect(unet, timesteps: int = 1000) -> str:
    """'v_prediction' or 'epsilon' for an SD 2.x U-Net trained over ``timesteps``: the slope rule."""
    return "v_prediction" if probe(unet, "slope", timesteps) < 0.5 else "epsilon"


def zero_snr(scheduler, on: bool):
    """``scheduler`` rebuilt with (``on``) or without a zero-terminal-SNR schedule: with it, its betas rescaled so the
    last timestep is pure noise, and "trailing" timesteps that start sampling there."""
    extra = {"timestep_spacing": "trailing"} if on else {}
    return type(scheduler).from_config(scheduler.config, rescale_betas_zero_snr=on, **extra)
