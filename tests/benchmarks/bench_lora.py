"""Benchmark: LoRAs on the fast path (issue 36). Side by side in one process, calls interleaved so drift in the
machine's load hits every configuration alike; medians.

    python tests/benchmarks/bench_lora.py --model embedded --calls 20   # 20-step images, shipped LoRAs
    python tests/benchmarks/bench_lora.py --model sd15 --calls 3        # SD 1.5 at 512x512, per CFG step
    python tests/benchmarks/bench_lora.py --model sd15-cuda --calls 5   # on a CUDA GPU: it/s, 20 steps

embedded: one 20-step 64x64 image per call on the default backend (OpenVINO, fp32): bare; with the shipped purple
LoRA loaded; with two LoRAs from prompt tags (<lora:purple:1> <lora:star:0.8>, loaded and unloaded by every call);
switching (calls alternating between <lora:purple:1> and <lora:star:0.7>); a fixed tag (<lora:purple:1> every call);
and torch eager with the purple LoRA, as before this change. Fidelity: the largest pixel difference from torch fp32
with the same LoRAs.

sd15: the SD 1.5 architecture with random weights (``latentgen.load("sd15")``: bf16 and OpenVINO on a CPU with
bf16), one U-Net call at 512x512 with CFG's batch of 2 (a step): bare; with a random rank-16 kohya LoRA on the
attention projections and the 3x3 convolutions (LoCon); with two such LoRAs; switching between them. Also the
first call's cost of a LoRA state (patched and compiled once), a 1-step 512x512 ``generate`` with two LoRAs from
prompt tags against a bare one (what a tag adds per call), and the U-Net's output against torch bf16's with the
same LoRA.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import latentgen  # noqa: E402
from latentgen.lora import formats  # noqa: E402
from latentgen.lora import names as lora_names  # noqa: E402

PROMPT = "a purple circle on a white background"


def max_diff(a, b) -> int:
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(runners: dict, calls: int, warmup: int = 2) -> dict[str, float]:
    for fn in runners.values():
        for i in range(warmup):
            fn(i)
    times = {name: [] for name in runners}
    for i in range(calls):
        for name, fn in runners.items():
            times[name].append(timed(lambda: fn(i)))
    return {name: statistics.median(ts) for name, ts in times.items()}


def embedded(calls: int) -> None:
    # a pipeline per configuration: each keeps its own compiled copies, as one server or batch run would
    fast, loaded, ref = latentgen.load(), latentgen.load(), latentgen.load(backend="torch")
    tagged, fixed, switching = latentgen.load(), latentgen.load(), latentgen.load()
    loaded.load_lora("purple")
    ref_loaded = latentgen.load(backend="torch")
    ref_loaded.load_lora("purple")
    print(f"{fast!r}\n{torch.get_num_threads()} threads")
    tags = f"{PROMPT} <lora:purple:1> <lora:star:0.8>"
    alternate = [f"{PROMPT} <lora:purple:1>", f"{PROMPT} <lora:star:0.7>"]
    runners = {
        "bare": lambda i: fast.generate(PROMPT, seed=i),
        "purple loaded": lambda i: loaded.generate(PROMPT, seed=i),
        "two tags": lambda i: tagged.generate(tags, seed=i),
        "fixed tag": lambda i: fixed.generate(alternate[0], seed=i),
        "switching tags": lambda i: switching.generate(alternate[i % 2], seed=i),
        "torch, purple loaded (before)": lambda i: ref_loaded.generate(PROMPT, seed=i),
    }
    med = interleaved(runners, calls)
    for name, s in med.items():
        print(f"{name:32s} {s * 1e3:7.1f} ms  {s / med['bare']:.3f}x bare")
    print(f"switching throughput: {med['fixed tag'] / med['switching tags']:.1%} of a fixed tag's, "
          f"{med['purple loaded'] / med['switching tags']:.1%} of a loaded LoRA's")
    worst = {"purple loaded": 0, "two tags": 0}
    for seed in range(8):
        worst["purple loaded"] = max(worst["purple loaded"], max_diff(loaded.generate(PROMPT, seed=seed)[0],
                                                                      ref_loaded.generate(PROMPT, seed=seed)[0]))
        worst["two tags"] = max(worst["two tags"], max_diff(tagged.generate(tags, seed=seed)[0],
                                                            ref.generate(tags, seed=seed)[0]))
    print(f"largest pixel difference from torch fp32 with the same LoRAs, 8 seeds: {worst}")
    print(repr(tagged.runtime))


def random_kohya(unet, path: Path, seed: int, rank: int = 16) -> Path:
    """A random rank-``rank`` kohya LoRA on the U-Net's attention projections and 3x3 convolutions (LoCon)."""
    g = torch.Generator().manual_seed(seed)
    lora = formats.Lora(metadata={"ss_output_name": path.stem})
    names = lora_names.module_names(unet, "unet")
    convs = set(lora_names.conv_targets(unet))
    for name, mod in names.items():
        if name.endswith(tuple("." + t for t in lora_names.UNET_TARGETS)) or name in convs:
            w = mod.weight
            down = torch.randn(rank, *w.shape[1:], generator=g) * 0.02
            up = torch.randn(w.shape[0], rank, *([1, 1] if w.dim() == 4 else []), generator=g) * 0.02
            lora.modules.setdefault("unet", {})[name] = (down, up, float(rank))
    return formats.save(lora, path, "kohya")


