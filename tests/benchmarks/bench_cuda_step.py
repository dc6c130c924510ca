"""Benchmark (GPU): where a CUDA denoising step's time goes, for SD 1.5 at 512x512 with CFG (batch 2).

Prints medians of: one U-Net call as a CUDA-graph replay (``latentgen.backends.cudagraph``) for each weight layout
(channels_last, contiguous) and SDPA attention backend (torch's choice, flash, memory-efficient, cuDNN);
one U-Net call eager and replayed, timed with CUDA events, with cuDNN's default algorithm choice and with
``torch.backends.cudnn.benchmark``; a step inside
``generate`` without any per-step synchronisation ((time of 30 steps - time of 10 steps) / 20); the text
encoder and the VAE decode. Random weights (the preset's), fp16.

    python tests/benchmarks/bench_cuda_step.py --calls 50
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import latentgen  # noqa: E402
from latentgen.backends import cudagraph
from latentgen.text import prompts  # noqa: E402

from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

ATTENTION = {"default": None, "flash": [SDPBackend.FLASH_ATTENTION], "efficient": [SDPBackend.EFFICIENT_ATTENTION],
             "cudnn": [SDPBackend.CUDNN_ATTENTION]}


def event_ms(fn, calls: int) -> float:
    """Median milliseconds of fn() over ``calls`` calls, each bracketed by CUDA events (after 3 warm-ups)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(calls):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def wall_s(fn, calls: int) -> float:
    fn()
    out = []
    for _ in range(calls):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="sd15")
    ap.add_argument("--calls", type=int, default=50)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    pipe = latentgen.load(args.preset, device="cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}; {pipe!r}", flush=True)
    f = pipe.vae_scale_factor
    h = pipe.defaults.height // f
    x = torch.randn(2, 4, h, h, device="cuda", dtype=pipe.dtype)
    c = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, device="cuda", dtype=pipe.dtype)
    t = torch.tensor(500.0, device="cuda")
    rows = []
    for layout in (torch.channels_last, torch.contiguous_format):  # the U-Net's weights; activations follow
        pipe.unet.to(memory_format=layout)
        for name, backends in ATTENTION.items():
            with sdpa_kernel(backends) if backends else contextlib.nullcontext():
                g = cudagraph.Graphed(pipe.unet)
                try:
                    ms = event_ms(lambda: g(x, t, encoder_hidden_states=c), args.calls)
                except RuntimeError as e:  # no kernel of that backend for these shapes
                    print(f"  {name}: {str(e).splitlines()[0][:100]}")
                    ms = float("nan")
            rows.append((f"U-Net graph, {str(layout).removeprefix('torch.')}, SDPA {name}"
                         + (" (not recorded: eager)" if g.failed else ""), ms))
    pipe.unet.to(memory_format=torch.channels_last)
    for bench in (False, True):
        torch.backends.cudnn.benchmark = bench
        g = cudagraph.Graphed(pipe.unet)
        rows.append((f"U-Net call eager  (cudnn.benchmark={bench})",
                     event_ms(lambda: pipe.unet(x, t, encoder_hidden_states=c), args.calls)))
        rows.append((f"U-Net call graph  (cudnn.benchmark={bench})",
                     event_ms(lambda: g(x, t, encoder_hidden_states=c), args.calls)))
    torch.backends.cudnn.benchmark = False
    prompt = "a photo of an astronaut riding a horse on mars"
    gen = {n: wall_s(lambda n=n: pipe.generate(prompt, seed=0, steps=n), 5) for n in (10, 30)}
    rows.append(("step inside generate, no per-step sync", (gen[30] - gen[10]) / 20 * 1e3))
    rows.append(("whole image, 10 steps", gen[10] * 1e3))
    chunks = prompts.tokenize(prompt, pipe.tokenizer)
    rows.append(("text encoder (one prompt)", event_ms(lambda: prompts.encode(pipe.text_encoder, chunks), args.calls)))
    z = torch.randn(1, 4, h, h, device="cuda", dtype=pipe.dtype)
    rows.append(("VAE decode (one image)", event_ms(lambda: pipe.vae.decode(z), 10)))
    rows.append(("pipe.decode (VAE + guard + to PIL)", wall_s(lambda: pipe.decode(z * 0.18215), 10) * 1e3))
    for name, ms in rows:
        print(f"  {name:45s} {ms:8.2f} ms")


if __name__ == "__main__":
    main()
