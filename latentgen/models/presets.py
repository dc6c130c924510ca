"""Presets: a model family as data (architecture configs + generation defaults), read from pipelines/.

A preset is one JSON file, ``pipelines/<name>.json``::

    {"description": "...", "tokenizer": "clip-vit-large-patch14", "tokenizer_options": {"pad_token": "!"},
     "weights": null,
     "defaults": {"steps": 50, "guidance": 7.5, "width": 512, "height": 512, "scheduler": "pndm"},
     "unet": {...}, "vae": {...}, "text_encoder": {...}, "scheduler": {...}}

The four component entries are the diffusers / transformers ``config.json`` contents of
``UNet2DConditionModel``, ``AutoencoderKL``, ``CLIPTextModel`` and the scheduler; the sampler
*name* in ``defaults.scheduler`` picks the scheduler class. ``tokenizer_options`` (optional) are
``CLIPTokenizer`` arguments over the shipped files: SD 2.x pads with "!" (id 0), SD 1.x with its
end token. ``weights`` names a diffusers folder under ``weights/`` holding trained weights for this
architecture, or is null (random weights, for benchmarks); ``inpainting`` (optional) names a folder under
``weights/`` whose ``unet/`` is the model's 9-channel inpainting variant, which ``Pipeline.inpaint`` runs.
An SDXL preset adds ``text_encoder_2`` (``CLIPTextModelWithProjection``'s config) and ``tokenizer_2_options``
(its tokenizer, over the same files).
A new model family is a new file here, not new code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # latentgen/


def data_dir(name: str) -> Path:
    """Folder of project data (``pipelines`` or ``weights``), in a wheel or in a checkout.

    A wheel carries them inside the package as ``latentgen/_data/<name>``; a checkout or an
    editable install has them at the repository root, beside ``latentgen/``.
    """
    for root in (PACKAGE_DIR / "_data", PACKAGE_DIR.parent):
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(
        f"latentgen's data folder {name!r} is missing from {PACKAGE_DIR / '_data'} and "
        f"{PACKAGE_DIR.parent}; reinstall latentgen (pip install --force-reinstall latentgen)."
    )


@dataclass
class Defaults:
    """What a model generates when the caller does not say otherwise."""

    steps: int = 50
    guidance: float = 7.5
    width: int = 512
    height: int = 512
    scheduler: str | None = None  # a sampler name from latentgen.schedulers; None: the folder's own
    mask_blur: float = 4  # inpainting's feather, pixels inside the hole (A1111's default 4)
    preview: list | None = None  # (C + 1) x 3 latent -> RGB map of cheap previews (latentgen.vae.preview); None: SD's

    @classmethod
    def from_dict(cls, d: dict) -> "Defaults":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown defaults {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


@dataclass
class Preset:
    name: str
    description: str
    tokenizer: str  # folder name under pipelines/tokenizers/
    weights: str | None  # folder name under weights/, or None for random weights
    defaults: Defaults
    unet: dict = field(repr=False)
    vae: dict = field(repr=False)
    text_encoder: dict = field(repr=False)
    scheduler: dict = field(repr=False)
    tokenizer_options: dict = field(default_factory=dict)  # CLIPTokenizer arguments, e.g. {"pad_token": "!"}
    inpainting: str | None = None  # folder under weights/ with the 9-channel U-Net inpaint() runs (unet/)
    text_encoder_2: dict | None = field(default=None, repr=False)  # SDXL's second (CLIPTextModelWithProjection)
    tokenizer_2_options: dict = field(default_factory=dict)  # its tokenizer over the same files (bigG: "!" pads)

    @property
    def tokenizer_dir(self) -> Path:
        return data_dir("pipelines") / "tokenizers" / self.tokenizer


def list_presets() -> list[str]:
    return sorted(p.stem for p in data_dir("pipelines").glob("*.json"))


def load_preset(name: str) -> Preset:
    path = data_dir("pipelines") / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"model {name!r} is neither a diffusers folder nor a preset; "
            f"pass a folder holding model_index.json, or one of the presets {list_presets()}."
        )
    d = json.loads(path.read_text())
    return Preset(
        name=name,
        description=d.get("description", ""),
        tokenizer=d["tokenizer"],
        weights=d.get("weights"),
        defaults=Defaults.from_dict(d["defaults"]),
        unet=d["unet"],
        vae=d["vae"],
        text_encoder=d["text_encoder"],
        scheduler=d["scheduler"],
        tokenizer_options=d.get("tokenizer_options", {}),
        inpainting=d.get("inpainting"),
        text_encoder_2=d.get("text_encoder_2"),
        tokenizer_2_options=d.get("tokenizer_2_options", {}),
    )
