"""Benchmark: the embedded default model, one 20-step image per call, on each backend and number format.

Speed: the median seconds of a single-image ``generate`` call (text encoding + 20 CFG steps + VAE decode),
calls alternating between configurations so that drift in machine load hits all alike, against
diffusers' StableDiffusionPipeline on the same weights. Fidelity of each configuration against torch
fp32 (diffusers' arithmetic): the evaluator's adherence on its 84 images (42 prompts x 2 seeds), their
off-palette pixels, and the PSNR of every image against torch fp32's.

    python tests/benchmarks/bench_embedded.py --calls 30          # speed and fidelity
    python tests/benchmarks/bench_embedded.py --calls 30 --no-fidelity
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402

import latentgen  # noqa: E402
from latentgen.embedded import quality  # noqa: E402

PROMPT = "a red circle on a blue background"
CONFIGS = {"torch fp32": dict(backend="torch", dtype="fp32"), "openvino fp32": dict(backend="openvino", dtype="fp32"),
           "openvino bf16": dict(backend="openvino", dtype="bf16"), "torch bf16": dict(backend="torch", dtype="bf16")}


def psnr(a, b) -> float:
    err = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if err == 0 else 10 * np.log10(255**2 / err)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=30, help="timed calls per configuration")
    ap.add_argument("--no-fidelity", action="store_true")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    default = latentgen.load()
    print(f"default: {default!r}\n{torch.get_num_threads()} threads")
    pipes = {"default": default, **{name: latentgen.load(**kw) for name, kw in CONFIGS.items()}}
    c = latentgen.load(backend="torch", dtype="fp32")
    ref = StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                  scheduler=latentgen.schedulers.make("euler_a", c.scheduler.config),
                                  safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    runners = {name: (lambda p: lambda i: p.generate(PROMPT, seed=i, steps=20))(p) for name, p in pipes.items()}
    runners["diffusers fp32"] = lambda i: ref(PROMPT, num_inference_steps=20, height=64, width=64,
                                              generator=torch.Generator().manual_seed(i))
    times = {name: [] for name in runners}
    for fn in runners.values():
        for i in range(3):
            fn(i)  # warm-up (conversion, allocator), not counted
    for i in range(args.calls):
        for name, fn in runners.items():
            t = time.perf_counter()
            fn(i)
            times[name].append(time.perf_counter() - t)
    print(f"\nembedded model, 64x64, 20 steps euler_a, CFG; median of {args.calls} single-image calls:")
    base = statistics.median(times["diffusers fp32"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:14s}: {med:.3f} s/image (quartiles {np.percentile(ts, 25):.3f}-{np.percentile(ts, 75):.3f}), "
              f"{base / med:.2f}x diffusers fp32")
    if args.no_fidelity:
        return
    print("\nfidelity against torch fp32 (84 images: 42 prompts x seeds 0 and 1000):")
    prompts = quality.adherence_prompts()
    exact = [im for s in (0, 1000) for im in pipes["torch fp32"].generate(prompts, seed=s, steps=20)]
    for name, p in pipes.items():
        report = quality.adherence(p, prompts)
        images = [im for s in (0, 1000) for im in p.generate(prompts, seed=s, steps=20)]
        values = [psnr(a, b) for a, b in zip(images, exact)]
        finite = [v for v in values if np.isfinite(v)]
        print(f"  {name:14s}: {report.summary()}  PSNR median {statistics.median(values):.1f} dB, "
              f"min {min(finite) if finite else float('inf'):.1f} dB, identical images {len(values) - len(finite)}/84")


if __name__ == "__main__":
    main()