def sd15(calls: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    pipe = latentgen.load("sd15")
    print(f"{pipe!r}\n{torch.get_num_threads()} threads; {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} CPUs")
    a, b = random_kohya(pipe.unet, folder / "a.safetensors", 1), random_kohya(pipe.unet, folder / "b.safetensors", 2)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 64, 64, generator=g), torch.randn(2, 77, 768, generator=g).to(pipe.dtype)
    t = torch.tensor(500)

    def step(_i=0):
        return pipe.runtime.for_unet(pipe.unet)(x, t, encoder_hidden_states=ctx).sample

    seconds = timed(step)
    print(f"first call (conversion or cache read, compile): {seconds:.1f} s; conversions: {pipe.runtime.conversions}")
    bare = interleaved({"bare": step}, calls, warmup=1)["bare"]
    out_bare = step()
    pipe.load_lora(a, name="a", scale=0.8)
    first = timed(step)
    one = interleaved({"one LoRA": step}, calls, warmup=0)["one LoRA"]
    out_one = step()
    pipe.load_lora(b, name="b", scale=0.6)
    first_two = timed(step)
    two = interleaved({"two LoRAs": step}, calls, warmup=0)["two LoRAs"]

    def switching(i):
        pipe.set_lora_scale("b", 0.6 if i % 2 else 0.0)  # the pair, and a alone: two states, alternating
        return step()
    switch = interleaved({"switching": switching}, calls, warmup=2)["switching"]
    pipe.unload_lora()
    print(f"per CFG step: bare {bare:.2f} s, one LoRA {one:.2f} s ({one / bare:.3f}x), two LoRAs {two:.2f} s "
          f"({two / bare:.3f}x), switching between two states {switch:.2f} s ({min(one, two) / switch:.1%} of a fixed "
          f"state's throughput)")
    print(f"a new LoRA state's first call (patch + compile + the call): one {first:.1f} s, two {first_two:.1f} s")
    ref = latentgen.load("sd15", backend="torch")
    with torch.no_grad():
        want_bare = ref.unet(x.to(ref.dtype), t, encoder_hidden_states=ctx).sample.float()
        ref.load_lora(a, name="a", scale=0.8)
        want_one = ref.unet(x.to(ref.dtype), t, encoder_hidden_states=ctx).sample.float()
    rel = lambda o, w: float((o.float() - w).abs().max() / w.abs().max())  # noqa: E731
    print(f"U-Net output against torch bf16: bare {rel(out_bare, want_bare):.4f}, one LoRA {rel(out_one, want_one):.4f} "
          f"(largest difference / largest value)")
    del ref
    tags = f"a photo of a cat <lora:{folder / 'a.safetensors'}:0.8> <lora:{folder / 'b.safetensors'}:0.6>"
    plain = lambda i: pipe.generate("a photo of a cat", seed=i, steps=1, width=512, height=512)  # noqa: E731
    tagged = lambda i: pipe.generate(tags, seed=i, steps=1, width=512, height=512)  # noqa: E731
    med = interleaved({"bare": plain, "two tags": tagged}, calls, warmup=1)
    print(f"1-step 512x512 generate: bare {med['bare']:.2f} s, two tags {med['two tags']:.2f} s "
          f"(+{(med['two tags'] - med['bare']) * 1e3:.0f} ms a call: files read, injected, state read)")
    print(repr(pipe.runtime))


