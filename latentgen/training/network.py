"""The adapters a LoRA trainer trains (finetune-lora, distill-lcm): put on the frozen model, new or from a file, and
read back as a ``latentgen.lora.formats.Lora`` to be written.

New adapters are peft's, named 'default', on the U-Net's attention projections (to_q, to_k, to_v, to_out.0),
with ``conv_rank`` also its 3x3 ResNet and sampler convolutions (LoCon, kohya's conv_dim), and optionally the text
encoders' (q_proj, k_proj, v_proj, out_proj). Their kind (``kohya_options.NetworkOptions``) is LoRA (Hu et al.
2021; down gaussian, up 0), DoRA on it (Liu et al. 2024, peft's use_dora: also a magnitude per output row), or
LyCORIS's LoHa (FedPara, Hyeon-Woo et al. 2022: (A1 B1) * (A2 B2)) or LoKr (Yeh et al. 2023: kron(W1, A2 B2)),
as peft implements them (one factor starts at 0). LoHa and LoKr are written with LyCORIS's tensor names, which
A1111, ComfyUI and LyCORIS read.
"""

from __future__ import annotations

import torch

from ..lora import formats as lora_io, lycoris, names as lora_names
from .configs import LoraOptions


def trained_lora(c, meta: dict) -> lora_io.Lora:
    """The adapter named 'default' in the components, as a ``lora.Lora`` (each module with its own alpha; a LoHa or
    LoKr as LyCORIS's tensors, peft's scale folded into the first factor, so alpha / dim is 1)."""
    out = lora_io.Lora(metadata={k: str(v) for k, v in meta.items()})
    for part, model in (("unet", c.unet), ("text_encoder", c.text_encoder), *text_2(c)):
        prefix = lora_names.file_prefix(part, model)
        for name, mod in model.named_modules():
            key = prefix + name
            if any("default" in getattr(mod, n, {}) for n in ("hada_w1_a", "lokr_w1", "lokr_w1_a")):  # LoHa, LoKr
                out.raw.setdefault(part, {})[key] = lycoris_tensors(mod)
            elif hasattr(mod, "lora_A") and "default" in mod.lora_A:
                down, up = (w["default"].weight.detach().float().cpu() for w in (mod.lora_A, mod.lora_B))
                out.modules.setdefault(part, {})[key] = (down, up, float(mod.lora_alpha["default"]))
                if "default" in getattr(mod, "lora_magnitude_vector", {}):  # DoRA's m
                    m = mod.lora_magnitude_vector["default"].weight.detach().float().cpu().flatten()
                    out.magnitudes.setdefault(part, {})[key] = m
    return out


def lycoris_tensors(mod) -> dict[str, torch.Tensor]:
    """A peft LoHa or LoKr layer's adapter 'default' as LyCORIS names its tensors (``hada_w1_a``, ``lokr_w1``,
    ...), peft's scale alpha / r folded into the first factor and ``alpha`` the low-rank dim (A1111's scale 1)."""
    names = (*lycoris.LOHA, "hada_t1", "hada_t2", *lycoris.LOKR)  # the suffixes latentgen's reader takes
    g = {n: getattr(mod, n)["default"].detach().float().cpu() for n in names if "default" in getattr(mod, n, {})}
    first = "hada_w1_a" if "hada_w1_a" in g else "lokr_w1" if "lokr_w1" in g else "lokr_w1_a"
    g[first] = g[first] * float(mod.scaling["default"])
    dim = next((g[n].shape[0] for n in ("hada_w1_b", "lokr_w2_b", "lokr_w1_b") if n in g), 1)
    return {**g, "alpha": torch.tensor(float(dim))}


def text_2(c) -> list[tuple[str, torch.nn.Module]]:
    """SDXL's second text encoder as a LoRA part, or nothing."""
    return [("text_encoder_2", c.xl.text_encoder_2)] if c.xl is not None else []


def attach_lora(c, cfg: LoraOptions, text_encoder: bool = False) -> None:
    """Freeze the model; add trainable adapters named 'default' of ``cfg``'s kind (seeded init), or those of its
    ``network_weights`` file, to the U-Net (and with ``text_encoder`` to the text encoders)."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig, inject_adapter_in_model

    encoders = [c.text_encoder, *(m for _, m in text_2(c))]  # SDXL: both
    for model in (c.unet, c.vae, *encoders):
        model.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    # peft itself wraps any torch module: diffusers' and transformers' add_adapter are version-gated
    # front ends to this same call (transformers 5.24 refuses peft < 0.22)
    if cfg.network_weights is not None:  # kohya's --network_weights: the file's modules, ranks, alphas, weights
        start_from(c, cfg.network_weights, text_encoder)
    else:
        alpha, conv_alpha = cfg.alphas()
        convs = lora_names.conv_targets(c.unet) if cfg.conv_rank else []  # LoCon: full names, own rank and alpha
        conv = ({n: cfg.conv_rank for n in convs}, {n: conv_alpha for n in convs})
        parts = [(c.unet, [*lora_names.UNET_TARGETS, *convs], *conv, {})]
        skips = [getattr(cfg, "clip_skip", 1) - 1] if c.xl is None else [1, 0]  # SDXL: CLIP-L's penultimate states
        parts += [(m, list(lora_names.TEXT_TARGETS), {}, {}, read_layers(m, k)) for m, k in zip(encoders, skips)
                  if text_encoder]
        algo = getattr(cfg, "algo", "lora")
        for model, targets, ranks, alphas, layers in parts:
            kw = dict(r=cfg.rank, target_modules=targets, rank_pattern=ranks, alpha_pattern=alphas, **layers)
            if algo == "lora":
                dora = getattr(cfg, "dora", False)
                config = LoraConfig(lora_alpha=alpha, init_lora_weights="gaussian", use_dora=dora, **kw)
            else:  # LyCORIS's kinds, as peft makes them
                config = {"loha": LoHaConfig, "lokr": LoKrConfig}[algo](alpha=alpha, **kw)
            inject_adapter_in_model(config, model, adapter_name="default")
    if cfg.gradient_checkpointing:
        c.unet.enable_gradient_checkpointing()
        for m in encoders if text_encoder else []:
            m.gradient_checkpointing_enable()


def read_layers(encoder, skip: int) -> dict:
    """peft's options that leave out a text encoder's last ``skip`` layers, whose states the loss never reads (clip
    skip; SDXL's CLIP-L): adapters there would learn nothing, and under DDP their unused gradients stop the run."""
    n = encoder.config.num_hidden_layers
    return {"layers_to_transform": list(range(n - skip)), "layers_pattern": "layers"} if skip else {}


def start_from(c, path, text_encoder: bool) -> None:
    """Adapters named 'default' holding the LoRA file ``path`` (any layout ``latentgen.lora.formats`` reads), on the
    modules it names with its ranks and alphas: training goes on from it. Its text-encoder adapters train only with
    ``text_encoder``; without, they stay as the file has them (and are written out again)."""
    import warnings

    from ..lora.adapters import inject

    models = {"unet": c.unet, "text_encoder": c.text_encoder, **dict(text_2(c))}
    lora, unknown = lora_io.read(path, models)
    if unknown:
        warnings.warn(f"network_weights {path}: {len(unknown)} key(s) match no module of this model and were "
                      f"ignored: {', '.join(unknown[:10])}")
    for part, mods in lora.modules.items():
        inject(models[part], part, mods, "default")
        for name, p in models[part].named_parameters():
            if ".lora_" in name:
                p.requires_grad_(part == "unet" or text_encoder)
