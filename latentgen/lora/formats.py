"""LoRA files in the field's two layouts: reading, key mapping, writing (``latentgen.lora.adapters`` applies them).

LoRA (Hu et al. 2021, https://arxiv.org/abs/2106.09685) adds to a weight W (out, in) the low-rank
update dW = scale * (alpha / rank) * up @ down, with down (rank, in) and up (out, rank).

Layouts (both .safetensors):
  * diffusers/peft: ``unet.<module>.lora_A.weight`` (down), ``unet.<module>.lora_B.weight`` (up),
    ``text_encoder.<module>...``; rank/alpha in the header's ``lora_adapter_metadata`` (what
    diffusers' ``save_lora_weights`` writes; alpha = rank when absent).
  * kohya/A1111: ``lora_unet_<module with _ for .>.lora_down.weight``, ``.lora_up.weight``,
    ``.alpha``; ``lora_te_...`` for the text encoder; ``ss_*`` training metadata in the header. SDXL's:
    ``lora_te1_`` and ``lora_te2_`` for its two text encoders, and its U-Net in the SGM (LDM) module names kohya's
    SDXL scripts use (``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``), or in diffusers' names.
Kohya names are mapped back to module names through the model's own module list, so the
ambiguous underscores never need guessing.

A LoRA that needs its own sampling says so in its header, in either layout (``Recommendation``): an LCM-LoRA
from ``latentgen distill-lcm`` holds ``latentgen_kind="lcm"``, ``latentgen_sampler="lcm"``,
``latentgen_steps="4"``, ``latentgen_guidance="1"``; ``recommendation`` reads them back.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import checks, files
from ..models import checkpoints
from . import lycoris, names



@dataclass
class Lora:
    """A LoRA in memory: per component, module name -> (down (r, in, ...), up (out, r, ...), alpha)."""
    modules: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor, float]]] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    magnitudes: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # a trained DoRA's m (out,)
    raw: dict[str, dict[str, dict[str, torch.Tensor]]] = field(default_factory=dict)  # trained LoHa/LoKr modules:
    # {suffix: tensor} with LyCORIS's suffixes (``lycoris``), written as they are (kohya layout only)

    def delta(self, part: str, module: str) -> torch.Tensor:
        """dW of one module at scale 1: (alpha / rank) * up @ down, shaped like the module's weight."""
        down, up, alpha = self.modules[part][module]
        d = up.flatten(1).float() @ down.flatten(1).float() * (alpha / down.shape[0])
        return d.reshape(up.shape[0], *down.shape[1:]) if down.dim() == 4 else d


@dataclass(frozen=True)
class Recommendation:
    """How a LoRA should be sampled, as its header says: an LCM-LoRA draws in a few steps of the "lcm" sampler
    at guidance 1 (its teacher's guidance is distilled into it)."""
    kind: str  # what the LoRA is, e.g. "lcm" (latent consistency distillation)
    sampler: str  # a latentgen sampler name (``latentgen.schedulers.SAMPLERS``)
    steps: int
    guidance: float

    def metadata(self) -> dict[str, str]:
        """The header keys that carry it."""
        return {"latentgen_kind": self.kind, "latentgen_sampler": self.sampler,
                "latentgen_steps": str(self.steps), "latentgen_guidance": f"{self.guidance:g}"}

    def __str__(self) -> str:
        return f"scheduler={self.sampler}, steps={self.steps}, guidance={self.guidance:g}"


def recommendation(source: str | Path | dict[str, str]) -> Recommendation | None:
    """The sampler, steps and guidance a LoRA file recommends (``source``: its path, a shipped LoRA's name, or its
    header as read), or None when its header recommends nothing. A recommendation that does not parse (unknown
    sampler, steps not a whole number >= 1, guidance not a number >= 0) is ignored with a warning: it is advice,
    and the LoRA itself still loads."""
    from ..schedulers import SAMPLERS

    meta = source if isinstance(source, dict) else _read_safetensors(resolve(source), tensors=False)[0]
    if "latentgen_sampler" not in meta:
        return None
    try:
        return Recommendation(
            kind=meta.get("latentgen_kind", ""),
            sampler=checks.choice("latentgen_sampler", meta["latentgen_sampler"], list(SAMPLERS)),
            steps=checks.whole("latentgen_steps", int(meta.get("latentgen_steps", "")), 1),
            guidance=checks.number("latentgen_guidance", float(meta.get("latentgen_guidance", "")), minimum=0))
    except ValueError as e:
        said = {k: meta[k] for k in (f"latentgen_{f.name}" for f in fields(Recommendation)) if k in meta}
        warnings.warn(f"the LoRA's recommended sampling {said} is ignored: {e}")
        return None


