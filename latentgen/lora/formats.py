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
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .. import checks, files
from ..models import checkpoints, ldm
from . import lycoris

PARTS = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}  # component -> kohya prefix
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def conv_targets(unet: torch.nn.Module) -> list[str]:
    """LoCon's extra U-Net targets (kohya's ``conv_dim``): the 3x3 convolutions of its ResNet blocks and
    down/up-samplers, by full module name (conv_in, conv_out and 1x1 shortcuts stay frozen)."""
    return [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
            and (".resnets." in n or "samplers." in n)]


@dataclass
class Lora:
    """A LoRA in memory: per component, module name -> (down (r, in, ...), up (out, r, ...), alpha)."""
    modules: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor, float]]] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

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


@lru_cache(maxsize=1)
def _clip_has_text_model() -> bool:
    """Whether this transformers' CLIPTextModel nests its layers under ``text_model`` (v4) or not (v5)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=8, hidden_size=4, intermediate_size=4, num_hidden_layers=1,
                         num_attention_heads=1, max_position_embeddings=4, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1)  # token ids inside the tiny vocabulary: no config warning
    return hasattr(CLIPTextModel(cfg), "text_model")


def save(lora: Lora, path: str | Path, layout: str = "diffusers", unet_config=None) -> Path:
    """Write ``lora`` as .safetensors in the ``"diffusers"`` (peft) or ``"kohya"`` (A1111) layout, atomically. With
    an SDXL ``unet_config``, the kohya layout is kohya's SDXL one: the U-Net in SGM names, ``lora_te1_``/``_te2_``."""
    tensors, meta = {}, {"format": "pt", **lora.metadata}
    if layout == "diffusers":
        adapter_meta = {}
        for part, mods in lora.modules.items():
            if part == "text_encoder" and not _clip_has_text_model():  # the names diffusers here expects
                mods = {m.removeprefix("text_model."): v for m, v in mods.items()}
            ranks = {m: d.shape[0] for m, (d, _, _) in mods.items()}
            alphas = {m: a for m, (_, _, a) in mods.items()}
            r, a0 = max(ranks.values()), next(iter(alphas.values()))
            adapter_meta.update({f"{part}.r": r, f"{part}.lora_alpha": a0, f"{part}.target_modules": sorted(mods),
                                 f"{part}.rank_pattern": {m: v for m, v in ranks.items() if v != r},
                                 f"{part}.alpha_pattern": {m: a for m, a in alphas.items() if a != a0}})
            for m, (down, up, _) in mods.items():
                tensors[f"{part}.{m}.lora_A.weight"], tensors[f"{part}.{m}.lora_B.weight"] = down, up
        meta["lora_adapter_metadata"] = json.dumps(adapter_meta, sort_keys=True)
    elif layout == "kohya":
        sgm = unet_config is not None and unet_config.get("addition_embed_type") == "text_time"
        for part, mods in lora.modules.items():
            for m, (down, up, alpha) in mods.items():
                k = _kohya_stem(part, m, unet_config if sgm else None)
                tensors[f"{k}.lora_down.weight"], tensors[f"{k}.lora_up.weight"] = down, up
                tensors[f"{k}.alpha"] = torch.tensor(float(alpha))
        dims = {d.shape[0] for mods in lora.modules.values() for d, _, _ in mods.values()}
        alphas = {a for mods in lora.modules.values() for _, _, a in mods.values()}
        meta.update({"ss_network_module": "networks.lora", "ss_network_dim": str(max(dims)),
                     "ss_network_alpha": str(max(alphas))})
    else:
        raise ValueError(f"layout={layout!r} is invalid: use 'diffusers' or 'kohya'.")
    return _atomic_save(tensors, Path(path), meta)


