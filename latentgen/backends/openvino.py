"""The U-Net on OpenVINO: traced once to IR (``convert``), compiled per input shape (``Compiled``), and for
CFG cut in two where its halves part (``latentgen.backends.halves``). ``latentgen.backends.runtime`` decides when
it runs. A ControlNet's residuals need a U-Net traced with them as inputs (``convert(..., residuals=True)``),
converted at the first call that has them; the ControlNet itself converts the same way (``control_graph``)."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from .. import memory
from ..text.xl import example_added, is_xl
from . import openvino_core, weights
from .halves import doubles, split

RECIPE = 3  # how convert() traces the U-Net; part of the cache key, so a new recipe converts anew


class _Traced(torch.nn.Module):
    """A U-Net or a ControlNet as a function of positional tensors, as ``convert_model`` traces it. A U-Net:
    (x, t, context[, text_embeds, time_ids][, residuals...]) -> its output, SDXL's added conditioning after the
    context, the residuals a ControlNet's (the skip connections', then the middle block's); a ControlNet:
    (x, t, context, hint[, text_embeds, time_ids]) -> its residuals at weight 1 (``control.residuals`` scales them)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet  # the IR names its weights "self.unet.<parameter>" (``patched`` finds them so)

    def forward(self, x, t, context, *rest):
        control = hasattr(self.unet, "controlnet_cond_embedding")  # a ControlNet: its hint comes first in rest
        hint, rest = (rest[0], rest[1:]) if control else (None, rest)
        xl = is_xl(self.unet.config)  # SDXL: the pooled text (B, P) and the size numbers (B, 6 or 5)
        added, rest = ({"added_cond_kwargs": {"text_embeds": rest[0], "time_ids": rest[1]}}, rest[2:]) if xl else ({}, rest)
        if control:
            down, mid = self.unet(x, t, encoder_hidden_states=context, controlnet_cond=hint, return_dict=False, **added)
            return (*down, mid)
        extra = {"down_block_additional_residuals": list(rest[:-1]), "mid_block_additional_residual": rest[-1]} \
            if rest else {}
        return self.unet(x, t, encoder_hidden_states=context, return_dict=False, **added, **extra)[0]


def residual_shapes(config, x_shape: tuple) -> list[tuple]:
    """The shapes of a ControlNet's residuals for a U-Net call on x (B, C, h, w): conv_in's output, each down
    block's ResNet outputs and downsampler output (the skip connections, in order), then the middle block's."""
    b, _, h, w = x_shape
    chans = list(config.block_out_channels)
    shapes = [(b, chans[0], h, w)]
    for i, ch in enumerate(chans):
        shapes += [(b, ch, h >> i, w >> i)] * config.layers_per_block
        if i < len(chans) - 1:  # no downsampler after the last block
            shapes.append((b, ch, h >> (i + 1), w >> (i + 1)))
    return shapes + [(b, chans[-1], h >> (len(chans) - 1), w >> (len(chans) - 1))]


def _geglu_as_two_linears(m, hidden_states, *args, **kwargs):
    """GEGLU (Shazeer 2020, https://arxiv.org/abs/2002.05202) with its projection as two linears, the halves
    that ``proj(h).chunk(2)`` would give: the same dot products, but OpenVINO runs no split of the
    (B, N, 2 * inner) result (a reference-kernel VariadicSplit on the CPU, 0.06 s of SD 1.5's call). The halves
    are modules of their own for the trace (``proj_halves.0`` and ``.1``), so the IR names their weights."""
    a, b = m.proj_halves
    return a(hidden_states) * m.gelu(b(hidden_states))


@contextlib.contextmanager
def _traceable(unet):
    """While open, ``unet`` is as convert() traces it: each GEGLU's forward is swapped for
    ``_geglu_as_two_linears`` (on the instances, for the trace only; the weights are views, not copies)."""
    from diffusers.models.activations import GEGLU

    swapped = [m for m in unet.modules() if isinstance(m, GEGLU)]
    for m in swapped:
        halves = []
        for w, b in zip(m.proj.weight.detach().chunk(2), (None, None) if m.proj.bias is None else m.proj.bias.chunk(2)):
            half = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
            half.weight = torch.nn.Parameter(w, requires_grad=False)
            if b is not None:
                half.bias = torch.nn.Parameter(b.detach(), requires_grad=False)
            halves.append(half)
        m.proj_halves = torch.nn.ModuleList(halves)
        m.forward = functools.partial(_geglu_as_two_linears, m)
    try:
        yield
    finally:
        for m in swapped:
            del m.forward, m.proj_halves


