"""Where the U-Net runs: torch eager; on CPUs OpenVINO, the same network compiled as one graph; on CUDA
a CUDA graph (``latentgen.graphs``) of ``torch.compile``'s fused kernels, or of the eager ones.

Measured (2-core AMD EPYC with AVX512-BF16, torch 2.13 CPU, OpenVINO 2026.4; tests/benchmarks/):
  * the embedded model's U-Net call (8x8 latents, CFG batch 2, 0.42 GFLOP): torch eager ~13 ms, most of
    it per-op overhead (about 800 small ops); OpenVINO fp32 ~6.2 ms, its outputs within 3e-6 of torch's.
    TorchScript trace + freeze gave 8.6 ms, ``torch.compile`` (inductor, freezing) 8.2 ms after 43 s.
  * SD 1.5 at 512x512 (one CFG step, 1.61 TFLOP): torch bf16 + channels_last ~5.9 s, OpenVINO bf16 ~4.1 s,
    near the ~0.4 TFLOP/s that this CPU's bf16 matrix multiplies peak at.
Measured on an H200 (torch 2.11+cu130, fp16): SD 1.5's step 47 ms eager (the host launching ~1000 kernels
sets the pace), 10.6 ms as a CUDA graph ("cudagraph"), 6.7 ms as a graph of ``torch.compile``'s
kernels ("compile", the default there for SD-sized U-Nets, after a 62 s first compile; 10 s in later
processes).

``Runtime("openvino")`` converts the U-Net once (``latentgen.openvino_unet.convert``: a trace of the torch
module, offline) and caches the result on disk, keyed by a hash of the weights, so the next process loads it in
a fraction of a second. It stands in only for the exact weights it was converted from: whenever the
U-Net's parameters differ (a LoRA injected or fused, weights edited in place), ``for_unet`` hands back
the torch module, so LoRAs and edits stay exact. The call contract is the loop's:
``unet(x, t, encoder_hidden_states=context).sample`` with x (B, C, h, w) and context (B, 77 * k, D).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import importlib.util
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from . import cache, graphs, precision
from .cache import cache_dir
from .openvino_unet import RECIPE, Compiled, convert

BACKENDS = ("torch", "openvino", "cudagraph", "compile")
CPU_ONLY, CUDA_ONLY = ("openvino",), ("cudagraph", "compile")
ENV = "LATENTGEN_BACKEND"  # the default backend when load() is given none (one of BACKENDS)


@functools.cache
def available() -> bool:
    """Whether OpenVINO imports (it is a dependency; a platform without wheels, or an install whose native
    library fails to load, runs torch)."""
    try:
        import openvino  # noqa: F401
    except Exception:  # noqa: BLE001  (ImportError, or OSError from a missing shared library)
        return False
    return True


def compiler_missing(device: torch.device) -> str:
    """Why ``torch.compile`` cannot build CUDA kernels for ``device`` ("" when it can): inductor writes them
    in Triton, which needs the triton package and a GPU of compute capability 7.0 or later; and Dynamo
    must support this Python (not every torch supports the newest Python, or free-threaded builds)."""
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python"
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    if torch.cuda.is_available() and torch.cuda.get_device_capability(device) < (7, 0):
        return f"{torch.cuda.get_device_name(device)} is older than Triton supports (compute capability < 7.0)"
    return ""


def choose(backend: str | None, device: torch.device, exact: bool, unet_config: dict | None = None) -> tuple[str, str]:
    """(backend, why): the one asked for, else ``$LATENTGEN_BACKEND``, else by rule. On CUDA
    ``torch.compile``'s kernels as a CUDA graph, except where a graph of the eager kernels is the better
    deal: ``exact`` (``dtype="fp32"`` asked for: diffusers' numbers), a small U-Net (``unet_config``: under
    ``precision.WIDE`` channels, where a compile would never pay back its time) or no Triton. On CPUs
    OpenVINO where it is installed unless ``exact`` (then torch); torch elsewhere."""
    if backend is None and os.environ.get(ENV):
        backend, why = os.environ[ENV], f"${ENV}"
    elif backend is None:
        if device.type == "cuda":
            return _cuda_default(device, exact, precision.unet_width(unet_config))
        if device.type != "cpu":
            return "torch", f"{device.type}: torch kernels"
        if exact:
            return "torch", "fp32 asked for: torch, diffusers' arithmetic exactly"
        if not available():
            return "torch", "OpenVINO is not installed or does not import"
        return "openvino", "CPU: the U-Net compiled as one graph, faster than torch eager"
    else:
        why = "as asked"
    name = f"backend={backend!r} ({why})"
    unset = f" (or unset ${ENV})" if why.startswith("$") else ""
    if backend not in BACKENDS:
        raise ValueError(f"{name} is not supported; use one of {', '.join(map(repr, BACKENDS))}{unset}.")
    if backend in CPU_ONLY and device.type != "cpu":
        raise ValueError(f"{name} runs on the CPU, but the model is on {device}; use backend='torch'{unset}.")
    if backend in CUDA_ONLY and device.type != "cuda":
        raise ValueError(f"{name} runs on CUDA GPUs, but the model is on {device}; use backend='torch'"
                         + (" or 'openvino'" if device.type == "cpu" else "") + f"{unset}.")
    if backend == "openvino" and not available():
        raise ValueError(f"{name} needs the openvino package, and it does not import: `pip install openvino`, or use "
                         f"backend='torch'{unset}.")
    if backend == "openvino":
        cache.limit_bytes()  # a bad $LATENTGEN_CACHE_GB fails now, not after a conversion
    return backend, why


def _cuda_default(device: torch.device, exact: bool, width: int) -> tuple[str, str]:
    graph = "CUDA: the U-Net's eager kernels replayed as one CUDA graph per step"
    if exact:
        return "cudagraph", f"{graph} (fp32 asked for: diffusers' arithmetic exactly)"
    if width < precision.WIDE:
        return "cudagraph", f"{graph} (a small U-Net, {width} wide: compiling would not pay back its time)"
    if missing := compiler_missing(device):
        return "cudagraph", f"{graph} ({missing}, so torch.compile cannot run)"
    return "compile", ("CUDA: torch.compile's fused kernels replayed as one CUDA graph per step; the first call "
                       "per image size compiles (about a minute; seconds in later processes, from inductor's cache)")


_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}  # item size -> integer of that size


def _freeu(module: torch.nn.Module) -> tuple:
    """FreeU's factors on the up blocks (diffusers' ``enable_freeu``): they change the output, not the weights."""
    return tuple(getattr(b, k, None) for b in getattr(module, "up_blocks", ()) for k in ("s1", "s2", "b1", "b2"))


def _processors(module: torch.nn.Module) -> tuple:
    """The attention processors' classes (what the trace records of them)."""
    return tuple(type(p).__name__ for p in getattr(module, "attn_processors", {}).values())


