"""CUDA graphs for the U-Net: one call's kernels recorded once per input shape, then replayed as one launch.

Why: SD 1.5's U-Net launches about a thousand kernels per call, and torch eager spends several
microseconds of Python and driver time on each. On a fast GPU that host time, not the arithmetic, sets
the pace of a step. A CUDA graph (``torch.cuda.CUDAGraph``) records the launches of one call and replays
them with a single launch, so the GPU runs back to back. The kernels are the eager ones, so the numbers
are too (``tests/benchmarks/check_cuda.py`` checks the replay against eager on a GPU: identical images).

Measured on an H200 (torch 2.11+cu130, SD 1.5 at 512x512, fp16, CFG batch 2; tests/benchmarks/
bench_cuda_step.py): one U-Net call eager 37.0 ms, replayed 10.2 ms; a step inside ``generate`` 10.4 ms
(96 it/s). ``torch.compile``'s kernels replayed the same way ("compile", the default for SD-sized U-Nets):
6.7 ms per step (150 it/s; 2026-11-29) after a 62 s compile (10 s in a later process, from inductor's cache).
Replayed, channels_last weights beat contiguous ones (10.3 vs 12.0 ms) and torch's SDPA choice equals cuDNN
attention and beats flash or memory-efficient attention. bench_txt2img.py has the side-by-side figures.

The contract is the loop's: ``graphed(x, t, encoder_hidden_states=context[, added_cond_kwargs=added]).sample``
with x (B, C, h, w), t a timestep (number or 0-d tensor), context (B, 77 * k, D) and SDXL's added conditioning
{"text_embeds": (B, P), "time_ids": (B, 6 or 5)}. A graph reads its inputs from fixed buffers and writes its
output to a fixed buffer: each call copies the inputs in, replays, and returns a copy of the output. One graph
per set of input shapes and dtypes, the ``KEEP`` most recent kept (each holds its own activation memory). ``compile=True`` records ``torch.compile(unet)`` (inductor's fused kernels)
instead of the eager module; its first call per shape compiles (about a minute), later processes read
inductor's on-disk cache (``$TORCHINDUCTOR_CACHE_DIR``, by default ``torchinductor_<user>`` in the temporary
folder). Where the compile fails, the eager kernels are recorded instead, with a warning.

A graph stands in for the module as it was recorded: ``Graphs`` records again when the U-Net's parameters move or
change dtype. LoRAs stay in the graph: it is recorded on a twin of the module whose LoRA layers have weights of
their own, written with W + s B A whenever a LoRA, a scale or the set of adapters changes (peft's scales are plain
Python numbers, which a graph of the module itself would freeze). Values edited in place are read by the replay
as they are. If recording fails (an operation a graph cannot hold), the module runs eagerly from then on, with a
warning.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import torch

from . import raise_if_interrupted, weights


class Graphed:
    KEEP = 2

    def __init__(self, unet, compile: bool = False):
        self.unet = unet
        self.fn = unet
        self.graphs: dict[tuple, SimpleNamespace] = {}  # shape key -> recorded graph and its buffers, oldest first
        self.failed: str | None = None  # why recording failed (the module then runs eagerly)
        self.uncompiled: str | None = None  # why torch.compile failed (the eager kernels are recorded instead)
        if compile:
            try:  # dynamic=False: each shape its own static kernels (each is replayed as its own graph anyway)
                self.fn = torch.compile(unet, dynamic=False)
            except Exception as e:  # noqa: BLE001  (Dynamo refuses some Pythons at once)
                self._uncompile(e)
        self.recorded = 0  # graphs recorded so far (tests and benchmarks read it)
        self.lock = threading.Lock()  # calls from several threads take turns: they share the graphs' buffers

    def __repr__(self) -> str:
        return f"Graphed({type(self.unet).__name__}, compiled={self.fn is not self.unet}, graphs={len(self.graphs)})"

    def __call__(self, x: torch.Tensor, t, encoder_hidden_states: torch.Tensor,
                 added_cond_kwargs: dict | None = None) -> SimpleNamespace:
        if self.failed or x.device.type != "cuda":
            return self.unet(x, t, encoder_hidden_states=encoder_hidden_states, **_added(added_cond_kwargs))
        with self.lock:
            return self._replay(x, t, encoder_hidden_states, added_cond_kwargs)

    def _replay(self, x: torch.Tensor, t, encoder_hidden_states: torch.Tensor, added: dict | None = None):
        inputs = {"x": x, "context": encoder_hidden_states, **(added or {})}  # each copied into its buffer
        key = tuple((name, tuple(v.shape), v.dtype) for name, v in inputs.items())
        g = self.graphs.pop(key, None)
        while g is None:
            try:
                g = self.record(inputs)
            except Exception as e:  # noqa: BLE001  (any failure: the next simpler way, said once)
                raise_if_interrupted(e)
                if self.fn is not self.unet:  # torch.compile failed: a graph of the eager kernels instead
                    self._uncompile(e)
                    continue
                self.failed = why = f"{type(e).__name__}: {str(e)[:500]}"
                warnings.warn(f"the U-Net could not be recorded as a CUDA graph ({why}); it runs eagerly "
                              f"(backend='torch').", RuntimeWarning)
                return self.unet(x, t, encoder_hidden_states=encoder_hidden_states, **_added(added))
        self.graphs[key] = g  # now the most recent
        while len(self.graphs) > self.KEEP:
            del self.graphs[next(iter(self.graphs))]
        for name, value in inputs.items():
            g.inputs[name].copy_(value)
        g.t.copy_(torch.as_tensor(t).reshape(()))  # 0-d or 1-element, int (DDIM) or float (Euler) -> fp32 scalar
        g.graph.replay()
        return SimpleNamespace(sample=g.out.clone())  # (B, C_out, h, w): the next replay overwrites g.out

    def _uncompile(self, e: Exception) -> None:
        self.fn, self.uncompiled = self.unet, f"{type(e).__name__}: {str(e)[:500]}"
        warnings.warn(f"torch.compile could not build the U-Net ({self.uncompiled}); its eager kernels are "
                      f"recorded as a CUDA graph instead (backend='cudagraph').", RuntimeWarning)

    def record(self, inputs: dict) -> SimpleNamespace:
        """Warm up on a side stream (cuBLAS/cuDNN handles, inductor's compile), then record one call; ``inputs``: x,
        context and SDXL's text_embeds and time_ids, each given a buffer of its own (``g.inputs``)."""
        x = inputs["x"]
        g = SimpleNamespace(inputs={name: v.clone() for name, v in inputs.items()},
                            t=torch.full((), 500.0, device=x.device), graph=torch.cuda.CUDAGraph())
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(2):
                self.call(g)
        torch.cuda.current_stream(x.device).wait_stream(side)
        with torch.cuda.graph(g.graph), torch.no_grad():
            g.out = self.call(g).sample
        self.recorded += 1
        return g

    def call(self, g: SimpleNamespace):
        """One call of ``fn`` on a graph's buffers."""
        added = {k: v for k, v in g.inputs.items() if k not in ("x", "context")}
        return self.fn(g.inputs["x"], g.t, encoder_hidden_states=g.inputs["context"], **_added(added or None))


def _added(added: dict | None) -> dict:
    """The keyword that carries SDXL's added conditioning, or none."""
    return {} if added is None else {"added_cond_kwargs": added}


@dataclass
class _Recorded:
    """What ``Graphs`` keeps per U-Net and set of LoRA layers."""

    plain: tuple  # the layout of the parameters it reads (not the LoRAs' A and B)
    graph: Graphed
    folded: dict  # {path: weight} of the twin's LoRA layers (``weights.folded``); {}: the module itself
    filled: tuple = ()  # the LoRA state the folded weights were written for


class Graphs:
    """A runtime's graphed U-Nets, the ``KEEP`` most recent (each holds its graphs' activation memory). A U-Net is
    recorded anew when its parameters move, change dtype or are replaced, or LoRAs come on other layers; values
    edited in place are read as they are. With LoRA layers (peft's, active or parked) the graph is of the module's
    ``weights.folded`` twin, whose LoRA layers' weights are written with W + s B A (``weights.fill``) whenever the
    LoRA state moves: loading a LoRA on the same layers, a scale, a tag's LoRA or a switch between LoRA sets replays
    the same graph, never recorded or compiled again. FreeU (its factors: Python numbers) runs the module."""

    KEEP = 2

    def __init__(self, compile: bool = False):
        self.compile, self.held = compile, {}  # (id(unet), LoRA layers' paths, padding) -> _Recorded, oldest first

    def uncompiled(self) -> str:
        return next((h.graph.uncompiled for h in self.held.values() if h.graph.uncompiled), "")

    def get(self, unet, version: int = 0):
        """What runs ``unet`` now (``version``: the runtime's count of announced weight writes)."""
        version, layout, writes, freeu, loras, pads = weights.state(unet, version)
        if any(v is not None for v in freeu):
            return unet
        layers = weights.lora_layers(unet, active=False)  # parked ones too: they compute as their base layer
        key = (id(unet), tuple(layers), pads)  # the padding: A1111's Tiling is a graph of its own
        held = self.held.pop(key, None)
        plain = tuple(p for p in layout if ".lora_" not in p[0])  # the adapters' own A and B: not read
        if held is None or held.plain != plain:
            module, folded = weights.folded(unet, layers) if layers else (unet, {})
            held = _Recorded(plain, Graphed(module, compile=self.compile), folded)
        if held.folded and held.filled != (version, writes, loras):
            weights.fill(unet, held.folded)
            held.filled = (version, writes, loras)
        self.held[key] = held  # now the most recent
        while len(self.held) > self.KEEP:
            del self.held[next(iter(self.held))]
        return held.graph