def patched(model, tensors: dict[str, torch.Tensor]):
    """A copy of the IR ``model`` with the weights named in ``tensors`` ({parameter name: tensor}) replaced, in
    each constant's own element type; None when one has no constant of its name (a bias or a norm, which the
    conversion folds into other constants). A GEGLU projection's weight is its two halves' constants."""
    import openvino.opset13 as ops

    graph = model.clone()
    consts = {n: op for op in graph.get_ordered_ops() if op.get_type_name() == "Constant" for n in op.output(0).get_names()}
    for name, t in tensors.items():
        parts = {f"self.unet.{name}": t}
        if name.endswith(".proj.weight") and f"self.unet.{name}" not in consts:  # a GEGLU's, traced as two halves
            stem = name.removesuffix(".proj.weight")
            parts = {f"self.unet.{stem}.proj_halves.{i}.weight": h for i, h in enumerate(t.chunk(2))}
        for cname, value in parts.items():
            old = consts.get(cname)
            if old is None or tuple(old.get_output_shape(0)) != tuple(value.shape):
                return None
            data = value.detach().float().cpu().contiguous().numpy().astype(old.get_element_type().to_dtype())
            # contiguous: a channels_last weight's array would reach OpenVINO with its strides, and be misread
            new = ops.constant(data)
            new.output(0).set_names({cname})
            old.output(0).replace(new.output(0))
            consts[cname] = new
    return graph


def _example(model, residuals: bool) -> tuple:
    """Inputs to trace ``model`` (a U-Net, or a ControlNet when it has a hint encoder) on: 8x8 latents, CFG's batch."""
    cfg = model.config
    example = (torch.zeros(2, cfg.in_channels, 8, 8), torch.tensor(500.0), torch.zeros(2, 77, cfg.cross_attention_dim))
    if hasattr(model, "controlnet_cond_embedding"):  # the hint at the pixels' size: 2 ** (levels - 1) per latent
        side = 8 * 2 ** (len(cfg.conditioning_embedding_out_channels) - 1)
        example += (torch.zeros(2, cfg.conditioning_channels, side, side),)
    example += example_added(cfg, 2) if is_xl(cfg) else ()
    return example + (tuple(torch.zeros(s) for s in residual_shapes(cfg, example[0].shape)) if residuals else ())


def convert(model, folder: Path, residuals: bool = False) -> Path:
    """Convert a U-Net or ControlNet (a float32 trace of its ``weights.plain`` twin) to OpenVINO IR in ``folder``/
    unet.xml, written to a temporary folder and renamed (a killed conversion leaves nothing); ``residuals``: a U-Net
    with a ControlNet's residuals as inputs (``residual_shapes``). Peak memory: the model, its float32 twin."""
    import openvino

    folder.parent.mkdir(parents=True, exist_ok=True)  # an unwritable folder fails here, before the trace
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        twin = weights.plain(model)
        with torch.no_grad(), warnings.catch_warnings(), _traceable(twin):  # the trace fixes diffusers' size
            warnings.simplefilter("ignore", torch.jit.TracerWarning)            # checks (see Compiled)
            ir = openvino.convert_model(_Traced(twin), example_input=_example(model, residuals))
        # fp32 weights stay fp32 (the exact path); bf16 ones are exact in fp16 and take half the disk
        openvino.save_model(ir, tmp / "unet.xml", compress_to_fp16=model.dtype != torch.float32)
        os.replace(tmp, folder)
        del ir, twin  # the float32 copy, gone before anything compiles (SDXL's: 10 GiB)
    except OSError:  # another process got there first: keep its copy
        if not (folder / "unet.xml").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        memory.give_back()
    return folder / "unet.xml"


