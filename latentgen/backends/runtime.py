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
module, offline) and caches the result on disk, keyed by a hash of the weights, so the next process loads it in
a fraction of a second. It stands in only for the exact weights it was converted from.

Weight changes are announced, not detected from the bytes at every call: whatever latentgen itself does to the
U-Net's weights (a LoRA loaded, scaled, fused, unfused or unloaded) calls ``Runtime.changed``, and so does
``Pipeline.weights_changed``, which a user calls after editing weights behind the pipeline's back (a write
through ``.data``, ``load_state_dict``). What a call still sees by itself, cheaply (``state``): parameters
added, removed, moved or cast (a LoRA injected by hand, ``unet.to(...)``), torch's counters of in-place writes
(``p.mul_(2)`` under ``no_grad``) and FreeU's factors. When any of that differs from the last call, the weights'
bytes decide once (``weights_hash``: ~2 s on SD 1.5, ~10 ms on the embedded model): the converted model runs
if they are the converted ones, else the torch module, so LoRAs and edits stay exact. The call contract is
the loop's: ``unet(x, t, encoder_hidden_states=context).sample`` with x (B, C, h, w) and context (B, 77 * k, D).
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

from . import cache, cudagraph
from .. import precision
from .cache import cache_dir
from .openvino import RECIPE, Compiled, convert

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
    """(backend, why): the one asked for (``requested``), else the rule's (``default``)."""
    return requested(backend, device) or default(device, exact, unet_config)


def requested(backend: str | None, device: torch.device) -> tuple[str, str] | None:
    """(backend, why) when one is asked for (``backend``, else ``$LATENTGEN_BACKEND``), checked against the device;
    None when none is: ``latentgen.load`` asks this before it reads the model, and ``default`` after."""
    if backend is None and not os.environ.get(ENV):
        return None
    backend, why = (backend, "as asked") if backend is not None else (os.environ[ENV], f"${ENV}")
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


def default(device: torch.device, exact: bool, unet_config: dict | None = None) -> tuple[str, str]:
    """(backend, why) by rule. On CUDA ``torch.compile``'s kernels as a CUDA graph, except where a graph of the
    eager kernels is the better deal: ``exact`` (``dtype="fp32"`` asked for: diffusers' numbers), a small U-Net
    (``unet_config``: under ``precision.WIDE`` channels, where a compile would never pay back its time) or no
    Triton. On CPUs OpenVINO where it is installed unless ``exact`` (then torch); torch elsewhere."""
    if device.type == "cuda":
        return _cuda_default(device, exact, precision.unet_width(unet_config))
    if device.type != "cpu":
        return "torch", f"{device.type}: torch kernels"
    if exact:
        return "torch", "fp32 asked for: torch, diffusers' arithmetic exactly"
    if not available():
        return "torch", "OpenVINO is not installed or does not import"
    return "openvino", "CPU: the U-Net compiled as one graph, faster than torch eager"


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


def _freeu(module: torch.nn.Module) -> tuple:  # FreeU's factors (``enable_freeu``): the output changes, not weights
    return tuple(getattr(b, k, None) for b in getattr(module, "up_blocks", ()) for k in ("s1", "s2", "b1", "b2"))


def _processors(module: torch.nn.Module) -> tuple:  # the attention processors' classes (what the trace records)
    return tuple(type(p).__name__ for p in getattr(module, "attn_processors", {}).values())


def state(module: torch.nn.Module, version: int) -> tuple:
    """What a call checks of a U-Net before it runs a converted or graphed copy, in microseconds per parameter:
    the announced ``version``, each parameter's name, storage and dtype, the sum of torch's in-place write
    counters, and FreeU's factors. Writes through ``.data`` move none of these: they are announced."""
    params = list(module.named_parameters())
    layout = tuple((n, p.data_ptr(), p.dtype) for n, p in params)
    return version, layout, sum(p._version for _, p in params), _freeu(module)


def unconvertible(module: torch.nn.Module) -> str:
    """Why the module's current computation cannot be a converted or graphed copy of its weights ("" when it
    can): a LoRA injected (peft's layers; their scales are Python numbers a trace or graph would freeze, and
    the base weights are what gets converted), or FreeU on (OpenVINO converts no FFT; its factors are numbers)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    if any(isinstance(m, BaseTunerLayer) for m in module.modules()):
        return "a LoRA is injected"
    if any(v is not None for v in _freeu(module)):
        return "FreeU is on (OpenVINO converts no FFT; a graph would freeze its factors)"
    return ""


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

    compiled: Compiled | None  # None: the conversion failed
    digest: str  # ``weights_hash`` of the weights converted (or tried)
    state: tuple  # ``state`` at the last check
    same: bool = True  # whether the weights at that check were the converted ones


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
        self.version = 0  # announced weight changes so far (``changed``)
        self._compiled: dict[int, _Held] = {}  # id(unet) -> what was converted, oldest first
        self._graphed: dict[int, tuple[tuple, cudagraph.Graphed]] = {}  # id(unet) -> ((layout, FreeU), graph)
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

    def changed(self) -> None:  # latentgen's LoRA calls and ``Pipeline.weights_changed``: the bytes decide next call
        self.version += 1

    def _openvino(self, unet):
        key = state(unet, self.version)
        held = self._compiled.pop(id(unet), None)
        if held is None or held.state != key:  # first call, or something changed since the last: the bytes decide
            if why := unconvertible(unet):
                if held is not None:
                    self._keep(unet, held)  # its state stays the last one checked: checked again next call
                self.fallback = why
                return unet
            digest = weights_hash(unet)
            if held is None or (held.compiled is None and held.digest != digest):  # new weights after a failure: try
                held = _Held(self._compile(unet, digest), digest, key)
            held.state, held.same = key, digest == held.digest
        self._keep(unet, held)
        if held.compiled is None:
            self.fallback = "its conversion to OpenVINO failed"
        elif not held.same:
            self.fallback = "its weights differ from the converted ones (a fused LoRA or edited weights)"
        else:
            return held.compiled
        return unet  # torch, exact

    def _compile(self, unet, digest: str) -> Compiled | None:
        """The compiled U-Net for these weights (``digest``), or None with a warning when it cannot be converted."""
        try:
            return Compiled(unet, self._convert(unet, digest))
        except Exception as e:  # noqa: BLE001  (an operation the converter lacks: torch runs it, as before)
            warnings.warn(f"the U-Net could not be converted to OpenVINO ({type(e).__name__}: {e}); it runs on "
                          f"torch (backend='torch').", RuntimeWarning)
            return None

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
        """The CUDA-graphed ``unet``, recorded anew when its parameters move, change dtype or are replaced (a graph
        reads addresses: values edited in place are read as they are); ``unet`` itself when ``unconvertible``."""
        _, layout, _, freeu = state(unet, self.version)
        with self._lock:
            held = self._graphed.get(id(unet))
            if held is not None and held[0] == (layout, freeu):
                return held[1]
            if unconvertible(unet):
                return unet
            held = self._graphed[id(unet)] = ((layout, freeu), cudagraph.Graphed(unet, compile=self.backend == "compile"))
        return held[1]