def _kohya_stem(part: str, module: str, sdxl_unet=None) -> str:
    """A module's kohya name; for SDXL (``sdxl_unet``: its U-Net config) the U-Net's in SGM names (input_blocks,
    ...), the first text encoder's as ``lora_te1_``, as kohya's SDXL scripts write them."""
    if sdxl_unet is None:
        return PARTS[part] + module.replace(".", "_")
    if part == "unet":
        up_attention = {i for i, t in enumerate(sdxl_unet["up_block_types"]) if "CrossAttn" in t}
        module = ldm.unet_key(module + ".weight", sdxl_unet["layers_per_block"], up_attention)[:-len(".weight")]
    return {**PARTS, "text_encoder": "lora_te1_"}[part] + module.replace(".", "_")


def file_prefix(part: str, model: torch.nn.Module) -> str:
    """Files name text-encoder modules ``text_model.encoder...`` (transformers 4's CLIPTextModel);
    transformers 5 dropped the ``text_model`` level, so it is added back for file names."""
    return "text_model." if part.startswith("text_encoder") and not hasattr(model, "text_model") else ""


def kohya_names(part: str, model: torch.nn.Module, names) -> dict[str, str]:
    """kohya stems -> module names in files, for ``names`` of ``part``: ``PARTS[part]`` + the name with ``_`` for
    ``.``; also ``lora_te1_`` for a first text encoder, and for an SDXL U-Net the SGM names (``ldm.unet_key``)."""
    out = {PARTS[part] + n.replace(".", "_"): n for n in names}
    if part == "text_encoder":
        out.update({"lora_te1_" + n.replace(".", "_"): n for n in names})
    if part.startswith("text_encoder"):  # also as trainers on transformers 5 name them: no text_model level
        out.update({k.replace("_text_model_", "_", 1): n for k, n in out.items() if "_text_model_encoder_" in k})
    config = getattr(model, "config", {})
    if part == "unet" and config.get("addition_embed_type") == "text_time":
        up_attention = {i for i, t in enumerate(config["up_block_types"]) if "CrossAttn" in t}
        for n in names:
            try:
                sgm = ldm.unet_key(n + ".weight", config["layers_per_block"], up_attention)[:-len(".weight")]
            except ValueError:  # no place in the LDM layout: no SGM name
                continue
            out["lora_unet_" + sgm.replace(".", "_")] = n
    return out


def _module_names(model: torch.nn.Module, part: str = "unet") -> dict[str, torch.nn.Module]:
    """Every Linear/Conv2d that a LoRA may target, by its name in files (peft wrappers seen through)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    prefix, out = file_prefix(part, model), {}
    for name, mod in model.named_modules():
        if isinstance(mod, BaseTunerLayer):
            out[prefix + name] = mod.get_base_layer()
        elif isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)) and ".base_layer" not in name \
                and ".lora_" not in name:
            out[prefix + name] = mod
    return out


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
    names = {part: _module_names(m, part) for part, m in models.items()}
    kohya = {part: kohya_names(part, models[part], ns) for part, ns in names.items()}
    adapter_meta = json.loads(meta.get("lora_adapter_metadata", "{}"))
    lora, unknown, groups = Lora(metadata=meta), [], {}
    for key in sd:  # group keys by (part, module): {suffix without ".weight": tensor}
        stem, _, kind = key.partition(".")
        hit = [(p, kohya[p][stem]) for p in kohya if stem in kohya[p]]  # kohya names: any suffix (LyCORIS's too)
        if not hit and key.endswith((".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector",
                                     ".lora_magnitude_vector.weight")):  # peft's DoRA magnitude: either
            part, rest = key.split(".", 1)
            module, kind = rest.removesuffix(".weight").rsplit(".", 1)
            if part.startswith("text_encoder") and part in names and module not in names[part]:
                module = "text_model." + module  # written by transformers 5: no text_model level
            hit = [(part, module)] if part in names and module in names[part] else []
        if not hit:
            unknown.append(key)
            continue
        groups.setdefault(hit[0], {})[kind.removesuffix(".weight")] = sd[key]
    bad = []
    for (part, module), g in groups.items():
        try:
            said = adapter_meta.get(f"{part}.alpha_pattern", {}).get(module, adapter_meta.get(f"{part}.lora_alpha"))
            w = names[part][module].weight
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
