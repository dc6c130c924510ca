"""What a backend knows of a U-Net's weights: the cheap state a call checks, the LoRAs injected in it (peft's
layers) and the weights they amount to, and the per-tensor hashes that decide which of a converted copy's
weights still stand for the module's.

A LoRA layer computes W x + s B A x; folded, W' = W + s B A (peft's merge, adapter by adapter, in W's dtype).
A converted U-Net (``latentgen.backends.openvino``) with W' in place of W draws what the module draws with
the LoRA fused, so LoRAs, their scales and fused or edited weights run on the fast path: ``effective`` gives
every weight as the module now computes with it, and ``changed`` those whose bytes differ from a record.
"""

from __future__ import annotations

import copy
import hashlib

import torch


def freeu(module: torch.nn.Module) -> tuple:  # FreeU's factors (``enable_freeu``): the output changes, not weights
    return tuple(getattr(b, k, None) for b in getattr(module, "up_blocks", ()) for k in ("s1", "s2", "b1", "b2"))


def processors(module: torch.nn.Module) -> tuple:  # the attention processors' classes (what a trace records)
    return tuple(type(p).__name__ for p in getattr(module, "attn_processors", {}).values())


def padding(module: torch.nn.Module) -> tuple:
    """(path, mode) of each convolution that pads otherwise than with zeros (A1111's Tiling pads circularly:
    ``latentgen.canvas.seamless``), under the paths it has without LoRAs (a trace records the modes)."""
    return tuple((name.replace(".base_layer", ""), m.padding_mode) for name, m in module.named_modules()
                 if isinstance(m, torch.nn.Conv2d) and m.padding_mode != "zeros" and ".lora_" not in name)


def lora_layers(module: torch.nn.Module, active: bool = True) -> dict[str, torch.nn.Module]:
    """{module path: peft layer} of the LoRAs injected in ``module`` (``latentgen.lora.adapters``); ``active``: only
    layers with an active adapter (a parked one computes as its base layer)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name: m for name, m in module.named_modules()
            if isinstance(m, BaseTunerLayer) and (m.active_adapters or not active)}


def lora_state(layers: dict[str, torch.nn.Module]) -> tuple:
    """What the LoRA layers compute with, cheaply: per layer its active adapters, their scales, whether they are
    merged, and which injection each adapter's weights came from (``latentgen.lora.adapters`` numbers them; a
    LoRA injected by other means is told by the bytes of its A and B)."""
    def injection(a: torch.Tensor, b: torch.Tensor):
        return getattr(a, "latentgen_serial", None) or (tensor_hash(a), tensor_hash(b))

    return tuple((path, layer.merged, tuple((a, float(layer.scaling[a]), injection(layer.lora_A[a].weight,
                                                                                    layer.lora_B[a].weight))
                                            for a in layer.active_adapters if a in layer.lora_A))
                 for path, layer in layers.items())


def state(module: torch.nn.Module, version: int) -> tuple:
    """What a call checks of a U-Net before it runs a converted or graphed copy, in microseconds per parameter:
    the announced ``version``, each parameter's name, storage and dtype, the sum of torch's in-place write
    counters, FreeU's factors, the LoRA layers' ``lora_state`` and the convolutions' ``padding`` (last). Writes
    through ``.data`` move none of these: they are announced (``Pipeline.weights_changed``)."""
    params = list(module.named_parameters())
    layout = tuple((n, p.data_ptr(), p.dtype) for n, p in params)
    return (version, layout, sum(p._version for _, p in params), freeu(module), lora_state(lora_layers(module)),
            padding(module))


@torch.no_grad()
def effective(module: torch.nn.Module) -> tuple[dict[str, torch.Tensor], set[str]]:
    """({name: tensor} of every parameter as the module computes with it, under the names it has without LoRAs;
    the names of the tensors made here). A LoRA layer's weight is its base weight with each active, unmerged
    adapter's delta added, as peft's merge adds them (a merged one is in the base weight already); the adapters'
    own A and B are left out."""
    layers = lora_layers(module)
    out = {}
    for name, p in module.named_parameters():
        if ".lora_" not in name:  # peft's lora_A / lora_B / lora_embedding_*: folded below, not weights of their own
            out[name.replace(".base_layer.", ".")] = p.detach()
    for path, layer in layers.items():
        w = layer.get_base_layer().weight.detach()
        if not layer.merged:
            for a in layer.active_adapters:
                if a in layer.lora_A:
                    w = w + layer.get_delta_weight(a).to(w.dtype)
        out[f"{path}.weight"] = w
    return out, {f"{path}.weight" for path in layers}


def tensor_hash(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fingerprint(module: torch.nn.Module, recipe: str, tensors: dict[str, str]) -> str:
    """sha256 of a module's config, attention processors, convolutions' ``padding``, what converts it (``recipe``:
    the versions of torch, diffusers and the converter, and how it traces) and its tensors' hashes ({name:
    ``tensor_hash``}): the disk cache's key."""
    config = {k: v for k, v in module.config.items() if not k.startswith("_")}  # not "_name_or_path"
    pads = padding(module)
    h = hashlib.sha256(f"{recipe}|{config}|{processors(module)}{f'|{pads}' if pads else ''}".encode())
    for name in sorted(tensors):
        h.update(f"{name}|{tensors[name]}".encode())
    return h.hexdigest()


