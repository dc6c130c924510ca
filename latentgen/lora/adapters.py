"""LoRA adapters on a loaded model: several at once, each with its own scale, through peft.

``pipe.loras`` is a ``LoraAdapters`` over the pipeline's U-Net and text encoder; the pipeline's
``load_lora``, ``set_lora_scale``, ``fuse_lora``, ``unfuse_lora`` and ``unload_lora`` call it.
Files are read by ``latentgen.lora.formats`` (diffusers/peft and kohya layouts); the adapters themselves
are peft's (``inject_adapter_in_model``), so a loaded LoRA computes W x + scale * (alpha / r) B A x.
A LoRA whose header recommends a sampler, steps and guidance (an LCM-LoRA: ``formats.Recommendation``) keeps
that advice beside it (``recommended``), and loading it logs a one-line suggestion (logger ``latentgen.lora``).
"""

from __future__ import annotations

import itertools
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import checks
from . import formats
from . import names as lora_names


log = logging.getLogger("latentgen.lora")
_SERIALS = itertools.count(1)  # injections, numbered: a LoRA loaded again is never mistaken for the one before


SCALE_PARTS = ("text_encoder", "unet")  # the parts a scale may name: the text encoders (A1111's te) and the U-Net


def check_scale(scale, name: str = "scale") -> float | dict[str, float]:
    """A LoRA's scale: a number for all of it, or per part as diffusers' ``set_adapters`` takes them, {"text_encoder":
    TE, "unet": UNET} (a part left out: 1), or (TE, UNET) as A1111's ``<lora:NAME:TE:UNET>``. Returns the number, or
    the dict with both parts; a ValueError names what is wrong."""
    if isinstance(scale, (tuple, list)) and len(scale) == 2:
        scale = dict(zip(SCALE_PARTS, scale))
    if isinstance(scale, dict):
        if set(scale) - set(SCALE_PARTS):
            raise ValueError(f"{name}={scale!r} has parts {sorted(set(scale) - set(SCALE_PARTS))}: use the keys "
                             f"'text_encoder' and 'unet' (the text encoders' and the U-Net's scales).")
        return {p: check_scale(scale.get(p, 1.0), f"{name}[{p!r}]") for p in SCALE_PARTS}
    return checks.number(name, scale, fix="use a finite number such as scale=0.8 (0 turns it off), or per part "
                                           "{'text_encoder': 1.0, 'unet': 0.5}")


def part_scale(scale: float | dict[str, float], part: str) -> float:
    """The scale of ``part`` ("unet", "text_encoder", "text_encoder_2": a text encoder's) under ``scale``."""
    return scale if not isinstance(scale, dict) else scale["unet" if part == "unet" else "text_encoder"]


def _off(scale) -> bool:
    """Whether a scale (a number, a per-part dict or a tag's (TE, UNET)) is 0 everywhere."""
    return all(v == 0 for v in (scale.values() if isinstance(scale, dict) else scale if isinstance(scale, tuple)
                                else (scale,)))


def scale_text(scale: float | dict[str, float]) -> str:
    """A scale as PNG metadata gives it: ``0.8``, or per part ``TE:UNET`` as A1111's tags write them."""
    return f"{scale:g}" if not isinstance(scale, dict) else f"{scale['text_encoder']:g}:{scale['unet']:g}"


@dataclass
class Loaded:
    """One loaded LoRA: its scale (a number, or per part: ``check_scale``) and where it came from (its hash goes
    in PNG metadata)."""

    scale: float | dict[str, float]
    hash: str  # first 12 hex digits of the file's sha256
    path: str
    stamp: tuple = ()  # the file's (size, modification time) when it was read: a parked LoRA is reused while equal
    recommended: formats.Recommendation | None = None  # the sampler, steps, guidance its header recommends


def inject(model: torch.nn.Module, part: str, mods: dict, name: str) -> None:
    """Wrap ``model``'s modules named in ``mods`` ({module name in files: (down, up, alpha)}, ``formats.read``'s, for
    ``part``) in peft LoRA layers named ``name`` holding those weights, each with its own rank and alpha."""
    from peft import LoraConfig, inject_adapter_in_model

    cut = len(lora_names.file_prefix(part, model))
    mods = {m[cut:]: v for m, v in mods.items()}  # file names -> this model's module names
    ranks = {m: d.shape[0] for m, (d, _, _) in mods.items()}
    config = LoraConfig(r=max(ranks.values()), lora_alpha=1.0, target_modules=sorted(mods),
                        rank_pattern=ranks, alpha_pattern={m: a for m, (_, _, a) in mods.items()})
    with warnings.catch_warnings():  # peft warns that a second adapter is a second adapter
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        inject_adapter_in_model(config, model, adapter_name=name)
    serial = next(_SERIALS)
    for m, (down, up, _) in mods.items():
        layer = model.get_submodule(m)
        layer.lora_A[name].weight.data.copy_(down)
        layer.lora_B[name].weight.data.copy_(up)
        layer.lora_A[name].weight.latentgen_serial = serial  # one per injection: ``backends.weights.lora_state``


