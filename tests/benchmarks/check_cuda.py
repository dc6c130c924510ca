"""Checks of the CUDA paths that need a GPU (run by hand where one is lent; CI has none).

On the SD 1.5 architecture (random weights, fp16, 512x512) and the embedded model:
  1. the CUDA-graph backend (eager kernels replayed) gives the eager backend's images bit for bit,
     records one graph per shape, and follows weights edited in place;
  2. a batch of 2 images equals the two one-image calls within fp16 rounding (GPU default: one batch);
  3. the default for SD 1.5 (``backend="compile"``: torch.compile's kernels, graphed) against eager:
     largest pixel difference, and how long the first image takes (the compile); a compile that fails
     falls back to a graph of the eager kernels with a warning;
  4. the NaN guard on the GPU: an fp16 VAE that overflows is decoded again in fp32 (finite, equal to the
     fp32 decode), and extreme guidance raises instead of a black image;
  5. the embedded model's default is the graph of eager kernels, equal to eager;
  6. LoRAs (loaded, scaled, from tags, with tiling) replay from one graph of a folded twin, within 2/255 of eager;
  7. a ControlNet is graphed beside the U-Net (its residuals inputs of the U-Net's graph), equal to eager.
With ``--xl``, SDXL's architecture instead (random weights, fp16, 1024x1024 unless --size): its graph (the pooled
text and size numbers in buffers of their own) equals eager bit for bit over samplers, sizes and size numbers,
``backend="compile"`` is within 2/255, and the VAE stays fp32 under fp16 (its config's force_upcast).
Prints one line per check and "ALL CHECKS PASSED" at the end; exits non-zero on the first failure.

    python tests/benchmarks/check_cuda.py              # on a CUDA machine
    python tests/benchmarks/check_cuda.py --no-compile # skip check 3 (its compile takes about a minute)
    python tests/benchmarks/check_cuda.py --xl --size 512   # SDXL's graphed path (two copies: about 11 GB)
"""

from __future__ import annotations

import argparse
import copy
import os
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import latentgen  # noqa: E402
from latentgen.backends import cudagraph, runtime
from latentgen import guard  # noqa: E402

PROMPT = "a photo of an astronaut riding a horse on mars"


def pixels_diff(a, b) -> int:
    return max(int(np.abs(np.asarray(x, np.int16) - np.asarray(y, np.int16)).max()) for x, y in zip(a, b))


