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
{"text_embeds": (B, P), "time_ids": (B, 6 or 5)}, and a ControlNet's residuals (``down_block_additional_residuals``,
``mid_block_additional_residual``). A graph reads its inputs from fixed buffers and writes its output to a fixed
buffer: each call copies the inputs in, replays, and returns a copy of the output. One graph per set of input
shapes and dtypes, the ``KEEP`` most recent kept (each holds its own activation memory). A ControlNet is graphed
the same way (``GraphedControlNet``), its residuals then inputs of the U-Net's graph. ``compile=True`` records
``torch.compile(unet)`` (inductor's fused kernels) instead of the eager module; its first call per shape compiles (about a minute), later processes read
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
    """A U-Net's calls recorded as CUDA graphs, one per set of input shapes and dtypes (the module's contract; a
    ControlNet's residuals, when given, enter as inputs of their own: another graph)."""

    KEEP = 4  # shapes: a hires fix's two sizes, each with and without a ControlNet's residuals
    what = "U-Net"

    def __init__(self, unet, compile: bool = False):
        self.unet = unet
        self.fn = unet
        self.graphs: dict[tuple, SimpleNamespace] = {}  # shape key -> recorded graph and its buffers, oldest first
        self.failed: str | None = None  # why recording failed (the module then runs eagerly)
        self.uncompiled: str | None = None  # why torch.compile failed (the eager kernels are recorded instead)
        if compile:
            try:  # dynamic=False: each shape its own static kernels (each is replayed as its own graph anyway)
                _recompile_limit()
                self.fn = torch.compile(unet, dynamic=False)
            except Exception as e:  # noqa: BLE001  (Dynamo refuses some Pythons at once)
                self._uncompile(e)
        self.pool = None  # one memory pool for all its graphs: replays take turns and outputs are copied at once
        self.recorded = 0  # graphs recorded so far (tests and benchmarks read it)
        self.lock = threading.Lock()  # calls from several threads take turns: they share the graphs' buffers

    def __repr__(self) -> str:
        return f"Graphed({type(self.unet).__name__}, compiled={self.fn is not self.unet}, graphs={len(self.graphs)})"

    def __call__(self, x: torch.Tensor, t, encoder_hidden_states: torch.Tensor, added_cond_kwargs: dict | None = None,
                 down_block_additional_residuals=None, mid_block_additional_residual=None) -> SimpleNamespace:
        return self._replay(x, t, encoder_hidden_states, added_cond_kwargs, down_block_additional_residuals,
                            mid_block_additional_residual, cuda_only=True)

    def _replay(self, x: torch.Tensor, t, encoder_hidden_states: torch.Tensor, added: dict | None = None,
                down=None, mid=None, cuda_only: bool = False) -> SimpleNamespace:
        residuals = {} if down is None else {**{f"down.{i}": r for i, r in enumerate(down)}, "mid": mid}
        inputs = {"x": x, "context": encoder_hidden_states, **(added or {}), **residuals}
        return SimpleNamespace(sample=self.replay(inputs, t, cuda_only)[0])

    def replay(self, inputs: dict, t, cuda_only: bool = False) -> list[torch.Tensor]:
        """``run``'s outputs for ``inputs`` (x first) from the graph of their shapes, recorded on first use; off CUDA
        (``cuda_only``) or after a failed recording, the module's own."""
        if self.failed or (cuda_only and inputs["x"].device.type != "cuda"):
            return self.run(inputs, t, self.unet)
        with self.lock:
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
                    warnings.warn(f"the {self.what} could not be recorded as a CUDA graph ({why}); it runs eagerly "
                                  f"(backend='torch').", RuntimeWarning)
                    return self.run(inputs, t, self.unet)
            self.graphs[key] = g  # now the most recent
            while len(self.graphs) > self.KEEP:
                del self.graphs[next(iter(self.graphs))]
            for name, value in inputs.items():
                g.inputs[name].copy_(value)
            g.t.copy_(torch.as_tensor(t).reshape(()))  # 0-d or 1-element, int (DDIM) or float (Euler) -> fp32
            g.graph.replay()
            return [o.clone() for o in g.out]  # the next replay overwrites g.out

    def _uncompile(self, e: Exception) -> None:
        self.fn, self.uncompiled = self.unet, f"{type(e).__name__}: {str(e)[:500]}"
        warnings.warn(f"torch.compile could not build the {self.what} ({self.uncompiled}); its eager kernels are "
                      f"recorded as a CUDA graph instead (backend='cudagraph').", RuntimeWarning)

    def record(self, inputs: dict) -> SimpleNamespace:
        """Warm up on a side stream (cuBLAS/cuDNN handles, inductor's compile), then record one call; ``inputs``: x,
        context, SDXL's text_embeds and time_ids, residuals, a hint, each given a buffer of its own (``g.inputs``)."""
        x = inputs["x"]
        g = SimpleNamespace(inputs={name: v.clone() for name, v in inputs.items()},
                            t=torch.full((), 500.0, device=x.device), graph=torch.cuda.CUDAGraph())
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(2):
                self.call(g)
        torch.cuda.current_stream(x.device).wait_stream(side)
        if not self.graphs:  # no graph holds the pool now (a capture that failed): a fresh one
            self.pool = None
        self.pool = self.pool or torch.cuda.graph_pool_handle()
        with torch.cuda.graph(g.graph, pool=self.pool), torch.no_grad():
            g.out = self.call(g)
        self.recorded += 1
        return g

    def call(self, g: SimpleNamespace) -> list[torch.Tensor]:
        """One call of ``fn`` on a graph's buffers."""
        return self.run(g.inputs, g.t)

    def run(self, inputs: dict, t, fn=None) -> list[torch.Tensor]:
        """One call of ``fn`` (default: what is recorded) on named ``inputs``: [(B, C_out, h, w)]."""
        down = [inputs[f"down.{i}"] for i in range(sum(k.startswith("down.") for k in inputs))]
        extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": inputs["mid"]} if down else {}
        return [(fn or self.fn)(inputs["x"], t, encoder_hidden_states=inputs["context"], **_added(inputs),
                                **extra).sample]


class GraphedControlNet(Graphed):
    """A ControlNet's calls as CUDA graphs: ``control_graph``'s contract, ``(x, t, context, hint[, added]) -> (down,
    mid)`` at weight 1; the residuals are scaled by the loop, then enter the U-Net's graph as its inputs."""

    what = "ControlNet"

    def __call__(self, x: torch.Tensor, t, context: torch.Tensor, hint: torch.Tensor,
                 added: dict | None = None) -> tuple[list, torch.Tensor]:
        out = self.replay({"x": x, "context": context, "hint": hint, **(added or {})}, t, cuda_only=True)
        return out[:-1], out[-1]

    def run(self, inputs: dict, t, fn=None) -> list[torch.Tensor]:
        down, mid = (fn or self.fn)(inputs["x"], t, encoder_hidden_states=inputs["context"],
                                    controlnet_cond=inputs["hint"], return_dict=False, **_added(inputs))
        return [*down, mid]


@dataclass
class _Twin:
    """A U-Net's LoRA twin (``weights.folded``), shared by its graphs of every padding."""

    plain: tuple  # the layout of the parameters it shares (not the LoRAs' A and B)
    module: torch.nn.Module
    layers: dict  # {path: the twin's copy of that LoRA layer's base layer}
    filled: tuple = ()  # the LoRA state and padding its weights were written for


@dataclass
class _Recorded:
    """What ``Graphs`` keeps per U-Net, LoRA layer set, attention processors and padding."""

    plain: tuple
    graph: Graphed  # or a GraphedControlNet


class Graphs:
    """A runtime's graphed U-Nets, the ``KEEP`` most recent (each holds its graphs' activation memory). A U-Net is
    recorded anew when its parameters move, change dtype or are replaced, its attention processors change, LoRAs
    come on other layers or its convolutions pad otherwise (Tiling); values edited in place are read as they are.
    With LoRA layers (peft's, active or parked) the graph is of the module's ``weights.folded`` twin, whose LoRA
    layers' weights are written with W + s B A (``weights.fill``) whenever the LoRA state moves: loading a LoRA on the
    same layers, a scale, a tag's LoRA or a switch between LoRA sets replays the same graph, never recorded or
    compiled again. FreeU (its factors: Python numbers) runs the module."""

    KEEP = 2

    def __init__(self, compile: bool = False, kind: type = Graphed, keep: int = KEEP):
        self.compile, self.kind, self.keep = compile, kind, keep  # kind: Graphed, or GraphedControlNet
        self.held: dict[tuple, _Recorded] = {}  # (id(unet), LoRA layers, processors, padding) -> graph, oldest first
        self.twins: dict[tuple, _Twin] = {}  # (id(unet), LoRA layers, processors) -> its twin, while a graph uses it

    def uncompiled(self) -> str:
        return next((h.graph.uncompiled for h in list(self.held.values()) if h.graph.uncompiled), "")

    def get(self, unet, version: int = 0):
        """What runs ``unet`` now (``version``: the runtime's count of announced weight writes)."""
        version, layout, writes, freeu, loras, pads = weights.state(unet, version)
        if any(v is not None for v in freeu):
            return unet
        layers = weights.lora_layers(unet, active=False)  # parked ones too: they compute as their base layer
        plain = tuple(p for p in layout if ".lora_" not in p[0])  # the adapters' own A and B: not read
        shape, module = (id(unet), tuple(layers), weights.processors(unet)), unet
        if layers:
            twin = self.twins.get(shape)
            if twin is None or twin.plain != plain:
                twin = self.twins[shape] = _Twin(plain, *weights.folded(unet, layers))
            if twin.filled != (version, writes, loras, pads):
                weights.fill(unet, twin.layers)
                twin.filled = (version, writes, loras, pads)
            module = twin.module
        key = (*shape, pads)  # the padding: A1111's Tiling records other kernels
        held = self.held.pop(key, None)
        if held is None or held.plain != plain or held.graph.unet is not module:
            held = _Recorded(plain, self.kind(module, compile=self.compile and not (layers and _freezing())))
        self.held[key] = held  # now the most recent
        while len(self.held) > self.keep:
            del self.held[next(iter(self.held))]
        used = {k[:3] for k in self.held}
        self.twins = {k: v for k, v in self.twins.items() if k in used}
        return held.graph


def _freezing() -> bool:
    """Whether inductor freezes parameters into constants ($TORCHINDUCTOR_FREEZING): a twin's weights, rewritten in
    place for each LoRA state, must stay inputs of its kernels, so a twin is then graphed with the eager kernels."""
    try:
        from torch._inductor import config
    except ImportError:  # no inductor: nothing compiles
        return False
    return bool(getattr(config, "freezing", False))


def _recompile_limit() -> None:
    """Let Dynamo keep more compiled variants of one code object than its default 8: a U-Net's forward is compiled per
    shape, with and without a ControlNet's residuals, per padding, for the module and its LoRA twin; past the limit
    it would run those frames eagerly, without a word (process-wide, raised once, never lowered)."""
    import torch._dynamo

    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    setattr(cfg, name, max(getattr(cfg, name), 64))


def _added(inputs: dict) -> dict:
    """The keyword that carries the added conditioning among a graph's named inputs (SDXL's text_embeds and time_ids,
    any other such key), or none."""
    added = {k: v for k, v in inputs.items() if k not in ("x", "context", "hint", "mid") and not k.startswith("down.")}
    return {"added_cond_kwargs": added} if added else {}