def file_hash(path: str | Path) -> str:
    """A LoRA's id in PNG metadata (``Lora hashes``), as A1111 writes it and civitai looks it up ("AutoV3"): the
    header's ``sshs_model_hash`` where the trainer wrote one (kohya does), else kohya's hash of the tensors' bytes
    (``files.safetensors_sha256``); first 12 hex digits."""
    meta = _read_safetensors(Path(path), tensors=False)[0]
    return (meta.get("sshs_model_hash") or files.safetensors_sha256(path))[:12]


def _atomic_save(tensors: dict, path: Path, metadata: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return path


def save(lora: Lora, path: str | Path, layout: str = "diffusers", unet_config=None) -> Path:
    """Write ``lora`` as .safetensors in the ``"diffusers"`` (peft) or ``"kohya"`` (A1111) layout, atomically. With
    an SDXL ``unet_config``, the kohya layout is kohya's SDXL one: the U-Net in SGM names, ``lora_te1_``/``_te2_``."""
    tensors, meta = {}, {"format": "pt", **lora.metadata}
    if lora.raw and layout != "kohya":
        raise ValueError(f"layout={layout!r} is invalid for LyCORIS's LoHa and LoKr modules: use 'kohya', the layout "
                         f"A1111, ComfyUI and LyCORIS read them in.")
    if layout == "diffusers":
        adapter_meta = {}
        for part, mods in lora.modules.items():
            mags = lora.magnitudes.get(part, {})
            if part == "text_encoder" and not names.clip_has_text_model():  # the names diffusers here expects
                mods, mags = ({m.removeprefix("text_model."): v for m, v in d.items()} for d in (mods, mags))
            ranks = {m: d.shape[0] for m, (d, _, _) in mods.items()}
            alphas = {m: a for m, (_, _, a) in mods.items()}
            r, a0 = max(ranks.values()), next(iter(alphas.values()))
            adapter_meta.update({f"{part}.r": r, f"{part}.lora_alpha": a0, f"{part}.target_modules": sorted(mods),
                                 f"{part}.rank_pattern": {m: v for m, v in ranks.items() if v != r},
                                 f"{part}.alpha_pattern": {m: a for m, a in alphas.items() if a != a0},
                                 **({f"{part}.use_dora": True} if mags else {})})
            for m, (down, up, _) in mods.items():
                tensors[f"{part}.{m}.lora_A.weight"], tensors[f"{part}.{m}.lora_B.weight"] = down, up
                if m in mags:  # DoRA's m as peft holds it: (out,), a convolution's (1, out, 1, 1)
                    shape = (-1,) if down.dim() == 2 else (1, -1, 1, 1)
                    tensors[f"{part}.{m}.lora_magnitude_vector"] = mags[m].reshape(shape)
        meta["lora_adapter_metadata"] = json.dumps(adapter_meta, sort_keys=True)
    elif layout == "kohya":
        sgm = unet_config is not None and unet_config.get("addition_embed_type") == "text_time"
        for part, mods in lora.modules.items():
            for m, (down, up, alpha) in mods.items():
                k = names.kohya_stem(part, m, unet_config if sgm else None)
                tensors[f"{k}.lora_down.weight"], tensors[f"{k}.lora_up.weight"] = down, up
                tensors[f"{k}.alpha"] = torch.tensor(float(alpha))
                if m in lora.magnitudes.get(part, {}):  # as LyCORIS's dora_wd writes it: (out, 1[, 1, 1])
                    tensors[f"{k}.dora_scale"] = lora.magnitudes[part][m].reshape(-1, *[1] * (down.dim() - 1))
        for part, mods in lora.raw.items():
            for m, g in mods.items():
                tensors.update({f"{names.kohya_stem(part, m, unet_config if sgm else None)}.{s}": t
                                for s, t in g.items()})
        dims = {d.shape[0] for mods in lora.modules.values() for d, _, _ in mods.values()}
        alphas = {a for mods in lora.modules.values() for _, _, a in mods.values()}
        meta["ss_network_module"] = "lycoris.kohya" if lora.magnitudes or lora.raw else "networks.lora"
        if dims:  # (LyCORIS's modules keep the trainer's own)
            meta.update({"ss_network_dim": str(max(dims)), "ss_network_alpha": str(max(alphas))})
    else:
        raise ValueError(f"layout={layout!r} is invalid: use 'diffusers' or 'kohya'.")
    return _atomic_save(tensors, Path(path), meta)


def shipped_loras() -> dict[str, Path]:
    """The worked-example LoRAs shipped in weights/loras, by name (e.g. ``"purple"``)."""
    from ..models.presets import data_dir

    folder = data_dir("weights") / "loras"
    return {p.name[:-len(".safetensors")]: p for p in sorted(folder.glob("*.safetensors"))
            if not p.name.endswith(".kohya.safetensors")} if folder.is_dir() else {}


def resolve(path: str | Path) -> Path:
    """A LoRA file's path, or a bare name of a shipped LoRA (``"purple"``) as its file."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = shipped_loras()
    if p.suffix == "" and len(p.parts) == 1 and p.name in shipped:
        return shipped[p.name]
    raise FileNotFoundError(f"LoRA file {str(path)!r} does not exist; pass the path of a .safetensors file "
                            f"or the name of a shipped LoRA ({', '.join(shipped) or 'none'}).")


def _read_safetensors(path: Path, tensors: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a .safetensors file (``tensors=False``: its header only, no tensor read); a torch
    pickle or a damaged file is refused by name."""
    if (kind := checkpoints.sniff(path)) != "safetensors":
        raise ValueError(f"{path.name} is a {kind} file (.ckpt/.pt), not a .safetensors LoRA: latentgen reads LoRAs "
                         f"as safetensors only; convert it where you trust its source.")
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise ValueError(f"{str(path)!r} is not a .safetensors LoRA file ({e}).") from None


def read(path: str | Path, models: dict[str, torch.nn.Module]) -> tuple[Lora, list[str]]:
    """Read a LoRA file of either layout against ``models`` ({"unet": ..., "text_encoder": ...}).

    Returns the LoRA and the keys that name no module of these models. Raises ValueError, naming
    the modules, when known modules have other shapes (a LoRA made for another architecture).
    """
    path = resolve(path)
    meta, sd = _read_safetensors(path)
    found = {part: names.module_names(m, part) for part, m in models.items()}
    kohya = {part: names.kohya_names(part, models[part], ns) for part, ns in found.items()}
    adapter_meta = json.loads(meta.get("lora_adapter_metadata", "{}"))
    lora, unknown, groups = Lora(metadata=meta), [], {}
    for key in sd:  # group keys by (part, module): {suffix without ".weight": tensor}
        stem, _, kind = key.partition(".")
        hit = [(p, kohya[p][stem]) for p in kohya if stem in kohya[p]]  # kohya names: any suffix (LyCORIS's too)
        if not hit and key.endswith((".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector",
                                     ".lora_magnitude_vector.weight")):  # peft's DoRA magnitude: either
            part, rest = key.split(".", 1)
            module, kind = rest.removesuffix(".weight").rsplit(".", 1)
            if part.startswith("text_encoder") and part in found and module not in found[part]:
                module = "text_model." + module  # written by transformers 5: no text_model level
            hit = [(part, module)] if part in found and module in found[part] else []
        if not hit:
            unknown.append(key)
            continue
        groups.setdefault(hit[0], {})[kind.removesuffix(".weight")] = sd[key]
    bad = []
    for (part, module), g in groups.items():
        try:
            said = adapter_meta.get(f"{part}.alpha_pattern", {}).get(module, adapter_meta.get(f"{part}.lora_alpha"))
            w = found[part][module].weight
            down, up, alpha = lycoris.update(g, tuple(w.shape), None if said is None else float(said), w)
        except lycoris.Missing as e:
            unknown.append(f"{part}.{module} ({e})")
            continue
        except lycoris.Mismatch as e:
            bad.append(f"{part}.{module}: {e}")
            continue
        except ValueError as e:
            raise ValueError(f"{path.name}: {part}.{module}: {e}") from None
        lora.modules.setdefault(part, {})[module] = (down, up, alpha)
    if bad:
        raise ValueError(f"{path.name} was made for another architecture: {len(bad)} module(s) do not match, "
                         f"e.g. {'; '.join(bad[:5])}. Use a LoRA trained for this model.")
    if not lora.modules:
        raise ValueError(f"{path.name} has no LoRA weights for this model's modules; unknown keys: "
                         f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''}.")
    return lora, unknown