def check(name: str, ok: bool, detail: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)
    if not ok:
        raise SystemExit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="sd15")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--xl", action="store_true", help="check SDXL's graphed path instead")
    ap.add_argument("--size", type=int, default=1024, help="--xl: the drawing size")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("check_cuda.py needs a CUDA GPU")
    torch.set_grad_enabled(False)
    if args.xl:
        return xl_checks(args)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, preset {args.preset}", flush=True)
    t = time.perf_counter()
    graphed = latentgen.load(args.preset, device="cuda", backend="cudagraph")
    eager = latentgen.load(args.preset, device="cuda", backend="torch")
    print(f"built two copies in {time.perf_counter() - t:.1f}s; {graphed!r}", flush=True)
    check("cudagraph backend", graphed.runtime.backend == "cudagraph" and graphed.dtype == torch.float16,
          repr(graphed))

    kw = dict(seed=3, steps=args.steps)
    for sampler in ("euler_a", "ddim", "dpm++2m"):
        a = graphed.generate(PROMPT, scheduler=sampler, **kw)
        b = eager.generate(PROMPT, scheduler=sampler, **kw)
        check(f"graph == eager ({sampler})", pixels_diff(a, b) == 0, f"largest pixel difference {pixels_diff(a, b)}")
    g, dev = graphed.runtime.for_unet(graphed.unet), graphed.device
    check("one graph per shape", g.recorded == 1 and len(g.graphs) == 1, repr(g))

    x = torch.randn(2, 4, 64, 64, device=dev, dtype=graphed.dtype)
    c = torch.randn(2, 77, graphed.unet.config.cross_attention_dim, device=dev, dtype=graphed.dtype)
    for t_ in (torch.tensor(999.0, device=dev), torch.tensor(1, device=dev), 500):
        out, ref = g(x, t_, encoder_hidden_states=c).sample, graphed.unet(x, t_, encoder_hidden_states=c).sample
        check(f"U-Net call t={t_!r}", torch.equal(out, ref), f"max |graph - eager| {(out - ref).abs().max().item():.3g}")

    for p in (graphed, eager):
        p.unet.conv_out.bias.add_(0.05)  # in place: the replay must read the new values
    a, b = graphed.generate(PROMPT, **kw), eager.generate(PROMPT, **kw)
    check("in-place edit followed", pixels_diff(a, b) == 0 and g.recorded == 1, f"difference {pixels_diff(a, b)}")

    lora_checks(graphed, eager, kw)
    control_checks(graphed, eager, kw)

    two = graphed.generate(PROMPT, seed=5, steps=args.steps, num_images=2)
    ones = [graphed.generate(PROMPT, seed=s, steps=args.steps)[0] for s in (5, 6)]
    check("batch of 2 vs one-image calls", pixels_diff(two, ones) <= 8,
          f"largest pixel difference {pixels_diff(two, ones)} (fp16 batch-shape rounding; graphs: {g.recorded})")

    if not args.no_compile:
        default = latentgen.load(args.preset, device="cuda")
        check("default backend", default.runtime.backend == "compile", repr(default))
        default.unet.conv_out.bias.add_(0.05)
        t = time.perf_counter()
        first = default.generate(PROMPT, **kw)
        took = time.perf_counter() - t
        t = time.perf_counter()
        again = default.generate(PROMPT, **kw)
        d = pixels_diff(again, b)
        check("compile vs eager", d <= 2 and pixels_diff(first, again) == 0,
              f"largest pixel difference {d}; first image (with compile) {took:.0f}s, next {time.perf_counter() - t:.2f}s")
        gc_ = default.runtime.for_unet(default.unet)
        out, ref = gc_(x, 500, encoder_hidden_states=c).sample, default.unet(x, 500, encoder_hidden_states=c).sample
        err = ((out - ref).abs().max() / ref.abs().max()).item()
        check("compiled U-Net call", err < 0.01, f"max |compiled - eager| / max |eager| {err:.3g}; {gc_!r}")

    broken = cudagraph.Graphed(graphed.unet)
    broken.fn = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no triton here"))  # a compile that fails
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = broken(x, 500, encoder_hidden_states=c).sample
    ref = graphed.unet(x, 500, encoder_hidden_states=c).sample
    check("failed compile -> graph of eager kernels", torch.equal(out, ref) and broken.recorded == 1
          and any("torch.compile could not build" in str(w.message) for w in seen), f"{broken!r}")

    vae = copy.deepcopy(graphed.vae).half()  # fp16 already on CUDA (the default)
    vae.decoder.conv_out.weight.mul_(2e5)
    z = torch.randn(1, 4, 64, 64, device=dev, dtype=torch.float16)
    check("fp16 VAE overflows", not torch.isfinite(vae.decode(z).sample).all(), "NaN/inf pixels in fp16")
    want = copy.deepcopy(vae).float().decode(z.float()).sample
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        got = guard.decode(vae, z)
    d = (got - want).abs().max().item()
    check("fp16 VAE guard", bool(torch.isfinite(got).all()) and vae.dtype == torch.float32 and d < 1e-3
          and any("fp16 VAE overflowed" in str(w.message) for w in seen),
          f"decoded again in fp32 with a warning; max |guarded - fp32 decode| {d:.3g}")
    try:
        graphed.generate(PROMPT, seed=0, steps=2, guidance=1e30)
        check("extreme guidance", False, "no error")
    except guard.NonFiniteError as e:
        check("extreme guidance", "guidance=1e+30 may be too high" in str(e), str(e)[:100])

    small = latentgen.load(device="cuda")
    ref = latentgen.load(device="cuda", backend="torch")
    a, b = small.generate("a red circle on a blue background", seed=1), ref.generate("a red circle on a blue background", seed=1)
    check("embedded model graph == eager", small.runtime.backend == "cudagraph" and pixels_diff(a, b) == 0,
          f"{small!r}")
    print(f"ALL CHECKS PASSED ({runtime.__name__}: compile default for SD 1.5, cudagraph for the embedded model)")


