"""Benchmark: txt2img on the SD 1.5 architecture (random weights), latentgen vs diffusers side by side.

latentgen at its default (or --dtype) against diffusers' default (fp32) and diffusers' best known
settings (bf16 + channels_last on CPU, fp16 + channels_last on CUDA), each over its own copy of the
same seeded weights; runs alternate so that drift in machine load hits all alike. Prints, per pipeline, the median seconds per denoising
step (from per-step timestamps), the median seconds per image (text encoding + loop + VAE decode),
the peak memory above the pre-call baseline, and latentgen / diffusers ratios.

    python tests/benchmarks/bench_txt2img.py --steps 4 --repeats 3            # CPU, SD 1.5 at 512
    python tests/benchmarks/bench_txt2img.py --preset default --steps 20 --repeats 10   # the embedded model
    python tests/benchmarks/bench_txt2img.py --device cuda --steps 20 --repeats 5 --diffusers-compiled \
        --also-backend cudagraph --also-backend torch   # GPU: compiled, graphed and eager on both sides
    python tests/benchmarks/bench_txt2img.py --steps 4 --repeats 5 --isolate  # each run in its own process
    python tests/benchmarks/bench_txt2img.py --preset sdxl --steps 2 --repeats 1 --isolate --scheduler euler
        # SDXL at 1024 against diffusers' StableDiffusionXLPipeline (one copy of SDXL per process)

By default the three pipelines share one process (as a script comparing them would); ``--isolate`` runs
each measured call in a fresh process of its own (built, warmed up, run once), so that no pipeline's
memory, allocator or page-cache state weighs on another's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import psutil  # noqa: E402  (comes with accelerate)
import torch  # noqa: E402
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: E402

import latentgen  # noqa: E402
from latentgen.backends import choice  # noqa: E402
from latentgen.models.presets import load_preset  # noqa: E402


def _kernel_peak_reset() -> bool:
    """Linux: set the kernel's record of the peak resident size (VmHWM) to the current size; False where
    that is not possible (other systems, a read-only /proc)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


class PeakMemory:
    """Peak memory above the baseline at entry: CUDA allocator stats; on Linux the kernel's own peak resident
    size (VmHWM, reset at entry), which costs the timed call nothing; elsewhere process RSS sampled at
    100 Hz by a thread. (The 1 kHz sampling thread used before slowed every pipeline by 2-5% on 2 cores:
    SD 1.5 steps of 4.30 against 4.16 s for latentgen, 10.46 against 10.06 s for diffusers fp32.)"""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        elif _kernel_peak_reset():
            self.thread, self.base = None, _status_bytes("VmRSS")
        else:
            self.proc, self.stop = psutil.Process(), threading.Event()
            self.base = self.peak = self.proc.memory_info().rss
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        elif self.thread is None:
            self.peak = _status_bytes("VmHWM")
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


def diffusers_pipeline(preset: str, device, dtype: str, channels_last: bool, scheduler: str, compiled: bool = False):
    """diffusers' StableDiffusionPipeline over its own copy of the preset's modules (same seeded weights);
    ``compiled``: its U-Net through ``torch.compile(mode="reduce-overhead", fullgraph=True)``, as diffusers'
    docs advise on GPUs (inductor's kernels in CUDA graphs)."""
    c = latentgen.load(preset, device=device, dtype=dtype, backend="torch")
    if channels_last:
        c.unet.to(memory_format=torch.channels_last)
    unet = torch.compile(c.unet, mode="reduce-overhead", fullgraph=True) if compiled else c.unet
    sched = latentgen.schedulers.make(scheduler, c.scheduler.config)
    if c.xl is not None:  # SDXL: diffusers' SDXL pipeline over the same two encoders
        ref = StableDiffusionXLPipeline(vae=c.vae, text_encoder=c.text_encoder, text_encoder_2=c.xl.text_encoder_2,
                                        tokenizer=c.tokenizer, tokenizer_2=c.xl.tokenizer_2, unet=unet, scheduler=sched)
    else:
        ref = StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=unet,
                                      scheduler=sched, safety_checker=None, feature_extractor=None,
                                      requires_safety_checker=False)
    ref.set_progress_bar_config(disable=True)
    return ref


def pipeline_names(args, device: str) -> tuple[list[str], dict]:
    """The pipelines to run, latentgen's first, and diffusers' settings {name: (dtype, channels_last, compiled)}."""
    half = "fp16" if device.startswith("cuda") else "bf16"
    settings = {"diffusers fp32": ("fp32", False, False), f"diffusers {half}+CL": (half, True, False)}
    if args.diffusers_compiled:
        settings[f"diffusers {half}+CL compiled"] = (half, True, True)
    ours = ["latentgen"] + [f"latentgen {b}" for b in args.also_backend]
    return ours + list(settings), settings


