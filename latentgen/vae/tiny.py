"""Tiny autoencoders (TAESD, Bohan 2023, https://github.com/madebyollin/taesd) as diffusers' ``AutoencoderTiny``.

    vae = latentgen.load_tiny_vae("taesd_decoder.safetensors")   # or a diffusers folder ("taesd/")
    pipe.vae = vae              # decodes (and, with an encoder, encodes for img2img) instead of the full VAE
    pipe.preview_vae = vae      # or only the live previews (``Pipeline.preview``, method "tiny")

A TAESD is distilled from a model family's VAE: it reads the latents the U-Net sees (already scaled, so its
``scaling_factor`` is 1) and draws pixels in [-1, 1]; 64 channels at every level, so it decodes in a fraction
of the full VAE's time, a little blurrier. What it reads:

* a diffusers folder (``config.json`` naming ``AutoencoderTiny``, as ``madebyollin/taesd`` on the Hub);
* one file in diffusers' layout (``encoder.layers.*``, ``decoder.layers.*``);
* the published part files, ``taesd_decoder.safetensors`` / ``.pth`` and ``taesd_encoder.*`` (ComfyUI's
  ``vae_approx/``, A1111's ``VAE-taesd/``): ``nn.Sequential`` indices, the decoder's shifted by one by its
  leading ``Clamp`` (as diffusers' ``convert_tiny_autoencoder_to_diffusers.py`` renames them). Either part's
  sibling file (``*_decoder`` <-> ``*_encoder``) is read too when it is there. A decoder without an encoder
  decodes only: img2img and inpainting refuse it (``check_encoder``), before any work.

``latent_channels`` (4 for SD 1.x/2.x/XL, 16 for SD3/Flux) is read from the tensors. The name
``"default-tiny-vae"`` is the embedded model's own, shipped in ``weights/`` (trained by ``latentgen distill-vae``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderTiny

from ..models import checkpoints
from . import SHIPPED, resolve  # noqa: F401 - resolve: the name of the shipped one, torch-free


def is_tiny(path: str | Path) -> bool:
    """Whether ``path`` holds a tiny autoencoder (by its config or its tensor names, no weights read)."""
    path = resolve(path)
    if path.is_dir():
        cfg = path / "config.json"
        return cfg.is_file() and json.loads(cfg.read_text()).get("_class_name") == "AutoencoderTiny"
    if not path.is_file() or path.suffix.lower() not in checkpoints.SUFFIXES:
        return False
    try:
        return _part_of(checkpoints.read(path).shapes) is not None
    except ValueError:
        return False


def is_loaded(vae) -> bool:
    """Whether the module ``vae`` is a tiny autoencoder."""
    return isinstance(vae, AutoencoderTiny)


def _part_of(shapes: dict[str, tuple]) -> str | None:
    """"both" (diffusers' layout), "decoder" or "encoder" (a TAESD part file), or None."""
    if "decoder.layers.0.weight" in shapes or "encoder.layers.0.weight" in shapes:
        return "both"
    first = shapes.get("1.weight")
    if "0.weight" not in shapes and first is not None and len(first) == 4:  # index 0 is the Clamp
        return "decoder"
    zero = shapes.get("0.weight")
    if zero is not None and len(zero) == 4 and zero[1] == 3:  # conv(3 -> 64) on RGB
        return "encoder"
    return None


def _sibling(path: Path, part: str) -> Path | None:
    other = {"decoder": "encoder", "encoder": "decoder"}[part]
    if part not in path.stem:
        return None
    stem = path.stem.replace(part, other)
    for suffix in (path.suffix, *checkpoints.SUFFIXES):
        p = path.with_name(stem + suffix)
        if p.is_file():
            return p
    return None


def _diffusers_state(path: Path) -> dict[str, torch.Tensor]:
    """A file's tensors (and its sibling part's) renamed to ``AutoencoderTiny``'s state dict."""
    ck = checkpoints.read(path)
    part = _part_of(ck.shapes)
    if part is None:
        raise ValueError(f"vae={str(path)!r} is not a tiny autoencoder (TAESD) file: it has neither "
                         f"encoder.layers.*/decoder.layers.* tensors nor the numbered layers of taesd_decoder/"
                         f"taesd_encoder files; it holds {sorted(ck.shapes)[:4]}...")
    if part == "both":
        return ck.tensors("")
    parts = [(ck, part)]
    other = _sibling(path, part)
    if other is not None:
        oc = checkpoints.read(other)
        parts.append((oc, _part_of(oc.shapes)))
    state = {}
    for c, which in parts:
        if which not in ("decoder", "encoder"):
            continue
        for k, v in c.tensors("").items():
            i, rest = k.split(".", 1)
            index = int(i) - 1 if which == "decoder" else int(i)  # the decoder's Clamp at 0 has no weights
            state[f"{which}.layers.{index}.{rest}"] = v
    return state

class NoEncoder(torch.nn.Module):
    """Stands in for a tiny VAE's missing encoder: calling it says what to do."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def forward(self, x):
        raise ValueError(no_encoder_message(self.path))


def no_encoder_message(path) -> str:
    return (f"the tiny VAE {Path(path).name} is a decoder only: encoding a picture (img2img, inpainting) needs "
            f"its encoder; put taesd_encoder.safetensors beside it, or load the model with its full VAE.")


def check_encoder(vae, call: str) -> None:
    """Refuse ``call`` (img2img, inpaint, ...) up front when ``vae`` cannot encode a picture."""
    enc = getattr(vae, "encoder", None)
    if isinstance(enc, NoEncoder):
        raise ValueError(f"{call}: " + no_encoder_message(enc.path))


def load(path: str | Path, *, device=None, dtype: torch.dtype | None = None) -> AutoencoderTiny:
    """A tiny autoencoder from a diffusers folder or a file (see the module docstring), or ``"default-tiny-vae"``
    (the embedded model's), in eval mode."""
    path = resolve(path)
    if not path.exists():
        raise FileNotFoundError(f"tiny VAE {str(path)!r} does not exist; pass a taesd_decoder.safetensors file, "
                                f"a diffusers folder holding AutoencoderTiny's config.json, or {SHIPPED!r} "
                                f"(the embedded model's).")
    if path.is_dir():
        if not is_tiny(path):
            raise ValueError(f"{str(path)!r} is not an AutoencoderTiny folder (its config.json's _class_name "
                             f"must be AutoencoderTiny).")
        vae = AutoencoderTiny.from_pretrained(path, local_files_only=True)
    else:
        state = _diffusers_state(path)
        first = state.get("decoder.layers.0.weight")  # (64, latent_channels, 3, 3)
        if first is None:
            raise ValueError(f"vae={str(path)!r}: a tiny VAE needs its decoder; put taesd_decoder.safetensors "
                             f"beside this encoder, or pass the decoder file.")
        vae = AutoencoderTiny(latent_channels=first.shape[1])
        missing = vae.load_state_dict(state, strict=False).missing_keys
        wrong = [k for k in missing if not k.startswith(("encoder.", "decoder."))]
        if wrong or any(k.startswith("decoder.") for k in missing):  # a decoder cut short
            raise ValueError(f"vae={str(path)!r}: a tiny VAE needs its decoder; missing {missing[:4]}...")
        if any(k.startswith("encoder.") for k in missing):
            vae.encoder = NoEncoder(path)
    return vae.to(device=device, dtype=dtype).eval().requires_grad_(False)
