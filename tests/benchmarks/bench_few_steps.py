"""Benchmark: few-step drawing on a CPU (issue 37): the tiny VAE against the full one, and the time to a whole SD 1.5
image with 4 LCM steps, guidance 1 and the tiny VAE against diffusers' default (20 steps, CFG 7.5, full VAE).

    python tests/benchmarks/bench_few_steps.py --part vae --repeats 10     # decode/encode at 512x512, ms
    python tests/benchmarks/bench_few_steps.py --part sd15 --repeats 3     # whole images, s
    python tests/benchmarks/bench_few_steps.py --part lcm                  # embedded: LCM-LoRA vs base, 84 images
    python tests/benchmarks/bench_few_steps.py --part figure --out docs/previews.png

Random weights stand in for the published ones (no hub here): SD 1.5's architecture (``latentgen.load("sd15")``: bf16
and OpenVINO where the CPU has bf16), a random rank-16 kohya LoRA in place of an LCM-LoRA (the same tensors'
shapes and cost), and a seeded random ``AutoencoderTiny`` in place of TAESD. diffusers runs its defaults on its own
fp32 copy of the same weights. Calls alternate so that drift in the machine's load hits both alike; medians.
Time only on a quiet machine (``uptime``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from bench_lora import random_kohya  # noqa: E402
from diffusers import AutoencoderTiny, StableDiffusionPipeline  # noqa: E402

import latentgen  # noqa: E402
from latentgen.models import loading  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse"


def cpu() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def medians(runners: dict, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for k, fn in runners.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def tiny_like(vae) -> AutoencoderTiny:
    torch.manual_seed(0)
    return AutoencoderTiny().to(vae.device, vae.dtype).eval().requires_grad_(False)


@torch.no_grad()
def vae_part(repeats: int) -> None:
    c = loading.load_components("sd15")
    full, small = c.vae, tiny_like(c.vae)
    z = torch.randn(1, 4, 64, 64).to(full.dtype)
    x = torch.rand(1, 3, 512, 512).to(full.dtype) * 2 - 1
    for vae in (full, small):  # warm-up
        vae.decode(z)
    m = medians({"full decode": lambda: full.decode(z / full.config.scaling_factor),
                 "tiny decode": lambda: small.decode(z),
                 "full encode": lambda: full.encode(x).latent_dist.mean,
                 "tiny encode": lambda: small.encode(x)}, repeats)
    print(f"VAE at 512x512, {full.dtype}, {torch.get_num_threads()} threads, {cpu()}; medians of {repeats}:")
    for k, v in m.items():
        print(f"  {k}: {v * 1000:.0f} ms")
    print(f"  decode: tiny / full = {m['tiny decode'] / m['full decode']:.3f}; "
          f"encode: tiny / full = {m['tiny encode'] / m['full encode']:.3f}")


def sd15_part(repeats: int) -> None:
    pipe = latentgen.load("sd15")
    lora = random_kohya(pipe.unet, Path(tempfile.mkdtemp(prefix="bench-lcm-")) / "lcm.safetensors", 1)
    pipe.load_lora(lora, name="lcm")
    pipe.vae = tiny_like(pipe.vae)
    c = loading.load_components("sd15", dtype="fp32", backend="torch")
    ref = StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                  scheduler=c.scheduler, safety_checker=None, feature_extractor=None,
                                  requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    print(f"{pipe!r}\n{torch.get_num_threads()} threads, {cpu()}")

    def ours():
        pipe.generate(PROMPT, seed=0, steps=4, guidance=1.0, scheduler="lcm", width=512, height=512)

    def theirs():  # StableDiffusionPipeline's defaults but the steps: 20 (A1111's), CFG 7.5, full VAE, fp32
        ref(PROMPT, num_inference_steps=20, guidance_scale=7.5, generator=torch.Generator().manual_seed(0))
    print(f"first call (conversion or cache read): {timed(ours):.1f} s")
    m = medians({"latentgen: 4 LCM steps, guidance 1, LoRA, tiny VAE": ours,
                 "diffusers default: 20 steps, CFG 7.5, full VAE (fp32)": theirs}, repeats)
    for k, v in m.items():
        print(f"  {k}: {v:.2f} s per image (median of {repeats})")
    a, b = m.values()
    print(f"  latentgen / diffusers = {a / b:.3f} ({b / a:.1f}x faster)")


def lcm_part(lora: str) -> dict:
    """The embedded model with its LCM-LoRA (4 LCM steps, guidance 1) against the base at its defaults (20 Euler a
    steps, guidance 4), on the 84 adherence images, in one run; seconds per image from the whole calls."""
    from latentgen.embedded import quality

    base, fast = latentgen.load(), latentgen.load()
    fast.load_lora(lora, name="lcm")
    out = {}
    for name, pipe, kw in (("base, 20 steps", base, {}), ("lcm, 4 steps", fast, {"steps": 4, "guidance": 1.0}),
                           ("lcm, 2 steps", fast, {"steps": 2, "guidance": 1.0})):
        quality.adherence(pipe, prompts=quality.adherence_prompts()[:4], seeds=(0,), **kw)  # warm-up (conversion)
        t = time.perf_counter()
        s = quality.adherence(pipe, seeds=(0, 1000), **kw).summary()
        s["seconds_per_image"] = round((time.perf_counter() - t) / s["images"], 4)
        out[name] = s
        print(f"  {name}: {s}")
    ratio = out["lcm, 4 steps"]["seconds_per_image"] / out["base, 20 steps"]["seconds_per_image"]
    print(f"  time per image, lcm 4 steps / base 20 steps = {ratio:.3f}; {fast!r}; {cpu()}")
    return out


def figure(out: str) -> None:
    """docs/previews.png: the embedded model's live previews (Euler a, 20 steps), cheap map over full VAE."""
    from latentgen import images

    pipe, seen, at = latentgen.load(), {}, (2, 5, 10, 20)
    pipe.generate("a red circle on a blue background", seed=3, scheduler="euler_a",
                  callback=lambda i, n, z, x0: seen.__setitem__(i, x0.clone()))
    cells = [pipe.preview(seen[i], m)[0] for m in ("cheap", "full") for i in at]
    images.grid(cells, len(at), labels=[f"{m}, step {i}" for m in ("cheap", "full") for i in at]).save(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("vae", "sd15", "lcm", "figure"), default="vae")
    ap.add_argument("--lora", default="lcm", help="--part lcm: the LCM-LoRA (default: the shipped one)")
    ap.add_argument("--out", default="docs/previews.png", help="--part figure: where the picture goes")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    if args.part == "figure":
        return figure(args.out)
    if args.part == "lcm":
        return lcm_part(args.lora)
    (vae_part if args.part == "vae" else sd15_part)(args.repeats)


if __name__ == "__main__":
    main()