def identity(module: torch.nn.Module) -> tuple[tuple, torch.Tensor, tuple]:
    """(layout, sums, versions) of a module's current weights. layout: each parameter's name, storage and
    dtype, and FreeU's factors. sums: the sum of each parameter's bit patterns as integers modulo 2**32,
    which any one changed element changes, even one written through ``.data``; exact and in any order the
    same, ~0.8 s on SD 1.5's bf16 U-Net and ~2 ms on the embedded one, once per call (float64 sums of the
    values took 0.65-1.4 s on SD 1.5). versions: torch's counters of in-place writes (not through
    ``.data``), for the edits a wrapped sum cannot see (a tensor scaled by a power of two, signs flipped in
    pairs, values permuted): ``Runtime`` then compares the weights' bytes."""
    params = list(module.named_parameters())
    sums = torch.stack([p.detach().view(_BITS[p.element_size()]).sum(dtype=torch.int32) for _, p in params])
    layout = (tuple((n, p.data_ptr(), p.dtype) for n, p in params), _freeu(module))
    return layout, sums, tuple(p._version for _, p in params)


def same(a: tuple, b: tuple) -> bool:
    """Whether two identities have the same layout and sums (their versions aside)."""
    return a[0] == b[0] and torch.equal(a[1], b[1])


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 of the weights' names, dtypes, shapes and bytes, with the config, the attention processors and
    the versions of what traces and converts them (torch, diffusers, OpenVINO)."""
    import diffusers
    import openvino

    config = {k: v for k, v in module.config.items() if not k.startswith("_")}  # not "_name_or_path"
    versions = f"{openvino.__version__}|{torch.__version__}|{diffusers.__version__}"
    h = hashlib.sha256(f"{versions}|{RECIPE}|{config}|{_processors(module)}".encode())
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{t.numel()}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class _Held:
    """What ``Runtime`` keeps per U-Net it converted."""

    identity: tuple  # ``identity`` of the weights converted (versions updated when the bytes were found equal)
    compiled: Compiled | None  # None: the conversion failed
    digest: str  # their ``weights_hash``
    bad: tuple | None = None  # versions at which the bytes were found to differ from the converted ones


class Runtime:
    """The backend of a pipeline. ``for_unet(unet)`` is what the loop calls: the compiled U-Net while
    ``unet``'s weights are those it was compiled from, else ``unet`` itself (torch). Calls of one compiled
    U-Net from several threads take turns (they share its infer requests or graph buffers)."""

    KEEP = 2  # U-Nets held compiled (a swapped-out one is let go, with its OpenVINO model)

    def __init__(self, backend: str = "torch", why: str = "as asked"):
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not supported; use one of {', '.join(map(repr, BACKENDS))}.")
        self.backend, self.why = backend, why
        self.conversions = 0  # conversions this runtime made (0 when every U-Net came from the disk cache)
        self.fallback = ""  # why the last call ran torch instead (weights changed, a failed conversion), if it did
        self._compiled: dict[int, _Held] = {}  # id(unet) -> what was converted, oldest first
        self._graphed: dict[int, tuple[tuple, graphs.Graphed]] = {}
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        uncompiled = next((g.uncompiled for _, g in self._graphed.values() if g.uncompiled), "")
        return (f"U-Net on {self.backend} ({self.why})"
                + (f"; torch.compile failed ({uncompiled[:200]}), the eager kernels are graphed" if uncompiled else "")
                + (f"; the last call ran torch: {self.fallback}" if self.fallback else ""))

    def for_unet(self, unet):
        device = precision.device_of(unet).type
        if self.backend in CUDA_ONLY and device == "cuda":
            return self._graph(unet)
        if self.backend != "openvino" or device != "cpu":
            return unet
        with self._lock:
            found = self._openvino(unet)
        self.fallback = "" if found is not unet else self.fallback
        return found

    def _openvino(self, unet):
        key = identity(unet)
        held = self._compiled.pop(id(unet), None)
        if held is not None and held.compiled is None and not same(held.identity, key):
            held = None  # the weights changed since a failed conversion: try these
        if held is None and any("lora" in name for name, *_ in key[0][0]):
            self.fallback = "a LoRA is injected"
            return unet  # the base weights are what gets converted, never a LoRA's
        if held is None and any(v is not None for v in key[0][1]):
            self.fallback = "FreeU is on (OpenVINO converts no FFT)"
            return unet
        if held is None:
            held = _Held(key, *self._compile(unet))
        self._keep(unet, held)
        if held.compiled is not None and same(held.identity, key) and key[2] not in (held.identity[2], held.bad):
            # written in place since: the sums agree, but some edits wrap out of them; the bytes decide, once
            if weights_hash(unet) == held.digest:
                held.identity = key
            else:
                held.bad = key[2]
        if held.compiled is None:
            self.fallback = "its conversion to OpenVINO failed"
        elif not same(held.identity, key) or key[2] == held.bad:
            self.fallback = "its weights differ from the converted ones (a LoRA, fused or edited weights, FreeU)"
        else:
            return held.compiled
        return unet  # torch, exact

    def _compile(self, unet) -> tuple[Compiled | None, str]:
        """(the compiled U-Net, or None with a warning when it cannot be converted; its weights' sha256)."""
        digest = weights_hash(unet)
        try:
            return Compiled(unet, self._convert(unet, digest)), digest
        except Exception as e:  # noqa: BLE001  (an operation the converter lacks: torch runs it, as before)
            warnings.warn(f"the U-Net could not be converted to OpenVINO ({type(e).__name__}: {e}); it runs on "
                          f"torch (backend='torch').", RuntimeWarning)
            return None, digest

    def _keep(self, unet, held: _Held) -> None:
        self._compiled[id(unet)] = held  # now the most recent
        while len(self._compiled) > self.KEEP:
            del self._compiled[next(iter(self._compiled))]

    def _convert(self, unet, digest: str) -> Path:
        """unet.xml for these weights (``digest``: their ``weights_hash``): from the disk cache, else
        converted (into it, or into a scratch folder for this process when the cache cannot be written)."""
        folder = cache_dir() / digest
        xml = folder / "unet.xml"
        if xml.is_file():
            cache.touch(folder)
            return xml
        try:
            xml = convert(unet, folder)
        except OSError as e:  # a read-only home, a full disk: this process converts into a scratch folder
            warnings.warn(f"cannot write the OpenVINO cache in {cache_dir()} ({e}); converting for this process "
                          f"only. Set $LATENTGEN_CACHE to a writable folder to convert once.", RuntimeWarning)
            scratch = Path(tempfile.mkdtemp(prefix="latentgen-openvino-"))
            atexit.register(shutil.rmtree, scratch, True)
            xml = convert(unet, scratch / "unet")
        else:
            cache.prune(keep=folder)  # least recently used first, down to $LATENTGEN_CACHE_GB
        self.conversions += 1
        return xml

    def _graph(self, unet):
        """The CUDA-graphed ``unet``, recorded anew when its parameters move, change dtype or are replaced
        (their addresses are what a graph reads); ``unet`` itself while a LoRA is injected or FreeU is on."""
        layout = tuple((n, p.data_ptr(), p.dtype) for n, p in unet.named_parameters())
        if any("lora" in name for name, *_ in layout) or any(v is not None for v in _freeu(unet)):
            return unet  # FreeU's factors are Python numbers too
        with self._lock:
            held = self._graphed.get(id(unet))
            if held is None or held[0] != layout:
                held = self._graphed[id(unet)] = (layout, graphs.Graphed(unet, compile=self.backend == "compile"))
        return held[1]
