"""The U-Net on OpenVINO: traced once to IR (``convert``), compiled per input shape (``Compiled``), and for
CFG cut in two where its halves part (``split``). ``latentgen.backends.runtime`` decides when it runs.

The cut: CFG calls the U-Net on ``cat([x, x])`` with one timestep, and the halves differ only in their
context, which enters through cross-attention. Everything upstream of the first cross-attention, and every
ResNet's time projection, reads no context, so it is the same for both halves: on SD 1.5 that is the time
embedding, conv_in, the first ResNet and the first self-attention over 4096 tokens, about 7% of a half's
time. ``split`` cuts the graph there; the prefix runs once and the rest once per half.
"""

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

from . import weights

RECIPE = 3  # how convert() traces the U-Net; part of the cache key, so a new recipe converts anew


class _Traced(torch.nn.Module):
    """The U-Net as a function of positional tensors, as ``convert_model`` traces it."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, context):
        return self.unet(x, t, encoder_hidden_states=context, return_dict=False)[0]


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


def convert(unet, folder: Path) -> Path:
    """Convert ``unet`` (a float32 trace of its ``weights.plain`` twin) to OpenVINO IR in ``folder``/unet.xml, written
    to a temporary folder first and renamed, so a killed conversion leaves nothing behind."""
    import openvino

    cfg = unet.config
    folder.parent.mkdir(parents=True, exist_ok=True)  # an unwritable folder fails here, before the trace
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        twin = weights.plain(unet)
        example = (torch.zeros(2, cfg.in_channels, 8, 8), torch.tensor(500.0),
                   torch.zeros(2, 77, cfg.cross_attention_dim))
        with torch.no_grad(), warnings.catch_warnings(), _traceable(twin):  # the trace fixes diffusers' size
            warnings.simplefilter("ignore", torch.jit.TracerWarning)            # checks (see Compiled)
            model = openvino.convert_model(_Traced(twin), example_input=example)
        # fp32 weights stay fp32 (the exact path); bf16 ones are exact in fp16 and take half the disk
        openvino.save_model(model, tmp / "unet.xml", compress_to_fp16=unet.dtype != torch.float32)
        os.replace(tmp, folder)
    except OSError:  # another process got there first: keep its copy
        if not (folder / "unet.xml").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / "unet.xml"


class Compiled:
    """An OpenVINO-compiled U-Net, called like the torch one in the loop; returns the torch dtype of x.

    Compiled once per input shape (latents, context), the ``KEEP`` most recent kept: static shapes run
    SD 1.5's step ~6% faster than one dynamic-shape model (4.36 vs 4.65 s, medians of 10). The trace took
    diffusers' branch for latent sizes divisible by 2 ** (levels - 1); other sizes (which diffusers pads
    in its up blocks) run on the torch module. An even batch (CFG's unconditional and conditional halves)
    runs as two OpenVINO streams side by side, each half on half the threads: SD 1.5's call 4.15 s against
    4.32 s as one batch on both threads, the embedded one's 5.4 ms against 5.7 ms (medians, 2 cores). When
    the halves' latents are the same (CFG), the part that reads no context runs once first, on all threads
    (``split``): SD 1.5's call 4.06-4.16 s against 4.24-4.29 s with each half running it (medians of 4);
    on one thread, the prefix on one half and the rest on both: 7.89 s against 8.13 s (medians of 3).
    Calls from several threads take turns (they share the infer requests)."""

    KEEP = 2
    SHARE_AREA = 32 * 32  # latents of at least this many pixels run CFG's shared prefix once (``shares``)

    def __init__(self, unet, source):
        """``source``: the IR's unet.xml, or an IR model in memory (``patched``)."""
        import openvino

        self.unet, self.config = unet, unet.config
        self.factor = 2 ** (len(unet.config.block_out_channels) - 1)
        self.precision = "bf16" if unet.dtype in (torch.bfloat16, torch.float16) else "f32"
        self.core = openvino.Core()
        self.model = source if isinstance(source, openvino.Model) else self.core.read_model(source)
        self.requests: dict[tuple, list] = {}  # (x shape, context shape, shared, threads) -> infer requests,
        self.lock = threading.Lock()           # oldest first

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

    def compile(self, x_shape: tuple, c_shape: tuple, streams: int = 1, extra: dict | None = None):
        """The model compiled for these input shapes; ``extra``: more OpenVINO CPU settings (PERF_COUNT)."""
        model = self.model.clone()
        model.reshape(_shapes(x_shape, c_shape))
        return self.core.compile_model(model, "CPU", {**self.settings(streams), **(extra or {})})

    def shares(self, x: torch.Tensor) -> bool:
        """Whether a call on x runs its prefix once (``split``): an even batch whose halves' latents are the
        same (CFG), large enough that the saving outweighs one more infer request (the embedded model's 8x8
        latents are not: 6.1 ms a call with the prefix apart against 4.8 ms without)."""
        n = len(x) // 2
        return len(x) % 2 == 0 and x.shape[-2] * x.shape[-1] >= self.SHARE_AREA and torch.equal(x[:n], x[n:])

    def request(self, x_shape: tuple, c_shape: tuple, shared: bool = False) -> list:
        """The infer requests for a call of these shapes: one per part, after the prefix's when ``shared``;
        compiled for torch's thread count now (``parts`` and ``settings`` follow it)."""
        key = (x_shape, c_shape, shared, torch.get_num_threads())
        reqs = self.requests.pop(key, None)
        if reqs is None:
            n = self.parts(x_shape[0])
            x_part, c_part = (x_shape[0] // n, *x_shape[1:]), (c_shape[0] // n, *c_shape[1:])
            if shared:  # the prefix on one half; the rest per part (with one part, on both halves)
                half = (x_shape[0] // 2, *x_shape[1:]), (c_shape[0] // 2, *c_shape[1:])
                prefix, rest = split(self.model, _shapes(*half))
                if n == 1:
                    rest = split(self.model, _shapes(x_shape, c_shape))[1]
                    shared = all(_doubles(out, p) for out, p in zip(prefix.outputs, rest.get_parameters()))
            if shared:
                reqs = [self.core.compile_model(prefix, "CPU", self.settings()).create_infer_request()]
                model = self.core.compile_model(rest, "CPU", self.settings(n))
            else:
                reqs, model = [], self.compile(x_part, c_part, streams=n)
            reqs += [model.create_infer_request() for _ in range(n)]
        self.requests[key] = reqs  # now the most recent
        while len(self.requests) > self.KEEP:
            del self.requests[next(iter(self.requests))]
        return reqs

    def __call__(self, x: torch.Tensor, t, encoder_hidden_states: torch.Tensor) -> SimpleNamespace:
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            return self.unet(x, t, encoder_hidden_states=encoder_hidden_states)
        with self.lock:
            return self._run(x, np.asarray(float(t), dtype=np.float32), encoder_hidden_states)

    def _run(self, x: torch.Tensor, t: np.ndarray, encoder_hidden_states: torch.Tensor) -> SimpleNamespace:
        """One call; t: the timestep as a float32 scalar (DDIM's int or Euler's float)."""
        n = self.parts(len(x))
        reqs = self.request(tuple(x.shape), tuple(encoder_hidden_states.shape), self.shares(x))
        shared = len(reqs) > n  # the prefix's request first
        xs = np.split(x.float().numpy(), n)  # (B / n, C, h, w) each; start_async copies its inputs
        cs = np.split(encoder_hidden_states.float().numpy(), n)
        if shared:  # the prefix once, on all threads; its outputs stand in for (x, t) in each part
            first, *reqs = reqs
            first.infer([xs[0][: len(x) // 2], t])
            cut = [first.get_output_tensor(i).data for i in range(len(first.model_outputs))]  # (B / 2, ...) each
            heads = [cut if n == 2 else [np.concatenate([c, c]) for c in cut]] * n  # one part: both halves
        else:
            heads = [[xi, t] for xi in xs]
        for req, head, ci in zip(reqs, heads, cs):
            req.start_async([*head, ci])
        for req in reqs:
            req.wait()
        out = np.concatenate([req.get_output_tensor(0).data for req in reqs])  # (B, 4, h, w), own copy
        return SimpleNamespace(sample=torch.from_numpy(out).to(x.dtype))


def _doubles(half, full) -> bool:
    """Whether ``full``'s static shape is ``half``'s with twice the batch (dimension 0): a cut tensor made
    for one CFG half that stands for both when repeated."""
    a, b = half.get_partial_shape().to_shape(), full.get_partial_shape().to_shape()
    return len(a) == len(b) > 0 and b[0] == 2 * a[0] and list(a)[1:] == list(b)[1:]


def _shapes(x_shape: tuple, c_shape: tuple) -> dict:
    """The inputs' static shapes as ``Model.reshape`` takes them: x (B, C, h, w), t (), context (B, L, D)."""
    return {0: list(x_shape), 1: [], 2: list(c_shape)}


def _kinds(model) -> tuple[dict, list]:
    """(kind, cut): each node's kind by what it reads, directly or not: "ctx" the context, else "shared"
    x or t, else "const" (weights, and shapes, which are static here); cut: the outputs of shared nodes
    that ctx nodes read, in graph order."""
    context, kind, cut = model.get_parameters()[2].get_name(), {}, {}
    for op in model.get_ordered_ops():
        sources = [i.get_source_output() for i in op.inputs()]
        if op.get_type_name() == "Parameter":
            kind[op.get_name()] = "ctx" if op.get_name() == context else "shared"
            continue
        found = {kind[s.get_node().get_name()] for s in sources}
        kind[op.get_name()] = "ctx" if "ctx" in found else "shared" if "shared" in found else "const"
        if kind[op.get_name()] == "ctx":
            for s in sources:
                if kind[s.get_node().get_name()] == "shared":
                    cut.setdefault((s.get_node().get_name(), s.get_index()), s)
    return kind, list(cut.values())


def split(model, shapes: dict):
    """(prefix, rest): ``model`` at these static shapes cut where it first reads the context. prefix maps
    (x, t) to the cut tensors (on SD 1.5: conv_in's output, the first ResNet's, the first transformer
    block's residual stream and its cross-attention's query, and each ResNet's time projection); rest maps
    (cut tensors..., context) to the output, in the same order. Both share the weights; ``model`` is left
    as it was."""
    import openvino
    import openvino.opset13 as ops

    graph = model.clone()
    graph.reshape(shapes)
    for op in graph.get_ordered_ops():  # a ShapeOf of a static shape is a constant: make it one
        if op.get_type_name() == "ShapeOf":
            shape = np.array(op.get_input_shape(0), dtype=op.get_output_element_type(0).to_dtype())
            op.output(0).replace(ops.constant(shape).output(0))
    kind, cut = _kinds(graph)
    x, t, context = graph.get_parameters()
    prefix = openvino.Model(cut, [x, t], "prefix")
    inputs = []
    for out in cut:  # the rest reads a parameter in place of each cut tensor
        inputs.append(ops.parameter(out.get_partial_shape(), out.get_element_type()))
        for target in list(out.get_target_inputs()):
            if kind.get(target.get_node().get_name()) == "ctx":  # not the prefix's new Result
                target.replace_source_output(inputs[-1].output(0))
    return prefix, openvino.Model(graph.get_results(), [*inputs, context], "rest")
