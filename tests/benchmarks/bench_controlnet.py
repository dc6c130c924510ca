"""Benchmark: what a ControlNet adds per step on a CPU (issue 38), latentgen against diffusers' ControlNet pipeline.

    python tests/benchmarks/bench_controlnet.py --part embedded --repeats 5   # the embedded model with ``edges``
    python tests/benchmarks/bench_controlnet.py --part sd15 --repeats 3      # SD 1.5's architecture at 512x512
    python tests/benchmarks/bench_controlnet.py --part calls --repeats 5     # SD 1.5: one call of each model
    python tests/benchmarks/bench_controlnet.py --part xl-calls --repeats 3  # SDXL: the ControlNet's call at 1024
    python tests/benchmarks/bench_controlnet.py --part cuda --repeats 5      # on a CUDA GPU: SD 1.5, 20 steps

``embedded``: 20 steps, default guidance, 64x64: latentgen without control (its default backend, OpenVINO), with the
shipped ``edges`` ControlNet (compiled beside the U-Net, and on torch), and diffusers'
``StableDiffusionControlNetPipeline`` on the same folders. ``sd15``: random
weights (``latentgen.load("sd15")`` and ``ControlNetModel.from_unet`` of its U-Net), 4 steps at 512x512 with CFG,
the ControlNet call on the default backend (OpenVINO) and on torch.
``calls``: the same SD 1.5 models, one CFG call (batch 2, 64x64 latents) of each: the ControlNet compiled and on
torch, the U-Net compiled with and without residual inputs: what a controlled step adds, without the fixed costs
(text, VAE) that whole calls carry. ``xl-calls``: SDXL's architecture (random weights, ``from_unet`` of its
U-Net: a full-size ControlNet), one CFG call at 1024x1024 (128x128 latents) compiled and on torch. Per-step figures of whole calls subtract nothing: they are whole calls divided by their steps. Calls alternate so drift in the
machine's load hits all alike; medians. Time only on a quiet machine (``uptime``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from bench_few_steps import cpu, medians  # noqa: E402
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline  # noqa: E402
from PIL import Image  # noqa: E402

import latentgen  # noqa: E402
from latentgen import Control  # noqa: E402
from latentgen.models.presets import data_dir  # noqa: E402

PROMPT = "a red square on a blue background"


def edge_map(size: int) -> Image.Image:
    im = Image.new("RGB", (size, size))
    im.paste((255, 255, 255), (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    im.paste((0, 0, 0), (size // 4 + 2, size // 4 + 2, 3 * size // 4 - 2, 3 * size // 4 - 2))
    return im


def embedded(repeats: int) -> dict:
    folder = data_dir("weights") / "controlnets" / "edges"
    pipe, eager, edges = latentgen.load(), latentgen.load(backend="torch"), edge_map(64)
    ref = StableDiffusionControlNetPipeline.from_pretrained(
        data_dir("weights") / "default", controlnet=ControlNetModel.from_pretrained(folder), safety_checker=None)
    ref.set_progress_bar_config(disable=True)
    g = pipe.defaults.guidance
    runs = {"latentgen, no control": lambda: pipe.generate(PROMPT, steps=20),
            "latentgen, edges": lambda: pipe.generate(PROMPT, steps=20, control=Control(edges, "edges")),
            "latentgen, edges, torch": lambda: eager.generate(PROMPT, steps=20, control=Control(edges, "edges")),
            "diffusers, edges": lambda: ref(PROMPT, edges, num_inference_steps=20, guidance_scale=g, height=64,
                                            width=64, generator=torch.Generator().manual_seed(0))}
    for fn in runs.values():  # warm-up: conversions, first-call work
        fn()
    return {k: v / 20 for k, v in medians(runs, repeats).items()}


def sd15(repeats: int, steps: int = 4) -> dict:
    pipe, eager = latentgen.load("sd15"), latentgen.load("sd15", backend="torch")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        ControlNetModel.from_unet(pipe.unet).float().save_pretrained(Path(tmp) / "cn")  # fp32 weights, as published
        unit = Control(edge_map(512), Path(tmp) / "cn")
        runs = {"latentgen, no control": lambda: pipe.generate(PROMPT, steps=steps, width=512, height=512),
                "latentgen, one ControlNet": lambda: pipe.generate(PROMPT, steps=steps, width=512, height=512,
                                                                     control=unit),
                "latentgen, one ControlNet, torch": lambda: eager.generate(PROMPT, steps=steps, width=512, height=512,
                                                                           control=unit)}
        for fn in runs.values():
            fn()
        return {k: v / steps for k, v in medians(runs, repeats).items()} | {
            "repr": repr(pipe), "compiled ControlNet": type(pipe.runtime.for_controlnet(unit_model(unit, pipe))).__name__}


def calls(repeats: int) -> dict:
    from latentgen.backends.control_graph import run_torch

    pipe = latentgen.load("sd15")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        ControlNetModel.from_unet(pipe.unet).float().save_pretrained(Path(tmp) / "cn")
        net = unit_model(Control(edge_map(512), Path(tmp) / "cn"), pipe)
        compiled, unet = pipe.runtime.for_controlnet(net), pipe.runtime.for_unet(pipe.unet)
        x = torch.randn(1, 4, 64, 64, dtype=pipe.dtype).repeat(2, 1, 1, 1)  # CFG's halves: the same latents
        ctx, hint, t = torch.randn(2, 77, 768, dtype=pipe.dtype), torch.rand(2, 3, 512, 512, dtype=pipe.dtype), 500
        down, mid = compiled(x, t, ctx, hint)
        runs = {"ControlNet, OpenVINO": lambda: compiled(x, t, ctx, hint),
                "ControlNet, torch": lambda: run_torch(net, x, t, ctx, hint),
                "U-Net, OpenVINO": lambda: unet(x, t, encoder_hidden_states=ctx),
                "U-Net with residuals, OpenVINO": lambda: unet(x, t, encoder_hidden_states=ctx,
                                                               down_block_additional_residuals=down,
                                                               mid_block_additional_residual=mid)}
        with torch.no_grad():
            for fn in runs.values():
                fn()
            return medians(runs, repeats)


def xl_calls(repeats: int) -> dict:
    from latentgen.backends.control_graph import run_torch

    pipe = latentgen.load("sdxl")
    torch.manual_seed(0)
    net = ControlNetModel.from_unet(pipe.unet).to(pipe.dtype).eval()
    runtime, dtype, width = pipe.runtime, pipe.dtype, pipe.unet.config.projection_class_embeddings_input_dim - 6 * 256
    del pipe  # the U-Net's memory: only the ControlNet is timed
    compiled = runtime.for_controlnet(net)
    x = torch.randn(1, 4, 128, 128, dtype=dtype).repeat(2, 1, 1, 1)
    ctx, hint = torch.randn(2, 77, 2048, dtype=dtype), torch.rand(2, 3, 1024, 1024, dtype=dtype)
    added = {"text_embeds": torch.randn(2, width, dtype=dtype), "time_ids": torch.tensor([[1024.0, 1024, 0, 0, 1024,
                                                                                          1024]] * 2, dtype=dtype)}
    runs = {"SDXL ControlNet, OpenVINO": lambda: compiled(x, 500, ctx, hint, added),
            "SDXL ControlNet, torch": lambda: run_torch(net, x, 500, ctx, hint, added)}
    with torch.no_grad():
        for fn in runs.values():
            fn()
        return medians(runs, repeats) | {"dtype": str(dtype), "compiled": type(compiled).__name__}


def cuda(repeats: int, steps: int = 20, size: int = 512) -> dict:
    """On a CUDA GPU: SD 1.5's architecture (fp16, random weights, a ``from_unet`` ControlNet) at 512x512, 20 steps:
    seconds per step on the default backend (torch.compile's kernels as CUDA graphs, the ControlNet graphed beside
    the U-Net) without and with one ControlNet, and eager fp16 with it; the pictures against eager's."""
    import numpy as np

    pipe, eager = latentgen.load("sd15", device="cuda"), latentgen.load("sd15", device="cuda", backend="torch")
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        ControlNetModel.from_unet(pipe.unet).float().save_pretrained(Path(tmp) / "cn")
        unit, kw = Control(edge_map(size), Path(tmp) / "cn"), dict(steps=steps, width=size, height=size)
        runs = {"latentgen, no control": lambda: pipe.generate(PROMPT, **kw),
                "latentgen, one ControlNet": lambda: pipe.generate(PROMPT, control=unit, **kw),
                "eager fp16, one ControlNet": lambda: eager.generate(PROMPT, control=unit, **kw)}
        for fn in runs.values():
            fn()  # the compiles and recordings
        figures = {k: v / steps for k, v in medians(runs, repeats).items()}
        a, b = pipe.generate(PROMPT, control=unit, **kw)[0], eager.generate(PROMPT, control=unit, **kw)[0]
        d = int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())
        net = pipe.runtime.for_controlnet(unit_model(unit, pipe))
        return figures | {"device": torch.cuda.get_device_name(), "largest pixel difference from eager": d,
                          "ControlNet runs": repr(net), "peak GiB": torch.cuda.max_memory_allocated() / 2**30}


def unit_model(unit: Control, pipe):
    from latentgen.control import units

    return units.load_model(unit.model, pipe.unet, "control[0]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("embedded", "sd15", "calls", "xl-calls", "cuda"), default="embedded")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    print(f"CPU: {cpu()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    figures = {"embedded": embedded, "sd15": sd15, "calls": calls, "xl-calls": xl_calls, "cuda": cuda}[a.part](a.repeats)
    unit = "s per call" if a.part.endswith("calls") else "s per step"
    for k, v in figures.items():
        print(f"{k:32s} {v:.4f} {unit}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    main()
