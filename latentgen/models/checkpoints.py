"""Single-file checkpoints: ``latentgen.load("model.safetensors")`` (or ``.ckpt`` / ``.pt``), the LDM
layout people share (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.*``),
and ``export``, which writes one from any model latentgen loads.

Reading, in order, everything checked before a weight is read:
  1. the file: ``.safetensors`` by its header; ``.ckpt`` / ``.pt`` only through
     ``torch.load(weights_only=True)``, which builds tensors and plain containers and runs no code of
     the file (a pickle that needs code is refused, saying how to convert it); ``state_dict`` nesting
     is unwrapped; complete EMA weights (``model_ema.*``) replace the U-Net's (the name says so);
  2. block numbers that diffusers' conversion script wrote for a model not shaped as SD are read
     back (``latentgen.models.ldm_script``);
  3. the family from the key names (``latentgen.models.ldm.family``): SD 1.x, SD 2.x, or a refusal naming
     what the file is (SDXL, SD3, Flux, a LoRA, a VAE, ...);
  4. the architecture: the configs latentgen's ``export`` stores in the header, else the preset in
     ``pipelines/`` closest to the file, updated with every size the tensor shapes fix
     (``latentgen.models.ldm.*_sizes``), with ``<stem>.yaml`` beside the file for attention heads and the
     VAE scale factor;
  5. the tensors, renamed by diffusers' ``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``,
     ``convert_ldm_clip_checkpoint`` and ``convert_open_clip_checkpoint``, into models built on the
     meta device (no random initialisation);
  6. the prediction type (``latentgen.models.prediction``), which also picks between presets of one
     architecture (``sd2``: epsilon, 512; ``sd21``: v, 768).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import ldm, ldm_script
from .ldm import UNET, VAE

SUFFIXES = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin")
HEADER = "latentgen.configs"  # header entry of exported files: JSON of the component configs


@dataclass
class Checkpoint:
    """A single file's tensors by name; the shapes are read first, the tensors on demand."""

    path: Path
    shapes: dict[str, tuple[int, ...]] = field(repr=False)
    metadata: dict[str, str] = field(repr=False)
    get: Callable[[str], torch.Tensor] = field(repr=False)
    ema: bool = False  # the U-Net tensors are the file's EMA weights

    def part(self, prefix: str) -> dict[str, tuple[int, ...]]:
        """Shapes of the tensors under ``prefix``, the prefix removed."""
        return {k[len(prefix):]: v for k, v in self.shapes.items() if k.startswith(prefix)}

    def tensors(self, prefix: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The tensors under ``prefix``, full names kept (what diffusers' converters expect); floating
        ones cast to ``dtype`` one by one as they are read (no second copy of the model in memory)."""
        out = {}
        for k in self.shapes:
            if k.startswith(prefix):
                t = self.get(k)
                out[k] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        return out


class _LightningCallback:
    """Inert stand-in for PyTorch Lightning's ModelCheckpoint, whose state the original SD ``.ckpt``
    files carry beside the weights: ``weights_only`` may build this empty class, nothing else."""


_LightningCallback.__module__ = "pytorch_lightning.callbacks.model_checkpoint"
_LightningCallback.__qualname__ = _LightningCallback.__name__ = "ModelCheckpoint"


def _inert_globals() -> list:
    """Globals a training checkpoint names that build data only: numpy scalars and dtypes (the
    step counter) and the Lightning callback stand-in. A1111's safe unpickler allows the same."""
    import numpy as np

    scalar = (np._core if hasattr(np, "_core") else np.core).multiarray.scalar  # numpy 2 / numpy 1
    dtypes = {type(np.dtype(t)) for t in "?bhilqBHILQefd"}
    return [_LightningCallback, np.dtype, *dtypes, scalar, (scalar, "numpy.core.multiarray.scalar")]


def _torch_file(path: Path, zipped: bool) -> dict[str, torch.Tensor]:
    """The tensors of a ``.ckpt`` / ``.pt`` file, through ``torch.load(weights_only=True)`` only."""
    from contextlib import nullcontext

    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    try:
        with allow(_inert_globals()) if allow else nullcontext():
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as e:
        try:
            needs = ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))) or "code"
        except Exception:  # noqa: BLE001 - only for the message
            needs = str(e).splitlines()[0][:200]
        raise ValueError(
            f"{path.name} is a pickle that needs code to load ({needs}); latentgen reads tensors only "
            f"(torch.load(weights_only=True)), so none of it ran. Convert it where you trust its source: "
            f"sd = torch.load(path, weights_only=False); safetensors.torch.save_file(sd.get('state_dict', sd), "
            f"'model.safetensors'), then load the .safetensors.") from None
    except (EOFError, RuntimeError, OSError, ValueError) as e:
        raise ValueError(f"{path.name} is not a readable checkpoint (truncated, or not a torch file): "
                         f"{str(e).splitlines()[0][:200]}") from None
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)} if isinstance(data, dict) else {}
    if not tensors:
        raise ValueError(f"{path.name} holds no tensors ({type(data).__name__}); it is not a model checkpoint.")
    return tensors


