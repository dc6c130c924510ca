"""Benchmark: txt2img on the SD 1.5 architecture (random weights), latentgen vs diffusers side by side.

Both pipelines share the very same modules; runs alternate (latentgen, diffusers, latentgen, ...)
so that drift in machine load hits both. Prints, per pipeline, the median seconds per denoising
step (from per-step timestamps), the median seconds per image (text encoding + loop + VAE decode),
the peak memory above the pre-call baseline, and latentgen / diffusers ratios.

    python tests/benchmarks/bench_txt2img.py --steps 4 --repeats 3            # CPU, fp32
    python tests/benchmarks/bench_txt2img.py --device cuda --steps 20 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import psutil  # noqa: E402  (comes with accelerate)
import torch  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402

import latentgen  # noqa: E402
from latentgen import components  # noqa: E402


class PeakMemory:
    """Peak memory above the baseline at entry: CUDA allocator stats, or process RSS sampled at 1 kHz."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.proc, self.stop = psutil.Process(), threading.Event()
            self.base = self.peak = self.proc.memory_info().rss
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.001)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self.stop.set()
            self.thread.join()
        self.mib = (self.peak - self.base) / 2**20


def run_once(fn, device) -> tuple[float, list[float], float]:
    """(seconds for the call, seconds between successive steps, peak MiB) of one call of fn(on_step)."""
    stamps: list[float] = []

    def on_step():
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        fn(on_step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    steps = [b - a for a, b in zip([t0] + stamps, stamps)][1:]  # drop the first: it includes text encoding
    return wall, steps, mem.mib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="sd15")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--scheduler", default="euler_a")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    t = time.perf_counter()
    pipe = latentgen.load(args.preset, device=args.device, dtype=args.dtype)
    c = pipe
    print(f"built {args.preset} with random weights in {time.perf_counter() - t:.1f}s: "
          f"U-Net {sum(p.numel() for p in c.unet.parameters()) / 1e6:.0f}M params, "
          f"device {c.device}, dtype {c.dtype}, {torch.get_num_threads()} threads")
    ref = StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                  scheduler=latentgen.schedulers.make(args.scheduler, c.scheduler.config),
                                  safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    prompt = "a photo of an astronaut riding a horse on mars"
    common = dict(steps=args.steps, size=args.size)

    def ours(on_step):
        pipe.generate(prompt, seed=0, steps=common["steps"], width=args.size, height=args.size,
                      scheduler=args.scheduler, callback=lambda *_: on_step())

    def theirs(on_step):
        ref(prompt, num_inference_steps=common["steps"], height=args.size, width=args.size,
            generator=torch.Generator().manual_seed(0),
            callback_on_step_end=lambda p, i, t, kw: (on_step(), kw)[1])

    results = {"latentgen": [], "diffusers": []}
    ours(lambda: None)  # warm-up (allocator, kernels), not counted
    for r in range(args.repeats):
        for name, fn in (("latentgen", ours), ("diffusers", theirs)):
            results[name].append(run_once(fn, c.device))
            wall, steps, mib = results[name][-1]
            print(f"  run {r + 1} {name:9s}: {wall:7.2f}s/image  {statistics.median(steps):6.3f}s/step  "
                  f"peak +{mib:7.0f} MiB")

    print(f"\n{args.preset} {args.size}x{args.size}, {args.steps} steps {args.scheduler}, CFG on, "
          f"medians of {args.repeats}:")
    summary = {}
    for name, runs in results.items():
        wall = statistics.median(w for w, _, _ in runs)
        step = statistics.median(s for _, steps, _ in runs for s in steps)
        mib = statistics.median(m for _, _, m in runs)
        summary[name] = (wall, step, mib)
        print(f"  {name:9s}: {step:.3f} s/step  {wall:.2f} s/image  peak +{mib:.0f} MiB")
    (lw, ls, lm), (dw, ds, dm) = summary["latentgen"], summary["diffusers"]
    print(f"  ratio latentgen/diffusers: {ls / ds:.3f}x s/step, {lw / dw:.3f}x s/image, "
          f"{lm / dm if dm else float('nan'):.2f}x peak memory")


if __name__ == "__main__":
    main()