def cuda(calls: int, steps: int = 20, size: int = 512) -> None:
    """SD 1.5 at 512x512 on a CUDA GPU, the default backend (torch.compile's kernels as CUDA graphs, fp16): it/s of
    20-step images bare, with one LoRA loaded, two from prompt tags, and tags alternating; eager fp16 with the LoRA
    (as before this change); the pictures against eager fp16's with the same LoRAs."""
    folder = Path(tempfile.mkdtemp(prefix="bench-lora-"))
    pipe, eager = latentgen.load("sd15", device="cuda"), latentgen.load("sd15", device="cuda", backend="torch")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}\n{pipe!r}")
    a, b = random_kohya(pipe.unet, folder / "a.safetensors", 1), random_kohya(pipe.unet, folder / "b.safetensors", 2)
    prompt, kw = "a photo of a cat", dict(steps=steps, width=size, height=size)
    tags = f"{prompt} <lora:{a}:0.8> <lora:{b}:0.6>"
    alternate = [f"{prompt} <lora:{a}:0.8>", f"{prompt} <lora:{b}:0.6>"]

    def run(p, text, i=0):
        out = p.generate(text, seed=i, **kw)
        torch.cuda.synchronize()
        return out
    compile_s = timed(lambda: run(pipe, prompt))  # the first compile, outside the figures
    bare = interleaved({"bare": lambda i: run(pipe, prompt, i), "two tags": lambda i: run(pipe, tags, i),
                        "switching tags": lambda i: run(pipe, alternate[i % 2], i)}, calls)
    pipe.load_lora(a, name="a", scale=0.8)
    eager.load_lora(a, name="a", scale=0.8)
    one = interleaved({"one LoRA loaded": lambda i: run(pipe, prompt, i),
                       "eager fp16, one LoRA (before)": lambda i: run(eager, prompt, i)}, calls)
    for name, s in {**bare, **one}.items():
        print(f"{name:32s} {steps / s:7.1f} it/s  {s / bare['bare']:.3f}x bare's time")
    print(f"first image (compile) {compile_s:.0f} s; peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    d_one = max_diff(run(pipe, prompt)[0], run(eager, prompt)[0])
    eager.unload_lora()
    pipe.unload_lora()
    d_tags = max_diff(run(pipe, tags)[0], run(eager, tags)[0])
    print(f"largest pixel difference from eager fp16 with the same LoRAs: one {d_one}, two tags {d_tags}")
    held = [h.graph for h in pipe.runtime._graphed.held.values()]
    print(f"{pipe.runtime!r}; graphs held {held}, recorded {sum(g.recorded for g in held)} in all")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("embedded", "sd15", "sd15-cuda"), default="embedded")
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    {"embedded": embedded, "sd15": sd15, "sd15-cuda": cuda}[args.model](args.calls)


if __name__ == "__main__":
    main()