def _safetensors_file(path: Path) -> Checkpoint:
    """Shapes and metadata from the header; the data must cover what the header promises."""
    from safetensors import safe_open

    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size)) if 1 < size < 100_000_000 else None
        ends = [v["data_offsets"][1] for k, v in (header or {}).items() if k != "__metadata__"]
        if header is None or 8 + size + max(ends, default=0) > path.stat().st_size:
            raise ValueError("the data is shorter than its header says" if header else "no safetensors header")
        handle = safe_open(str(path), framework="pt")
    except Exception as e:  # noqa: BLE001 - json, safetensors and OS errors all mean the same here
        raise ValueError(f"{path.name} is not a readable .safetensors file (truncated, or not a checkpoint): "
                         f"{str(e)[:200]}") from None
    shapes = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    return Checkpoint(path, shapes, header.get("__metadata__") or {}, handle.get_tensor)


def _use_ema(ck: Checkpoint) -> Checkpoint:
    """Read the U-Net from ``model_ema.*`` (LDM names with the dots removed) when all of it is there."""
    unet = [k for k in ck.shapes if k.startswith(UNET)]
    alias = {k: "model_ema." + "".join(k.split(".")[1:]) for k in unet}
    if unet and all(a in ck.shapes for a in alias.values()):
        get = ck.get
        ck.get, ck.ema = (lambda k: get(alias.get(k, k))), True
    return ck


def sniff(path: str | Path) -> str:
    """A weights file's format from its structure, not its name or one byte: "safetensors" (an 8-byte header
    length under safetensors' 100 MB, then a JSON object), "torch zip" (torch.save's zip archive), or "pickle"
    (a pickle's protocol opcode and version, torch's legacy format). Anything else: ValueError."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(10)
    if head[8:10] == b'{"' and int.from_bytes(head[:8], "little") < 100_000_000:  # a cut file too: it says so
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "torch zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    raise ValueError(f"{path.name} is neither a .safetensors file nor a torch checkpoint (its first bytes are "
                     f"{head[:10]!r}): truncated, or not a weights file.")


def read(path: str | Path) -> Checkpoint:
    """Open a single-file checkpoint (format sniffed from its first bytes, not its name)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {str(path)!r} does not exist; pass the path of a "
                                f".safetensors, .ckpt or .pt file.")
    kind = sniff(path)
    if kind != "safetensors":
        tensors = _torch_file(path, zipped=kind == "torch zip")
        ck = Checkpoint(path, {k: tuple(v.shape) for k, v in tensors.items()}, {}, tensors.__getitem__)
    else:
        ck = _safetensors_file(path)
    return _renamed(_use_ema(ck), ldm_script.renames(ck.part(UNET), ck.part(VAE)))  # diffusers' script's numbering


def _renamed(ck: Checkpoint, names: dict[str, str]) -> Checkpoint:
    """``ck`` with tensors presented under new names (``names``: {new: old}); the rest unchanged."""
    if not names:
        return ck
    old = set(names.values())
    shapes = {**{k: v for k, v in ck.shapes.items() if k not in old}, **{n: ck.shapes[o] for n, o in names.items()}}
    get = ck.get
    return Checkpoint(ck.path, shapes, ck.metadata, lambda k: get(names.get(k, k)), ck.ema)


def read_vae(path: str | Path) -> Checkpoint:
    """A VAE file, its tensors presented under ``first_stage_model.``: LDM layout bare (``encoder.*``,
    ``decoder.*``), prefixed (``first_stage_model.*``, ``vae.*``), or diffusers layout."""
    ck = read(path)
    for prefix in (VAE, "vae.", ""):
        if prefix + "encoder.down.0.block.0.conv1.weight" in ck.shapes:
            get = ck.get
            shapes = {VAE + k: v for k, v in ck.part(prefix).items()}
            return Checkpoint(ck.path, shapes, ck.metadata, lambda k: get(prefix + k[len(VAE):]))
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in ck.shapes:  # diffusers layout: rename in memory
        levels = len(ldm._indices(ck.shapes, "encoder.down_blocks."))
        tensors = ldm.vae_to_ldm(ck.tensors(""), {"block_out_channels": [0] * levels})
        return Checkpoint(ck.path, {k: tuple(v.shape) for k, v in tensors.items()}, ck.metadata, tensors.__getitem__)
    raise ValueError(f"vae={str(path)!r} is not a VAE file (no encoder.*/decoder.* tensors in the LDM or "
                     f"diffusers layout); it holds {ldm.describe(ck.shapes)}.")


def yaml_hints(path: Path) -> dict:
    """A1111's ``<stem>.yaml`` beside the checkpoint, parsed (``latentgen.models.prediction.from_yaml``)."""
    from .prediction import from_yaml

    yml = path.with_suffix(".yaml")
    if not yml.is_file():
        return {}
    try:
        return from_yaml(yml.read_text())
    except Exception as e:  # noqa: BLE001 - YAML errors name the line; keep that
        raise ValueError(f"{yml.name} beside {path.name} is not a readable model yaml ({e}); "
                         f"fix or remove it.") from None


def header_configs(ck: Checkpoint) -> dict | None:
    """The component configs latentgen's export stored in the header, or None."""
    text = ck.metadata.get(HEADER)
    return json.loads(text) if text else None