def lora_checks(graphed, eager, kw: dict) -> None:
    """LoRAs replayed from the graph of the U-Net's folded twin: within 2/255 of eager fp16 with the same LoRAs
    (folded W + s B A against eager's W x + s B A x), and a scale, a second LoRA, tags or an unload record nothing
    new; tiling is a graph of its own, equal to eager."""
    import tempfile
    from pathlib import Path

    from bench_lora import random_kohya

    folder = Path(tempfile.mkdtemp(prefix="check-cuda-lora-"))
    a, b = (random_kohya(eager.unet, folder / f"{n}.safetensors", i) for i, n in ((1, "a"), (2, "b")))
    for p in (graphed, eager):
        p.load_lora(a, name="a", scale=0.8)
    g = graphed.runtime.for_unet(graphed.unet)
    d = pixels_diff(graphed.generate(PROMPT, **kw), eager.generate(PROMPT, **kw))
    check("LoRA in the graph", d <= 2 and g is not None and g.unet is not graphed.unet, f"difference {d}; {g!r}")
    recorded = g.recorded
    for p in (graphed, eager):
        p.set_lora_scale("a", 0.3)
    d = pixels_diff(graphed.generate(PROMPT, **kw), eager.generate(PROMPT, **kw))
    check("LoRA scale changed", d <= 2 and graphed.runtime.for_unet(graphed.unet) is g, f"difference {d}")
    tags = f"{PROMPT} <lora:{b}:0.6>"
    d = pixels_diff(graphed.generate(tags, **kw), eager.generate(tags, **kw))
    check("two LoRAs, one from a tag", d <= 2 and g.recorded == recorded, f"difference {d}; graphs {g.recorded}")
    d = pixels_diff(graphed.generate(PROMPT, tiling=True, **kw), eager.generate(PROMPT, tiling=True, **kw))
    check("LoRA with tiling", d <= 2, f"difference {d}")
    for p in (graphed, eager):
        p.unload_lora()
    d = pixels_diff(graphed.generate(PROMPT, **kw), eager.generate(PROMPT, **kw))
    check("LoRAs unloaded: the module's graph", d == 0, f"difference {d}")


def control_checks(graphed, eager, kw: dict) -> None:
    """A ControlNet graphed beside the U-Net, its residuals inputs of the U-Net's graph: the eager kernels replayed
    give eager's pictures bit for bit, with the unit acting on part of the steps (graphs with and without them)."""
    from diffusers import ControlNetModel
    from PIL import Image

    torch.manual_seed(0)
    net = ControlNetModel.from_unet(eager.unet).to(eager.device, eager.dtype).eval()
    edges = Image.new("RGB", (512, 512))
    edges.paste((255, 255, 255), (128, 128, 384, 384))
    for unit in (latentgen.Control(edges, model=net, weight=0.8),
                 latentgen.Control(edges, model=net, start=0.2, end=0.7, mode="controlnet")):
        d = pixels_diff(graphed.generate(PROMPT, control=unit, **kw), eager.generate(PROMPT, control=unit, **kw))
        found = graphed.runtime.for_controlnet(net)
        check(f"ControlNet graphed ({unit.mode}, {unit.start}-{unit.end})",
              d == 0 and isinstance(found, cudagraph.GraphedControlNet), f"difference {d}; {found!r}")


def xl_checks(args) -> None:
    """SDXL's CUDA graph against eager, and compile's kernels against eager (``--xl``)."""
    graphed = latentgen.load("sdxl", device="cuda", backend="cudagraph")
    eager = latentgen.load("sdxl", device="cuda", backend="torch")
    check("SDXL cudagraph backend", graphed.runtime.backend == "cudagraph" and graphed.dtype == torch.float16
          and graphed.vae.dtype == torch.float32, repr(graphed))
    kw = dict(seed=3, steps=args.steps, width=args.size, height=args.size)
    for sampler in ("euler", "dpm++2m"):
        a, b = graphed.generate(PROMPT, scheduler=sampler, **kw), eager.generate(PROMPT, scheduler=sampler, **kw)
        check(f"SDXL graph == eager ({sampler})", pixels_diff(a, b) == 0, f"largest pixel difference {pixels_diff(a, b)}")
    size = latentgen.SizeCond(original=(args.size // 2, args.size // 2), crop=(16, 0))  # other size numbers
    a, b = graphed.generate(PROMPT, size_cond=size, **kw), eager.generate(PROMPT, size_cond=size, **kw)
    check("SDXL graph == eager (size numbers changed)", pixels_diff(a, b) == 0, f"difference {pixels_diff(a, b)}")
    a, b = (p.generate(PROMPT, seed=4, steps=args.steps, width=args.size // 2, height=args.size) for p in (graphed, eager))
    g = graphed.runtime.for_unet(graphed.unet)
    check("SDXL another shape", pixels_diff(a, b) == 0 and len(g.graphs) == 2, f"{g!r}, difference {pixels_diff(a, b)}")
    if not args.no_compile:
        compiled = latentgen.load("sdxl", device="cuda", backend="compile")
        t = time.perf_counter()
        first = compiled.generate(PROMPT, **kw)
        took = time.perf_counter() - t
        d = pixels_diff(first, eager.generate(PROMPT, **kw))
        check("SDXL compile vs eager", d <= 2, f"largest pixel difference {d}; first image (with compile) {took:.0f}s")
    print("ALL CHECKS PASSED (SDXL)")


if __name__ == "__main__":
    main()
