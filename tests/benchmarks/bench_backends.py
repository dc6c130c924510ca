"""Benchmark: one U-Net CFG call (batch 2: the same latents twice, two contexts, as the loop calls it) on
each CPU runtime tried for issue 14, and the VAE decode.

torch fp32 (diffusers' arithmetic), torch at latentgen's default dtype, ONNX Runtime fp32 (CPU provider,
all graph optimisations; only when ``onnxruntime``, ``onnx`` and ``onnxscript`` are installed: they are not
dependencies) and OpenVINO at latentgen's default (``latentgen.backends.runtime``); with ``--vae``, the VAE decode
of one latent on torch and through OpenVINO; with ``--profile``, OpenVINO's per-layer times. Prints medians in seconds and each output's largest
difference to torch fp32. Random weights for presets; the embedded model's own.

    python tests/benchmarks/bench_backends.py --model sd15 --calls 3 --vae
    python tests/benchmarks/bench_backends.py --model sd15 --calls 1 --profile   # where OpenVINO's call spends it
    python tests/benchmarks/bench_backends.py --model default --calls 50

Measured 2026-11-28, 2-core AMD EPYC (AVX512-BF16), torch 2.13, OpenVINO 2026.4.1, ONNX Runtime 1.32:
SD 1.5 at 512² torch fp32 10.77 s, torch bf16 + channels_last 5.80 s, ONNX Runtime fp32 8.76-8.86 s,
OpenVINO bf16 4.13-4.20 s; embedded torch fp32 18-22 ms, ONNX Runtime 5.4-6.2 ms, OpenVINO fp32 5.1-5.5 ms.
SD 1.5 VAE decode: torch bf16 + channels_last 6.90-7.04 s, OpenVINO bf16 6.40-6.58 s (after an 83-95 s
conversion), torch fp32 16.6-18.0 s. Two runs; the ranges are the machine's noise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import latentgen  # noqa: E402


def short(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def median_seconds(fn, calls: int) -> float:
    fn()  # warm-up: allocator, kernels, compile
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class Positional(torch.nn.Module):
    """A module of positional tensors, as exporters trace it."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def onnx_runtime(module: torch.nn.Module, inputs: tuple) -> "callable | None":
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    path = os.path.join(tempfile.mkdtemp(), "model.onnx")
    names = [f"i{i}" for i in range(len(inputs))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, inputs, path, input_names=names, dynamo=False, opset_version=17)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {n: x.numpy() for n, x in zip(names, inputs)}
    return lambda: torch.from_numpy(session.run(None, feed)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="sd15", help="a preset (random weights) or 'default' (the embedded model)")
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--vae", action="store_true", help="also time the VAE decode")
    ap.add_argument("--profile", action="store_true", help="also profile the OpenVINO U-Net call by layer")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    source = None if args.model == "default" else args.model
    exact, pipe = latentgen.load(source, dtype="fp32"), latentgen.load(source)
    print(f"latentgen's default: {pipe!r}", flush=True)
    unet, size = exact.unet, pipe.defaults.width // pipe.vae_scale_factor
    x = torch.randn(1, unet.config.in_channels, size, size).repeat(2, 1, 1, 1)  # CFG: both halves' latents
    t, ctx = torch.tensor(500.0), torch.randn(2, 77, unet.config.cross_attention_dim)
    want = unet(x, t, encoder_hidden_states=ctx).sample
    compiled = pipe.runtime.for_unet(pipe.unet)
    rows = {"torch fp32": lambda: unet(x, t, encoder_hidden_states=ctx).sample,
            f"torch {short(pipe.dtype)}": lambda: pipe.unet(x.to(pipe.dtype), t, encoder_hidden_states=ctx.to(pipe.dtype)).sample,
            f"{pipe.runtime.backend} (default)": lambda: compiled(x.to(pipe.dtype), t, ctx.to(pipe.dtype)).sample}
    ort = onnx_runtime(Positional(lambda a, b, c: unet(a, b, encoder_hidden_states=c, return_dict=False)[0]),
                       (x, t, ctx))
    if ort is not None:
        rows["ONNX Runtime fp32"] = ort
    print(f"U-Net call, batch 2, {size}x{size} latents, medians of {args.calls}:")
    for name, fn in rows.items():
        diff = (fn().float() - want).abs().max().item()
        print(f"  {name:24s} {median_seconds(fn, args.calls):8.4f} s   max diff to torch fp32 {diff:.2e}", flush=True)
    if args.profile and pipe.runtime.backend == "openvino":
        profile(compiled, tuple(x.shape), tuple(ctx.shape), [x.numpy(), t.numpy(), ctx.numpy()])
    if args.vae:
        vae_rows(exact, pipe, size, args.calls)


def profile(compiled, x_shape: tuple, c_shape: tuple, inputs: list, top: int = 8) -> None:
    """Where an OpenVINO U-Net call spends its time: OpenVINO's per-layer counters (PERF_COUNT) of one
    call after a warm-up, summed by layer type and by the torch op each layer came from, and the top layers."""
    from collections import Counter

    req = compiled.compile(x_shape, c_shape, extra={"PERF_COUNT": True}).create_infer_request()
    req.infer(inputs)
    req.infer(inputs)
    layers = [(p.real_time.total_seconds(), p.node_type, p.node_name) for p in req.profiling_info]
    by_type, by_op = Counter(), Counter()
    for sec, kind, name in layers:
        by_type[kind] += sec
        by_op[next((part for part in name.split("/") if part.startswith("aten::")), kind)] += sec
    print(f"OpenVINO profile of one call: {sum(s for s, _, _ in layers):.3f} s in {len(layers)} layers")
    for title, counts in (("by layer type", by_type), ("by torch op", by_op)):
        print(f"  {title}: " + ", ".join(f"{k} {v:.3f} s" for k, v in counts.most_common(6)))
    for sec, kind, name in sorted(layers, reverse=True)[:top]:
        print(f"  {sec:7.4f} s  {kind:14s} {name[:100]}")


def vae_rows(exact, pipe, size: int, calls: int) -> None:
    import openvino

    z = torch.randn(1, exact.vae.config.latent_channels, size, size)
    want = exact.vae.decode(z).sample
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = openvino.convert_model(Positional(lambda a: exact.vae.decode(a).sample), example_input=z)
    hint = "bf16" if pipe.dtype != torch.float32 else "f32"
    decode = openvino.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                          "PERFORMANCE_HINT": "LATENCY",
                                                          "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    print(f"VAE decode, 1 latent (OpenVINO conversion {time.perf_counter() - t0:.0f} s):")
    rows = {"torch fp32": lambda: exact.vae.decode(z).sample,
            f"torch {short(pipe.dtype)}": lambda: pipe.vae.decode(z.to(pipe.dtype)).sample,
            f"OpenVINO {hint}": lambda: torch.from_numpy(decode(z.numpy())[0])}
    for name, fn in rows.items():
        diff = (fn().float() - want).abs().max().item()
        print(f"  {name:24s} {median_seconds(fn, calls):8.4f} s   max diff to torch fp32 {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
