"""Where the U-Net runs: torch eager; on CPUs OpenVINO, the same network compiled as one graph; on CUDA
a CUDA graph (``latentgen.backends.cudagraph``) of ``torch.compile``'s fused kernels, or of the eager ones.

Measured (2-core AMD EPYC with AVX512-BF16, torch 2.13 CPU, OpenVINO 2026.4; tests/benchmarks/):
  * the embedded model's U-Net call (8x8 latents, CFG batch 2, 0.42 GFLOP): torch eager ~13 ms, most of
    it per-op overhead (about 800 small ops); OpenVINO fp32 ~6.2 ms, its outputs within 3e-6 of torch's.
    TorchScript trace + freeze gave 8.6 ms, ``torch.compile`` (inductor, freezing) 8.2 ms after 43 s.
  * SD 1.5 at 512x512 (one CFG step, 1.61 TFLOP): torch bf16 + channels_last ~5.9 s, OpenVINO bf16 ~4.1 s,
    near the ~0.4 TFLOP/s that this CPU's bf16 matrix multiplies peak at.
Measured on an H200 (torch 2.11+cu130, fp16): SD 1.5's step 47 ms eager (~1000 kernel launches set the
pace), 10.6 ms as a CUDA graph ("cudagraph"), 6.7 ms as a graph of ``torch.compile``'s kernels ("compile",
the default there for SD-sized U-Nets, after a 62 s first compile; 10 s in later processes).

``Runtime("openvino")`` converts the U-Net once (``latentgen.backends.openvino.convert``: a trace of the torch
module without its LoRAs, offline) and caches the result on disk, keyed by a hash of the weights, so the next
process loads it in a fraction of a second. LoRAs (loaded, scaled, fused, from prompt tags, several at once) and
edited weights stay on it: the weights that differ from the converted ones (a LoRA layer's folded W + s B A,
``latentgen.backends.weights``) are patched into a copy of the converted model, compiled, and kept for the
next calls (``VARIANTS`` of them per U-Net: two LoRA sets that alternate stay compiled), never converted again.
Only a bias or a norm that differs (the conversion folds those into other constants) or FreeU runs torch.

ControlNets stay on it too: a call with residuals runs a second conversion of the U-Net that takes them as inputs
(``convert(..., residuals=True)``, cached as ``<key>-residuals``, patched for LoRAs as the first), and each
ControlNet is converted once per set of weights (``for_controlnet``; ``control_graph``). On CUDA LoRAs stay in
the graph: it is recorded on a twin whose LoRA layers' weights are written with W + s B A when their state moves.

What a call checks is cheap (``weights.state``): parameters added, removed, moved or cast, torch's counters of
in-place writes, FreeU's factors, the LoRA layers' adapters and scales, the padding. Writes through ``.data`` are
announced (``Pipeline.weights_changed`` calls ``changed``). When the state moves, the weights are read
(``weights.changed``: each tensor's bytes hashed, those unmoved since skipped). The call contract is the loop's:
``unet(x, t, encoder_hidden_states=context).sample`` with x (B, C, h, w), context (B, 77 * k, D).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import memory, precision
from . import cache, control_graph, cudagraph, openvino_core, raise_if_interrupted, weights
from .cache import cache_dir
from .choice import BACKENDS, CUDA_ONLY
from .openvino import RECIPE, Compiled, convert, patched


def _warn(what: str, e: Exception) -> None:
    raise_if_interrupted(e)  # a Ctrl-C during the conversion stops the call; it is no reason to fall back
    warnings.warn(f"the {what} could not be converted to OpenVINO ({type(e).__name__}: {e}); it runs on torch "
                  f"(backend='torch').", RuntimeWarning)


def weights_hash(module: torch.nn.Module) -> str:
    """The disk cache's key of a U-Net's converted form (``weights.fingerprint`` of its ``weights.plain`` twin's
    weights, with the versions of what traces and converts it)."""
    return _record(module, {})[0]


def _record(module: torch.nn.Module, known: dict) -> tuple[str, dict[str, str]]:
    """(cache key, {name: hash}) of the weights ``convert`` converts: the module's without its LoRAs (peft's
    base layers, under the plain names). ``known`` gets what ``weights.changed`` remembers of each tensor read."""
    import diffusers
    import openvino

    tensors, fresh = weights.effective(module)
    layers = weights.lora_layers(module)
    for path in fresh:  # the base weight, not the folded one: LoRAs are patched in afterwards
        tensors[path] = layers[path.removesuffix(".weight")].get_base_layer().weight.detach()
    weights.changed(tensors, {}, known)  # every tensor hashed, once, and remembered in ``known``
    record = {name: known[name][2] for name in tensors}
    recipe = f"{openvino.__version__}|{torch.__version__}|{diffusers.__version__}|{RECIPE}"
    return weights.fingerprint(module, recipe, record), record


@dataclass
class _Held:
    """What ``Runtime`` keeps per U-Net it converted."""

    base: Compiled | None  # the converted weights, compiled; None: the conversion failed
    digest: str  # their ``weights_hash``
    record: dict[str, str]  # {name: hash} of the converted weights
    state: tuple = ()  # ``weights.state`` at the last check
    version: int = 0  # the announced version at the last check
    known: dict = field(default_factory=dict)  # ``weights.changed``'s memory of tensors read
    variants: dict = field(default_factory=dict)  # {frozenset of (name, hash) patched: Compiled}, oldest first
    seen: dict = field(default_factory=dict)  # {state: (what ran, why)} of the last few states, oldest first
    current: Compiled | None = None  # what runs now: base or a variant; None: torch (``why``)
    why: str = ""


class Runtime:
    """The backend of a pipeline. ``for_unet(unet)`` is what the loop calls: the compiled U-Net, a compiled copy
    with the weights that differ patched in (LoRAs, edits), or ``unet`` itself (torch) with ``fallback`` saying
    why. Calls of one compiled U-Net from several threads take turns (they share its infer requests or graphs)."""

    KEEP = 2  # U-Nets held compiled (a swapped-out one is let go, with its OpenVINO model)
    VARIANTS = 2  # patched copies kept per U-Net (two LoRA sets alternating stay compiled)

    def __init__(self, backend: str = "torch", why: str = "as asked"):
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not supported; use one of {', '.join(map(repr, BACKENDS))}.")
        self.backend, self.why = backend, why
        self.conversions = 0  # conversions this runtime made (0 when every U-Net came from the disk cache)
        self.fallback = ""  # why the last call ran torch instead (weights changed, a failed conversion), if it did
        self.version = 0  # announced weight changes so far (``changed``)
        self._compiled: dict[tuple, _Held] = {}  # (id(unet), its padding) -> what was converted, oldest first
        self._controlnets: dict[tuple, tuple] = {}  # (id(ControlNet), padding) -> (weights' state, compiled or None)
        self._graphed = cudagraph.Graphs(compile=backend == "compile")  # on CUDA: each U-Net's graph
        self._graphed_controlnets = cudagraph.Graphs(backend == "compile", cudagraph.GraphedControlNet, 2 * self.KEEP)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        uncompiled = self._graphed.uncompiled()
        return (f"U-Net on {self.backend} ({self.why})"
                + (f"; torch.compile failed ({uncompiled[:200]}), the eager kernels are graphed" if uncompiled else "")
                + (f"; the last call ran torch: {self.fallback}" if self.fallback else ""))

    def for_unet(self, unet, residuals: bool = False):
        """What runs ``unet`` now; ``residuals``: the call adds a ControlNet's (on CUDA: inputs of its graph)."""
        device = precision.device_of(unet).type
        if self.backend in CUDA_ONLY and device == "cuda":
            found = self._graph(unet)
            failed = getattr(found, "failed", None)
            self.fallback = "FreeU is on (a graph would freeze its factors)" if found is unet else \
                f"its CUDA graph could not be recorded ({failed[:200]})" if failed else ""
            return found
        if self.backend != "openvino" or device != "cpu":
            return unet
        with self._lock:
            found = self._openvino(unet)
        self.fallback = "" if found is not unet else self.fallback
        return found

    def changed(self) -> None:
        """Announce weights written behind the pipeline's back (``Pipeline.weights_changed``: writes through ``.data``,
        ``load_state_dict``): every tensor is read again at the next call. LoRA changes need no word: the state
        a call checks holds each LoRA layer's adapters and scales."""
        self.version += 1

    def _openvino(self, unet):
        key = weights.state(unet, self.version)
        slot = (id(unet), key[-1])  # the convolutions' padding: A1111's Tiling is another graph, held beside
        held = self._compiled.pop(slot, None)
        if held is None or held.state != key:  # first call, or something changed since the last
            if any(v is not None for v in weights.freeu(unet)):
                if held is not None:
                    self._keep(slot, held)  # its state stays the last one checked: checked again next call
                self.fallback = "FreeU is on (OpenVINO converts no FFT)"
                return unet
            if held is None or held.base is None:  # first call; or after a failed conversion: are these new weights?
                digest, record = _record(unet, known := {})
                if held is None or digest != held.digest:
                    held = _Held(None, digest, record, known=known, version=self.version)
                    held.base = self._compile(unet, digest, held)
            if held.version != self.version:
                held.known.clear()  # writes through .data were announced: read every tensor again
                held.seen.clear()
            held.state, held.version = key, self.version
            found = held.seen.pop(key, None)  # a state met before (two LoRA sets alternating): no tensor read
            kept = [k for k, v in held.variants.items() if found is not None and v is found[0]]
            if kept:
                held.variants[kept[0]] = held.variants.pop(kept[0])  # the most recent again
            elif found is None or found[0] not in (held.base, None):  # new, or its variant was let go
                found = self._variant(unet, held)
            held.seen[key] = found
            while len(held.seen) > 2 * self.VARIANTS:
                del held.seen[next(iter(held.seen))]
            held.current, held.why = found
        self._keep(slot, held)
        self.fallback = held.why
        return unet if held.current is None else held.current

    def _variant(self, unet, held: _Held) -> tuple[Compiled | None, str]:
        """(what runs, why torch runs if it does): the converted weights where the module's are the same, else a
        copy with the weights that differ (LoRAs folded in, edited weights) patched in, kept for the next calls."""
        if held.base is None:
            return None, "its conversion to OpenVINO failed"
        tensors, fresh = weights.effective(unet)
        diff = weights.changed(tensors, held.record, held.known, fresh)
        if not diff:
            return held.base, ""
        name = frozenset((n, digest) for n, (_, digest) in diff.items())
        found = held.variants.pop(name, None)
        if found is None:
            model = patched(held.base.model, {n: t for n, (t, _) in diff.items()})
            if model is None:
                return None, "weights the conversion folds away differ (a bias or a norm: edited weights)"
            found = Compiled(unet, model, lambda: self._with_residuals(unet, held, patch=True))
        held.variants[name] = found  # now the most recent
        while len(held.variants) > self.VARIANTS:
            del held.variants[next(iter(held.variants))]
        return found, ""

    def _compile(self, unet, digest: str, held: _Held) -> Compiled | None:
        """The compiled U-Net for these weights (``digest``), or None with a warning when it cannot be converted."""
        try:
            return Compiled(unet, self._convert(unet, digest), lambda: self._with_residuals(unet, held))
        except Exception as e:  # noqa: BLE001  (an operation the converter lacks: torch runs it, as before)
            _warn("U-Net", e)
            return None

    def _with_residuals(self, unet, held: _Held, patch: bool = False) -> Compiled | None:
        """The compiled U-Net that takes a ControlNet's residuals (a second conversion, cached beside the first);
        ``patch``: with the weights that differ from the converted ones patched in, as ``_variant`` does."""
        with self._lock:
            try:
                xml = self._convert(unet, f"{held.digest}-residuals", residuals=True)
            except Exception as e:  # noqa: BLE001
                _warn("U-Net with a ControlNet's residuals", e)
                return None
            if not patch:
                return Compiled(unet, xml)
            tensors, fresh = weights.effective(unet)
            diff = weights.changed(tensors, held.record, held.known, fresh)
            model = patched(openvino_core().read_model(xml), {n: t for n, (t, _) in diff.items()})
            return None if model is None else Compiled(unet, model)

    def for_controlnet(self, net):
        """What runs the ControlNet ``net``: (x, t, context, hint) -> (down residuals, mid residual) at weight 1;
        on OpenVINO, converted once per set of weights (cached on disk as the U-Net is) and compiled per shape (an
        SDXL ControlNet with the pooled text and size numbers as inputs, as its U-Net); on CUDA, graphed as the U-Net."""
        if self.backend in CUDA_ONLY and precision.device_of(net).type == "cuda":
            with self._lock:
                found = self._graphed_controlnets.get(net, self.version)
            return found if found is not net else functools.partial(control_graph.run_torch, net)
        if self.backend != "openvino" or precision.device_of(net).type != "cpu":
            return functools.partial(control_graph.run_torch, net)
        with self._lock:
            state = weights.state(net, self.version)
            slot = (id(net), state[-1])  # the convolutions' padding: Tiling is a conversion of its own
            held = self._controlnets.pop(slot, None)
            if held is None or held[0] != state:
                try:
                    held = (state, control_graph.CompiledControlNet(net, self._convert(net, _record(net, {})[0])))
                except Exception as e:  # noqa: BLE001
                    _warn("ControlNet", e)
                    held = (state, None)
            self._controlnets[slot] = held  # the most recent
            while len(self._controlnets) > 2 * self.KEEP:
                del self._controlnets[next(iter(self._controlnets))]
        return held[1] or functools.partial(control_graph.run_torch, net)

    def _keep(self, slot: tuple, held: _Held) -> None:
        self._compiled[slot] = held  # now the most recent
        while len(self._compiled) > self.KEEP:
            del self._compiled[next(iter(self._compiled))]

    def _convert(self, unet, digest: str, residuals: bool = False) -> Path:
        """unet.xml for these weights (``digest``: their ``weights_hash``): from the disk cache, else
        converted (into it, or into a scratch folder for this process when the cache cannot be written)."""
        folder = cache_dir() / digest
        xml = folder / "unet.xml"
        if xml.is_file():
            cache.touch(folder)
            return xml
        need, free = memory.conversion_bytes(unet), memory.free_bytes(torch.device("cpu"))
        if free < need:  # refused, not killed by the OS halfway (_warn says so; torch runs)
            raise MemoryError(f"converting this {sum(p.numel() for p in unet.parameters()) / 1e9:.1f}B-parameter "
                              f"model needs about {need / 2**30:.1f} GiB of free RAM, and {free / 2**30:.1f} GiB is "
                              f"free; close other programs, or pass backend='torch' to skip the conversion")
        try:
            xml = convert(unet, folder, residuals)
        except OSError as e:  # a read-only home, a full disk: this process converts into a scratch folder
            raise_if_interrupted(e)  # not a Ctrl-C in disguise: that stops the call
            warnings.warn(f"cannot write the OpenVINO cache in {cache_dir()} ({e}); converting for this process "
                          f"only. Set $LATENTGEN_CACHE to a writable folder to convert once.", RuntimeWarning)
            scratch = Path(tempfile.mkdtemp(prefix="latentgen-openvino-"))
            atexit.register(shutil.rmtree, scratch, True)
            xml = convert(unet, scratch / "unet", residuals)
        else:
            cache.prune(keep=folder)  # least recently used first, down to $LATENTGEN_CACHE_GB
        self.conversions += 1
        return xml

    def _graph(self, unet):
        """The CUDA-graphed ``unet`` (``cudagraph.Graphs``: LoRAs folded into a twin's weights), or ``unet`` itself
        while FreeU is on."""
        with self._lock:
            return self._graphed.get(unet, self.version)
