"""Measure the prediction-type rule of ``latentgen.models.prediction`` (the numbers in its docstring).

Probes (``prediction.probe``) on:
  * random-weight U-Nets: SD 2-shaped tiny ones, ``tiny-random`` (SD 1-shaped), full-size ``sd2``;
  * the embedded default model (trained, epsilon);
  * the embedded model fine-tuned to predict v on its own flat-shapes world (a trained v model),
    probed along the way, and its prompt adherence drawn as v (right) and as epsilon (wrong).

    python tests/benchmarks/measure_prediction.py --tiny 40 --full 2 --steps 400      # ~10 min, 1 thread
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from diffusers import DDPMScheduler, UNet2DConditionModel  # noqa: E402

import latentgen  # noqa: E402
from latentgen.models import loading, prediction
from latentgen.training import loop as train  # noqa: E402
from latentgen.embedded import quality, recipe, shapes  # noqa: E402
from latentgen.models.presets import load_preset  # noqa: E402

TINY_SD2 = dict(block_out_channels=(64, 128), layers_per_block=1, sample_size=8, cross_attention_dim=64,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), use_linear_projection=True,
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(1, 2))


def probes(unet) -> dict:
    return {k: round(prediction.probe(unet, k), 4) for k in ("a1111", "slope")}


def random_unets(tiny: int, full: int) -> dict:
    out = {}
    cases = (("tiny sd2-shaped", TINY_SD2, tiny), ("tiny-random (sd1)", load_preset("tiny-random").unet, tiny),
             ("sd2 full size", load_preset("sd2").unet, full))
    for label, cfg, n in cases:
        rows = []
        for seed in range(n):
            torch.manual_seed(seed)
            rows.append(probes(UNet2DConditionModel.from_config(cfg).eval()))
        out[label] = rows
    return out


def finetune_v(c, steps: int, every: int, batch: int = 16, lr: float = 2e-4) -> tuple[torch.nn.Module, list]:
    """The embedded U-Net trained to predict v (text encoder and VAE frozen); probes along the way."""
    unet = copy.deepcopy(c.unet).requires_grad_(True).train()
    sched = DDPMScheduler.from_config(c.scheduler.config, prediction_type="v_prediction")
    opt = torch.optim.AdamW(unet.parameters(), lr=lr)
    sf, track = c.vae.config.scaling_factor, [{"step": 0, **probes(unet.eval())}]
    unet.train()
    for step in range(1, steps + 1):
        scenes = recipe.scenes(7, "v", step, 0, 0, batch, 64)
        captions = train.drop_captions([s.caption for s in scenes], 0.1, 7, step)
        gen = train.step_generator(7, step)
        with torch.no_grad():
            latents = c.vae.encode(recipe.to_pixels([shapes.draw(s, 64) for s in scenes])).latent_dist.mean * sf
            hidden = c.text_encoder(train.tokenize(c.tokenizer, captions))[0]  # (B, 77, D)
        loss = train.diffusion_loss(unet, hidden, latents, sched, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every == 0:
            track.append({"step": step, "loss": round(loss.item(), 4), **probes(unet.eval())})
            unet.train()
            print(track[-1], flush=True)
    return unet.requires_grad_(False).eval(), track


def adherence(c, unet, kind: str) -> dict:
    pipe = latentgen.Pipeline(c.tokenizer, c.text_encoder, unet, c.vae,
                              type(c.scheduler).from_config(c.scheduler.config, prediction_type=kind),
                              defaults=c.defaults)
    prompts = quality.adherence_prompts(backgrounds=1)  # 21 prompts
    return quality.adherence(pipe, prompts=prompts, seeds=(0,), steps=20).summary()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", type=int, default=40)
    ap.add_argument("--full", type=int, default=2)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    report = {"random": random_unets(args.tiny, args.full)}
    c = loading.load_components(None, device="cpu", dtype="fp32")
    report["embedded (eps)"] = probes(c.unet)
    v_unet, report["finetune to v"] = finetune_v(c, args.steps, args.every)
    report["adherence"] = {"eps model as eps": adherence(c, c.unet, "epsilon"),
                           "v model as v": adherence(c, v_unet, "v_prediction"),
                           "v model as eps": adherence(c, v_unet, "epsilon")}
    for label, rows in report["random"].items():
        if not rows:
            continue
        report[f"{label}: a1111 says eps"] = f"{sum(r['a1111'] >= -1 for r in rows)}/{len(rows)}"
        report[f"{label}: a1111 range"] = [min(r["a1111"] for r in rows), max(r["a1111"] for r in rows)]
        report[f"{label}: slope range"] = [min(r["slope"] for r in rows), max(r["slope"] for r in rows)]
    report["seconds"] = round(time.time() - t0)
    report["random"] = {k: v[:3] for k, v in report["random"].items()}  # a sample; the ranges above cover all
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