def changed(tensors: dict[str, torch.Tensor], record: dict[str, str], known: dict[str, tuple],
            fresh: set[str] = frozenset()) -> dict[str, tuple[torch.Tensor, str]]:
    """{name: (tensor, hash)} of the tensors whose bytes differ from ``record`` ({name: hash} of the converted
    weights). ``known`` remembers, per parameter, (storage, write count, hash) of the last look, so one neither
    moved nor written through torch since is not read again; clear it when writes through ``.data`` are announced.
    ``fresh``: names of tensors made anew at each look (a LoRA layer's folded weight), always hashed."""
    out = {}
    for name, t in tensors.items():
        key = (t.data_ptr(), t._version)
        seen = None if name in fresh else known.get(name)
        digest = seen[2] if seen is not None and seen[:2] == key else tensor_hash(t)
        if name not in fresh:
            known[name] = (*key, digest)
        if digest != record.get(name):
            out[name] = (t, digest)
    return out


def plain(unet):
    """``unet`` as convert() traces it: float32, and without LoRA layers (a copy with each peft layer replaced by
    its base layer: the base weights are what gets converted; ``patched`` puts the LoRAs in)."""
    layers = list(lora_layers(unet, active=False))
    if unet.dtype == torch.float32 and not layers:
        return unet.eval()
    twin = copy.deepcopy(unet).float().eval()
    for name in layers:
        parent, _, child = name.rpartition(".")
        owner = twin.get_submodule(parent) if parent else twin
        setattr(owner, child, getattr(owner, child).get_base_layer())
    return twin


def folded(module: torch.nn.Module, layers: dict[str, torch.nn.Module]) -> tuple[torch.nn.Module, dict]:
    """``module`` as a CUDA graph records it with its LoRAs folded in: a shallow twin in which each peft layer of
    ``layers`` ({path: layer}) is a copy of its base layer (a ``Linear`` or ``Conv2d``) with a weight tensor of
    its own, and every other module and parameter is the module's (the same tensors: edits in place are read).
    Returns (twin, {path: its copy of that layer's base layer}); ``fill`` writes W + s B A into their weights in
    place, so a graph recorded on the twin replays any LoRA state, scale or set of adapters on those layers without
    recording again. The other modules copied on the way keep the attributes they had (attention processors: part
    of the graphs' key)."""
    twin, weights_of = copy.copy(module), {}
    twin._modules = dict(module._modules)  # the twin's own children; the module's stay as they are
    for path, layer in layers.items():
        owner, *names, last = [twin, *path.split(".")]
        for name in names:  # each module on the way copied once, its children dict its own
            child = owner._modules[name]
            if not getattr(child, "_latentgen_twin", False):
                child = copy.copy(child)
                child._modules, child._latentgen_twin = dict(child._modules), True
                owner._modules[name] = child
            owner = child
        base = layer.get_base_layer()
        plain_layer = copy.copy(base)
        plain_layer._parameters = dict(base._parameters)
        with torch.inference_mode(False):  # a plain tensor, written in place later in or out of inference mode
            weight = torch.nn.Parameter(base.weight.detach().clone(), requires_grad=False)
        plain_layer.weight = weight
        owner._modules[last] = weights_of[path] = plain_layer
    return twin, weights_of


@torch.no_grad()
def fill(module: torch.nn.Module, twin_layers: dict[str, torch.nn.Module]) -> None:
    """Write each LoRA layer's weight as ``module`` computes with it now (W, or W + s B A per active, unmerged adapter,
    as ``effective`` adds them) into the weights of ``twin_layers`` ({path: layer} from ``folded``), in place and layer
    by layer (no second copy of them all): their addresses stay. Their padding follows the module's (Tiling)."""
    layers = lora_layers(module, active=False)
    for path, twin_layer in twin_layers.items():
        layer, t = layers[path], twin_layer.weight
        if isinstance(twin_layer, torch.nn.Conv2d):
            twin_layer.padding_mode = layer.get_base_layer().padding_mode
        t.copy_(layer.get_base_layer().weight)
        if not layer.merged:
            for a in layer.active_adapters:
                if a in layer.lora_A:
                    t.add_(layer.get_delta_weight(a).to(t.dtype))