class Compiled:
    """An OpenVINO-compiled U-Net, called like the torch one in the loop (a ControlNet's residuals too: on the
    U-Net ``with_residuals`` makes; SDXL's ``added_cond_kwargs``); returns the torch dtype of x.

    Compiled once per input shape, the ``KEEP`` most recent kept: static shapes run SD 1.5's step ~6% faster than
    one dynamic-shape model (4.36 vs 4.65 s). The trace took diffusers' branch for latent sizes divisible by
    2 ** (levels - 1); other sizes (padded in diffusers' up blocks) run on the torch module. An even batch (CFG's
    halves) runs as two streams, each on half the threads: SD 1.5's call 4.15 s against 4.32 s as one batch, the
    embedded one's 5.4 ms against 5.7 ms. With the halves' latents the same (CFG), the part that reads no context
    runs once first (``split``): 4.06-4.16 s against 4.24-4.29 s; on one thread 7.89 s against 8.13 s (medians,
    2 cores). Calls from several threads take turns (they share the requests)."""

    KEEP = 2
    SHARE_AREA = 32 * 32  # latents of at least this many pixels run CFG's shared prefix once (``shares``)

    def __init__(self, unet, source, with_residuals=None):
        """``source``: the IR's unet.xml, or an IR model in memory (``patched``); ``with_residuals``: () -> the
        Compiled U-Net that takes a ControlNet's residuals, made at the first call that has them (None: torch)."""
        import openvino

        self.unet, self.config = unet, unet.config
        self.factor = 2 ** (len(unet.config.block_out_channels) - 1)
        self.precision = "bf16" if unet.dtype in (torch.bfloat16, torch.float16) else "f32"
        self.core = openvino_core()  # one for the process (see there)
        self.model = source if isinstance(source, openvino.Model) else self.core.read_model(source)
        self.requests: dict[tuple, list] = {}  # (input shapes, shared, threads) -> infer requests, oldest first
        self.lock = threading.Lock()
        self.make_controlled, self.controlled = with_residuals, None

    @staticmethod
    def parts(batch: int) -> int:
        """How many infer requests share a call of this batch: 2 (one per stream) for an even batch when
        torch has two threads or more, else 1 on all of them."""
        return 2 if batch % 2 == 0 and torch.get_num_threads() >= 2 else 1

    def settings(self, streams: int = 1) -> dict:
        """OpenVINO CPU settings for ``streams`` streams that share torch's thread count (accelerate sets it
        per process): one LATENCY stream on all of them, or THROUGHPUT streams side by side."""
        hint = {"PERFORMANCE_HINT": "LATENCY"} if streams == 1 else {"PERFORMANCE_HINT": "THROUGHPUT",
                                                                     "NUM_STREAMS": streams}
        return {"INFERENCE_PRECISION_HINT": self.precision, "INFERENCE_NUM_THREADS": torch.get_num_threads(), **hint}

    def compile(self, shapes: tuple, streams: int = 1, extra: dict | None = None):
        """The model compiled for these input shapes (``_shapes``); ``extra``: more OpenVINO CPU settings."""
        model = self.model.clone()
        model.reshape(_shapes(shapes))
        return self.core.compile_model(model, "CPU", {**self.settings(streams), **(extra or {})})

    def shares(self, x: torch.Tensor) -> bool:
        """Whether a call on x runs its prefix once (``split``): an even batch whose halves' latents are the
        same (CFG), large enough that the saving outweighs one more infer request (the embedded model's 8x8
        latents are not: 6.1 ms a call with the prefix apart against 4.8 ms without)."""
        n = len(x) // 2
        return len(x) % 2 == 0 and x.shape[-2] * x.shape[-1] >= self.SHARE_AREA and torch.equal(x[:n], x[n:])

    def request(self, shapes: tuple, shared: bool = False) -> list:
        """The infer requests for a call with inputs of these shapes (x, context, residuals...: all batch first);
        one per part, after the prefix's when ``shared``; compiled for torch's thread count now (``parts`` and
        ``settings`` follow it)."""
        key = (shapes, shared, torch.get_num_threads())
        reqs = self.requests.pop(key, None)
        if reqs is None:
            n = self.parts(shapes[0][0])
            if shared:  # the prefix on one half; the rest per part (with one part, on both halves)
                prefix, rest = split(self.model, _shapes(_batch(shapes, 2)))
                if n == 1:
                    rest = split(self.model, _shapes(shapes))[1]
                    shared = all(doubles(out, p) for out, p in zip(prefix.outputs, rest.get_parameters()))
            if shared:
                reqs = [self.core.compile_model(prefix, "CPU", self.settings()).create_infer_request()]
                model = self.core.compile_model(rest, "CPU", self.settings(n))
            else:
                reqs, model = [], self.compile(_batch(shapes, n), streams=n)
            reqs += [model.create_infer_request() for _ in range(n)]
        self.requests[key] = reqs  # now the most recent
        while len(self.requests) > self.KEEP:
            del self.requests[next(iter(self.requests))]
        return reqs

    def __call__(self, x: torch.Tensor, t, encoder_hidden_states: torch.Tensor, down_block_additional_residuals=None,
                 mid_block_additional_residual=None, added_cond_kwargs=None) -> SimpleNamespace:
        down, mid, added = down_block_additional_residuals, mid_block_additional_residual, added_cond_kwargs
        residuals = [] if down is None else [*down, mid]
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor or (residuals and not self._controlled()):
            extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid,
                     "added_cond_kwargs": added}
            return self.unet(x, t, encoder_hidden_states=encoder_hidden_states, **extra)
        if residuals and self.controlled is not self:
            return self.controlled(x, t, encoder_hidden_states, residuals[:-1], residuals[-1], added)
        # a pooled ControlNet's residuals (B, C, 1, 1) broadcast, as the U-Net adds them
        residuals = [r.expand(shape) for r, shape in zip(residuals, residual_shapes(self.config, tuple(x.shape)))]
        added = [] if added is None else [added["text_embeds"], added["time_ids"]]
        with self.lock:
            out = self._run(x, t, [encoder_hidden_states, *added, *residuals])
        return SimpleNamespace(sample=torch.from_numpy(out[0]).to(x.dtype))

    def _controlled(self) -> bool:
        """Whether a call with residuals runs compiled: on this model if it takes them, else on the one
        ``with_residuals`` makes (once)."""
        if self.controlled is None and len(self.model.get_parameters()) > 3 + 2 * is_xl(self.config):
            self.controlled = self
        elif self.controlled is None and self.make_controlled is not None:
            with self.lock:
                self.controlled = self.controlled or self.make_controlled()
        return self.controlled is not None

    def _run(self, x: torch.Tensor, t, inputs: list[torch.Tensor]) -> list[np.ndarray]:
        """One call: x (B, C, h, w), t the timestep (DDIM's int or Euler's float), ``inputs`` the others (context,
        residuals...: B first) -> the outputs, (B, ...) each."""
        t = np.asarray(float(t), dtype=np.float32)
        n = self.parts(len(x))
        reqs = self.request(tuple(tuple(a.shape) for a in (x, *inputs)), self.shares(x))
        shared = len(reqs) > n  # the prefix's request first
        xs = np.split(x.float().numpy(), n)  # (B / n, C, h, w) each; start_async copies its inputs
        rest = [np.split(a.float().contiguous().numpy(), n) for a in inputs]
        if shared:  # the prefix once, on all threads; its outputs stand in for (x, t) in each part
            first, *reqs = reqs
            first.infer([xs[0][: len(x) // 2], t])
            cut = [first.get_output_tensor(i).data for i in range(len(first.model_outputs))]  # (B / 2, ...) each
            heads = [cut if n == 2 else [np.concatenate([c, c]) for c in cut]] * n  # one part: both halves
        else:
            heads = [[xi, t] for xi in xs]
        for k, (req, head) in enumerate(zip(reqs, heads)):
            req.start_async([*head, *(a[k] for a in rest)])
        for req in reqs:
            req.wait()
        return [np.concatenate([req.get_output_tensor(i).data for req in reqs])  # own copies
                for i in range(len(reqs[-1].model_outputs))]


def _batch(shapes: tuple, parts: int) -> tuple:
    """Input shapes with the batch (dimension 0) split in ``parts``."""
    return tuple((s[0] // parts, *s[1:]) for s in shapes)


def _shapes(shapes: tuple) -> dict:
    """The inputs' static shapes as ``Model.reshape`` takes them: x (B, C, h, w), t (), then the others
    (context (B, L, D), SDXL's text_embeds (B, P) and time_ids (B, n), residuals...) in order."""
    x, *rest = shapes
    return {0: list(x), 1: [], **{2 + i: list(s) for i, s in enumerate(rest)}}