def runners(args, names=None) -> tuple[dict, object]:
    """{name: fn(on_step, steps)} for the pipelines ``names`` (default all), and latentgen's pipeline."""
    torch.set_grad_enabled(False)
    t = time.perf_counter()
    if names and "latentgen" not in names:  # a worker of diffusers alone: no copy of latentgen's model beside it
        from types import SimpleNamespace

        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        pipe = SimpleNamespace(device=device, defaults=load_preset(args.preset).defaults,
                               unet=torch.nn.Linear(1, 1))  # what is read of latentgen's pipeline below
    else:
        pipe = latentgen.load(args.preset, device=args.device, dtype=args.dtype, backend=args.backend)
    size = args.size or pipe.defaults.width
    print(f"built {args.preset} with random weights in {time.perf_counter() - t:.1f}s: "
          f"U-Net {sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.0f}M params, "
          f"{torch.get_num_threads()} threads; latentgen: {pipe!r}", flush=True)
    all_names, settings = pipeline_names(args, str(pipe.device))
    names = names or all_names
    pipes = {n: pipe if n == "latentgen" else latentgen.load(args.preset, device=pipe.device, dtype=args.dtype,
                                                             backend=n.split()[1])
             for n in names if n.startswith("latentgen")}
    refs = {n: diffusers_pipeline(args.preset, pipe.device, *settings[n][:2], args.scheduler, settings[n][2])
            for n in names if n in settings}
    prompt = "a photo of an astronaut riding a horse on mars"

    def ours(p):
        return lambda on_step, steps=args.steps: p.generate(prompt, seed=0, steps=steps, width=size, height=size,
                                                            scheduler=args.scheduler, callback=lambda *_: on_step())

    def theirs(ref):
        return lambda on_step, steps=args.steps: ref(
            prompt, num_inference_steps=steps, height=size, width=size, generator=torch.Generator().manual_seed(0),
            callback_on_step_end=lambda p, i, t, kw: (on_step(), kw)[1])

    out = {n: ours(pipes[n]) if n in pipes else theirs(refs[n]) for n in names}
    for name, fn in out.items():
        t, rss = time.perf_counter(), psutil.Process().memory_info().rss
        if name in pipes:
            pipes[name].runtime.for_unet(pipes[name].unet)  # an OpenVINO conversion (first run) or cache read
        fn(lambda: None, min(args.steps, 3))  # warm-up (allocator, kernels, compiles, graph records), not counted
        print(f"{name} ready in {time.perf_counter() - t:.1f}s (conversion, compile, first call; not counted)", flush=True)
        if name in pipes and pipe.device.type == "cpu":
            print(f"resident memory after {name}'s first call: +{(psutil.Process().memory_info().rss - rss) / 2**20:.0f} "
                  f"MiB (what its backend keeps: for OpenVINO, the compiled U-Net)", flush=True)
    return out, pipe


def isolated_run(name: str, argv: list[str]) -> tuple[float, list[float], float]:
    """One measured run of pipeline ``name`` in a fresh process (built, warmed up, run once)."""
    cmd = [sys.executable, __file__, *argv, "--worker", name]
    lines = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()
    wall, steps, mib = json.loads(next(line for line in lines if line.startswith("RESULT "))[7:])
    return wall, steps, mib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="sd15")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=None, help="default: the model's")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"], help="latentgen's; default: its default")
    ap.add_argument("--backend", default=None, choices=choice.BACKENDS, help="latentgen's; default: its default")
    ap.add_argument("--also-backend", action="append", default=[], choices=choice.BACKENDS,
                    help="also run latentgen with this backend (repeatable)")
    ap.add_argument("--diffusers-compiled", action="store_true",
                    help="also run diffusers with its U-Net through torch.compile (reduce-overhead)")
    ap.add_argument("--scheduler", default="euler_a")
    ap.add_argument("--isolate", action="store_true",
                    help="each run of each pipeline in a process of its own (no shared memory state), alternating")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        fns, pipe = runners(args, [args.worker])
        print("RESULT " + json.dumps(run_once(fns[args.worker], pipe.device)), flush=True)
        return
    if args.isolate:
        argv = [a for a in sys.argv[1:] if a != "--isolate"]
        names, settings = pipeline_names(args, args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        refs = list(settings)
        run = {name: (lambda name=name: isolated_run(name, argv)) for name in names}
        size = args.size or load_preset(args.preset).defaults.width
    else:
        fns, pipe = runners(args)
        names, refs, size = list(fns), [n for n in fns if not n.startswith("latentgen")], args.size or pipe.defaults.width
        run = {name: (lambda name=name: run_once(fns[name], pipe.device)) for name in names}
    results = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names:  # alternating, so drift in machine load hits all alike
            results[name].append(run[name]())
            wall, steps, mib = results[name][-1]
            print(f"  run {r + 1} {name:16s}: {wall:7.3f}s/image  {statistics.median(steps):6.3f}s/step  "
                  f"peak +{mib:7.0f} MiB", flush=True)

    print(f"\n{args.preset} {size}x{size}, {args.steps} steps {args.scheduler}, CFG on, medians of {args.repeats}:")
    summary = {}
    for name, runs in results.items():
        wall = statistics.median(w for w, _, _ in runs)
        step = statistics.median(s for _, steps, _ in runs for s in steps)
        mib = statistics.median(m for _, _, m in runs)
        summary[name] = (wall, step, mib)
        print(f"  {name:16s}: {step:.4f} s/step ({1 / step:.1f} it/s)  {wall:.3f} s/image  peak +{mib:.0f} MiB")
    for ours in [n for n in names if n.startswith("latentgen")]:
        lw, ls, _ = summary[ours]
        for name in refs:
            dw, ds, _ = summary[name]
            print(f"  {ours} is {ds / ls:.2f}x faster per step and {dw / lw:.2f}x per image than {name}")


if __name__ == "__main__":
    main()