class LoraAdapters:
    """The LoRAs on ``models`` ({"unet": ..., "text_encoder": ...}, and SDXL's "text_encoder_2"), by name, in load
    order. The U-Net's backend reads their state from the layers themselves (adapters, scales, merged or not:
    ``latentgen.backends.weights``), so every change here is seen by the next call."""

    PARKED = 4  # inactive LoRAs kept injected (``park``)

    def __init__(self, models: dict[str, torch.nn.Module]):
        self.models = models
        self._tuners: list | None = None  # peft's layers in the models, found once per injection or unload
        self.loaded: dict[str, Loaded] = {}
        self.parked: dict[str, Loaded] = {}  # injected but inactive (``park``): a prompt tag's, kept for its next call
        self._fused: dict[int, tuple[torch.nn.Module, torch.Tensor]] = {}  # layer id -> (layer, original W)

    def __repr__(self) -> str:
        return f"LoraAdapters({ {n: v.scale for n, v in self.loaded.items()} })"  # per part: a dict

    def load(self, path: str | Path, name: str | None = None, scale: float = 1.0) -> str:
        """Add the LoRA in ``path`` (a file of either layout, or a shipped LoRA's name such as
        ``"purple"``) as adapter ``name`` at ``scale`` (a number, or per part: ``check_scale``); returns the name.
        Default name: the file's stem, dots as underscores (``purple.kohya.safetensors`` -> ``purple_kohya``). Keys
        that name no module of the model are reported in a warning."""
        scale = check_scale(scale)
        name = name or Path(path).stem.replace(".", "_")  # torch module names cannot hold dots
        if "." in name:
            raise ValueError(f"name={name!r} is invalid: LoRA names cannot contain '.', use e.g. "
                             f"{name.replace('.', '_')!r}.")
        if hasattr(torch.nn.ModuleDict(), name):  # peft keeps adapters in ModuleDicts: "half", "train", "cuda", ...
            raise ValueError(f"name={name!r} is invalid: it is a torch module's own attribute; pass another "
                             f"name=..., such as {name + '_lora'!r}.")
        if name in self.loaded:
            raise ValueError(f"a LoRA named {name!r} is already loaded; pass another name=..., or unload_lora({name!r}).")
        if self._fused:
            raise ValueError("LoRAs are fused: call unfuse_lora() before loading another.")
        path = formats.resolve(path)
        stamp = (path.stat().st_size, path.stat().st_mtime_ns)
        if name in self.parked:
            kept = self.parked.pop(name)
            if (kept.path, kept.stamp) == (str(path), stamp):  # the same file as before: active again, not read
                self.loaded[name] = Loaded(scale, kept.hash, kept.path, stamp, kept.recommended)
                self._apply_scales()
                return name
            self.parked[name] = kept
            self.unload(name)
        lora, unknown = formats.read(path, self.models)
        if unknown:
            warnings.warn(f"{Path(path).name}: {len(unknown)} key(s) match no module of this model and were "
                          f"ignored: {', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}")
        for part, mods in lora.modules.items():
            self._inject(part, mods, name)
        rec = formats.recommendation(lora.metadata)
        if rec is not None:
            log.info("LoRA %s (%s) recommends %s", name, rec.kind or "its header", rec)
        self.loaded[name] = Loaded(scale, formats.file_hash(path), str(path), stamp, rec)
        self._apply_scales()
        return name

    def park(self, name: str) -> None:
        """Make LoRA ``name`` inactive but keep it injected, so loading the same file again under that name (the
        next call with its prompt tag) costs no read and no injection: peft's injection is most of a tag's cost
        (about 0.15 s of the embedded model's 0.2 s call). The model computes as without it; the ``PARKED`` most
        recent are kept, older ones unloaded."""
        self._check_name(name)
        self.parked[name] = self.loaded.pop(name)
        while len(self.parked) > self.PARKED:
            self.unload(next(iter(self.parked)))
        self._apply_scales()

    def _inject(self, part: str, mods: dict, name: str) -> None:
        """Wrap ``part``'s target modules in peft LoRA layers named ``name`` holding the file's weights."""
        inject(self.models[part], part, mods, name)
        self._tuners = None

    def _layers(self) -> list:
        """peft's layers in the models (a walk of every module, done again only after an injection or an unload)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        if self._tuners is None:
            self._tuners = [(part, m) for part, model in self.models.items() for m in model.modules()
                            if isinstance(m, BaseTunerLayer)]
        return self._tuners

    def _apply_scales(self) -> None:
        for part, layer in self._layers():
            names = [n for n in self.loaded if n in layer.lora_A]
            layer.set_adapter(names)  # several adapters active at once
            for n in names:
                layer.set_scale(n, part_scale(self.loaded[n].scale, part))  # scaling = scale * alpha / r
            layer.requires_grad_(False)

    def _check_name(self, name: str) -> None:
        if name not in self.loaded:
            raise ValueError(f"no LoRA named {name!r} is loaded; loaded: {sorted(self.loaded) or 'none'}.")

    def set_scale(self, name: str, scale: float | dict[str, float]) -> None:
        """Change the scale of loaded LoRA ``name`` (0 turns it off; per part: ``check_scale``)."""
        self._check_name(name)
        scale = check_scale(scale)
        if self._fused:
            raise ValueError("LoRAs are fused: call unfuse_lora() before changing a scale.")
        self.loaded[name].scale = scale
        self._apply_scales()

    def fuse(self) -> None:
        """Add the active LoRAs into the base weights (faster sampling); ``unfuse`` undoes it exactly."""
        for _, layer in self._layers():
            if layer.active_adapters and not layer.merged:
                self._fused[id(layer)] = (layer, layer.get_base_layer().weight.data.clone())
                layer.merge(adapter_names=list(layer.active_adapters))

    def unfuse(self) -> None:
        """Restore the base weights saved by ``fuse``, bit for bit."""
        for layer, weight in self._fused.values():
            layer.get_base_layer().weight.data.copy_(weight)
            layer.merged_adapters.clear()
        self._fused = {}

    def bake(self) -> None:
        """Fold the active LoRAs into the base weights for good and take every adapter out (kohya's merge_lora; what
        ``latentgen export --lora`` writes): the models are then plain modules holding W + s B A. Not undone."""
        self.fuse()
        self._fused = {}  # nothing to restore: unload below keeps the merged weights
        self.unload()

    def unload(self, name: str | None = None) -> None:
        """Remove LoRA ``name`` (or all, parked ones too): the model is then exactly as loaded."""
        if name is not None and name not in self.parked:
            self._check_name(name)
        self.unfuse()
        for n in [name] if name else [*self.loaded, *self.parked]:
            for _, layer in self._layers():
                if n in layer.lora_A:
                    layer.delete_adapter(n)
            self.loaded.pop(n, None) if n in self.loaded else self.parked.pop(n)
        for model in self.models.values():  # unwrap layers with no adapter left
            for mname, mod in list(model.named_modules()):
                if hasattr(mod, "lora_A") and len(mod.lora_A) == 0:
                    parent, _, child = mname.rpartition(".")
                    setattr(model.get_submodule(parent) if parent else model, child, mod.get_base_layer())
        self._tuners = None
        self._apply_scales()

    def check_tags(self, prompt: str, negative_prompt: str | None, read: set[str]) -> None:
        """A call's ``<lora:NAME:WEIGHT>`` tags as the call would take them, before any image (``latentgen batch``
        checks every job so): other tags, tags in the negative prompt, weights that are not finite numbers
        (``tagged_loras``), names that are neither loaded, a shipped LoRA nor a file, and files that are not LoRAs of
        this model are refused. ``read``: the names whose files were read already (once each; added to)."""
        from ..text.prompts import tagged_loras

        _, tags = tagged_loras(str(prompt), negative_prompt)
        for name, _ in tags:
            if name not in self.loaded and name not in read:
                try:
                    formats.read(name, self.models)  # a missing file, another architecture: found now
                except (FileNotFoundError, ValueError) as e:
                    raise type(e)(f"prompt tag <lora:{name}>: {e}") from None
                read.add(name)

    def recommended(self, name: str | None = None, tags: tuple = ()) -> formats.Recommendation | None:
        """The sampler, steps and guidance that loaded LoRA ``name``'s header recommends (None if it says none).
        Without a name: the one recommendation of the LoRAs a call would run, or None when none of them recommends
        anything or two recommend different settings. Those LoRAs: the loaded ones with a scale != 0, with a
        prompt's ``tags`` ((name, weight), ``latentgen.text.prompts.tagged_loras``) over them: a tag's weight
        replaces a loaded LoRA's scale, and a tag naming one not loaded (a shipped name or a file) is read from
        its header (a name that does not resolve is left to the call to refuse)."""
        if name is not None:
            self._check_name(name)
            return self.loaded[name].recommended
        weights = {**{n: v.scale for n, v in self.loaded.items()}, **dict(tags)}
        recs = {self._header_advice(n) for n, w in weights.items() if not _off(w)} - {None}
        return recs.pop() if len(recs) == 1 else None

    def _header_advice(self, name: str) -> formats.Recommendation | None:
        """A loaded or parked LoRA's recommendation, or the header of the file or shipped LoRA ``name`` names."""
        kept = self.loaded.get(name) or self.parked.get(name)
        if kept is not None:
            return kept.recommended
        try:
            return formats.recommendation(name)
        except (FileNotFoundError, OSError, ValueError):
            return None

    def info(self) -> dict:
        """PNG metadata of the LoRAs in use, A1111 style: ``Lora hashes: "name: hash, ..."``."""
        if not self.loaded:
            return {}
        return {"Lora hashes": '"' + ", ".join(f"{n}: {v.hash}" for n, v in self.loaded.items()) + '"',
                "Lora scales": '"' + ", ".join(f"{n}: {scale_text(v.scale)}" for n, v in self.loaded.items()) + '"'}
