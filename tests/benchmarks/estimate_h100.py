"""What latentgen's default would give on an H100, from an H200's own counters (only H200s are lent here).

An H100 SXM has the H200's multiprocessors and clocks, and 3.35 TB/s of memory bandwidth against 4.8.
So each kernel of the step takes at most its H200 time, or its DRAM bytes at the H100's bandwidth,
whichever is longer; an H100 PCIe (114 SMs at 1755 MHz, 2.0 TB/s) also scales the time by its compute
rate. This script (1) on the GPU records the default's U-Net call (SD 1.5, 512x512, CFG batch 2,
fp16, ``backend="compile"``), times its replay with CUDA events and replays it once more between
``cudaProfilerStart``/``Stop`` for Nsight Compute; (2) anywhere, reads that profile's per-kernel time
and DRAM bytes and prints the estimate.

    # on the GPU (ncu reads the counters; leave caches warm and clocks alone)
    ncu --profile-from-start off --cache-control none --clock-control none \
        --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
        -o /tmp/unet --force-overwrite python tests/benchmarks/estimate_h100.py --replay
    ncu --import /tmp/unet.ncu-rep --csv --page raw \
        --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum > unet.csv
    python tests/benchmarks/estimate_h100.py --csv unet.csv --step-ms 6.7   # 6.7: bench_txt2img's ms/step

Measured 2026-11-29 (H200, torch 2.11+cu130): 648 kernels, 7.0 ms under the profiler (6.38 ms replayed
without it), 3.56 GB of DRAM traffic; H100 SXM 1.001x the kernel time (about 149 it/s from the 6.7 ms
step), H100 PCIe 1.31x (about 114 it/s).
"""

from __future__ import annotations

import argparse
import csv
import os

H100 = {"H100 SXM": (1.0, 3.35e12), "H100 PCIe": (132 * 1980 / (114 * 1755), 2.0e12)}  # compute scale, B/s
ACHIEVED = 0.9  # of the datasheet bandwidth that streaming kernels reach (the H200 copies at ~4.3 of 4.8 TB/s)


def replay() -> None:
    import torch

    import latentgen

    torch.set_grad_enabled(False)
    pipe = latentgen.load("sd15", device="cuda")
    g = pipe.runtime.for_unet(pipe.unet)
    x = torch.randn(2, 4, 64, 64, device="cuda", dtype=pipe.dtype)
    c = torch.randn(2, 77, pipe.unet.config.cross_attention_dim, device="cuda", dtype=pipe.dtype)
    for _ in range(20):  # the first compiles and records
        g(x, 500, encoder_hidden_states=c)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(50):
        g(x, 500, encoder_hidden_states=c)
    end.record()
    torch.cuda.synchronize()
    print(f"{pipe!r}\nreplayed U-Net call: {start.elapsed_time(end) / 50:.3f} ms (mean of 50 back to back)", flush=True)
    torch.cuda.profiler.start()
    g(x, 500, encoder_hidden_states=c)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


def _number(text: str) -> float:
    return float(text.replace(",", ""))  # ncu writes 1,234.5


def estimate(path: str, step_ms: float) -> None:
    rows = list(csv.reader(open(path)))
    head, units, kernels = rows[0], rows[1], rows[2:]
    t, r, w = (head.index(k) for k in ("gpu__time_duration.sum", "dram__bytes_read.sum", "dram__bytes_write.sum"))
    scale = {"us": 1e-6, "ns": 1e-9, "ms": 1e-3}[units[t]], {"Mbyte": 1e6, "Kbyte": 1e3, "Gbyte": 1e9, "byte": 1}
    seconds = [_number(k[t]) * scale[0] for k in kernels]
    moved = [_number(k[r]) * scale[1][units[r]] + _number(k[w]) * scale[1][units[w]] for k in kernels]
    total = sum(seconds)
    print(f"{len(kernels)} kernels, {total * 1e3:.3f} ms, {sum(moved) / 1e9:.2f} GB of DRAM traffic "
          f"({sum(moved) / total / 1e12:.2f} TB/s on average)")
    for name, (compute, bandwidth) in H100.items():
        slower = sum(max(s * compute, b / (bandwidth * ACHIEVED)) for s, b in zip(seconds, moved)) / total
        print(f"{name}: {slower:.3f}x the H200's kernel time -> {step_ms * slower:.2f} ms/step, "
              f"{1e3 / (step_ms * slower):.0f} it/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replay", action="store_true", help="on the GPU: record, time and replay once for ncu")
    ap.add_argument("--csv", default=None, help="ncu's raw CSV of that replay")
    ap.add_argument("--step-ms", type=float, default=6.7, help="the H200's ms per step (bench_txt2img.py)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.replay:
        replay()
    if args.csv:
        estimate(args.csv, args.step_ms)
    if not (args.replay or args.csv):
        ap.error("give --replay (on the GPU, under ncu) or --csv FILE")


if __name__ == "__main__":
    main()
