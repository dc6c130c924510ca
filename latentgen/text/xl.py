"""SDXL's text side: two text encoders, their hidden states side by side, a pooled embedding and the size
conditioning (Podell et al. 2023, "SDXL", https://arxiv.org/abs/2307.01952, sections 2.1-2.2).

* The prompt goes through CLIP ViT-L (``text_encoder``, D1 = 768) and OpenCLIP ViT-bigG (``text_encoder_2``,
  D2 = 1280, a ``CLIPTextModelWithProjection``), each in its own tokenizer's chunks of 77 (the vocabularies are
  CLIP's; bigG pads with ``!``): both read the penultimate layer, without the final layer norm; the two are
  joined on the last axis -> (1, 77 * k, D1 + D2 = 2048). A1111's "Clip skip" n > 1 goes n - 1 layers further
  back (diffusers' ``clip_skip`` counts one less). Emphasis applies to each as for SD 1.x
  (``latentgen.text.prompts``).
* The pooled embedding: bigG's projected end-of-text state of the first chunk (1, 1280), as diffusers' (one
  chunk) and A1111's (the first of several).
* ``time_ids``: (original height, width, crop top, left, target height, width), six numbers per image that the
  U-Net embeds beside the pooled text (``added_cond_kwargs``). By default original = target = the drawing's
  size and crop (0, 0), as diffusers' and A1111's.
* An empty negative prompt is zeros, hidden and pooled, where the model says ``force_zeros_for_empty_prompt``
  (diffusers' default for the base model; A1111 does the same for an empty negative).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import prompts


@dataclass
class XL:
    """The second text encoder of an SDXL model and how it is read."""

    tokenizer_2: object  # CLIPTokenizer over CLIP's vocabulary, padding with "!"
    text_encoder_2: torch.nn.Module  # CLIPTextModelWithProjection (OpenCLIP ViT-bigG/14)
    force_zeros: bool = True  # model_index.json's force_zeros_for_empty_prompt

    @property
    def pooled_width(self) -> int:  # 1280 for SDXL
        return self.text_encoder_2.config.projection_dim


def is_xl(unet_config) -> bool:
    """Whether a U-Net config is SDXL's: the pooled text and the sizes enter through ``add_embedding``."""
    return unet_config.get("addition_embed_type") == "text_time"


def _hidden(text_encoder, chunk: prompts.Chunk, layer: int):
    """One chunk through one encoder: (hidden state ``layer`` from the end (1, 77, D), the output's first
    item: the last hidden state, or for a projection model its pooled embedding (1, P))."""
    out = text_encoder(chunk.ids[None].to(text_encoder.device), output_hidden_states=True)
    return prompts.emphasize(out.hidden_states[-layer], chunk.weights), out[0]


@torch.no_grad()
def embed(text: str, tokenizer, text_encoder, xl: XL, *, clip_skip: int = 1, syntax: str = "a1111",
          expand: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt's SDXL conditioning: (hidden (1, 77 * k, D1 + D2), pooled (1, P))."""
    layers = min(text_encoder.config.num_hidden_layers, xl.text_encoder_2.config.num_hidden_layers)
    if not 1 <= clip_skip < layers:
        raise ValueError(f"clip_skip={clip_skip!r} is invalid for SDXL: its text encoders read the penultimate "
                         f"layer at clip_skip=1 and go back at most {layers - 1}; use 1 to {layers - 1}.")
    first = prompts.tokenize(text, tokenizer, syntax=syntax, expand=expand)
    second = prompts.tokenize(text, xl.tokenizer_2, syntax=syntax, expand=expand)  # textual inversion: same ids
    if [len(c.ids) for c in first] != [len(c.ids) for c in second]:
        raise ValueError("the SDXL model's two tokenizers split this prompt differently: they must share CLIP's "
                         "vocabulary (tokenizer/ and tokenizer_2/ of the same SDXL model).")
    hidden, pooled = [], None
    for a, b in zip(first, second):
        h1, _ = _hidden(text_encoder, a, clip_skip + 1)  # (1, 77, D1)
        h2, p = _hidden(xl.text_encoder_2, b, clip_skip + 1)  # (1, 77, D2), (1, P)
        hidden.append(torch.cat([h1, h2.to(h1)], dim=-1))
        pooled = p if pooled is None else pooled  # the first chunk's
    return torch.cat(hidden, dim=1), pooled.to(hidden[0])


def encode(text: str, tokenizer, text_encoder, xl: XL | None = None, **how) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Any model's conditioning of one prompt: (hidden (1, 77 * k, D), pooled (1, P)) for SDXL (``embed``), the
    hidden states alone and None for SD 1.x/2.x (``prompts.embed``). ``how``: clip_skip, syntax, expand."""
    if xl is not None:
        return embed(text, tokenizer, text_encoder, xl, **how)
    return prompts.embed(text, tokenizer, text_encoder, **how), None


def time_ids(width: int, height: int, *, original: tuple[int, int] | None = None,
             crop: tuple[int, int] = (0, 0), target: tuple[int, int] | None = None) -> torch.Tensor:
    """SDXL's size conditioning for a (width x height) drawing: (1, 6) as (original h, w, crop top, left,
    target h, w); ``original`` and ``target`` as (width, height), default the drawing's size."""
    ow, oh = original or (width, height)
    tw, th = target or (width, height)
    return torch.tensor([[oh, ow, crop[0], crop[1], th, tw]], dtype=torch.float32)


def check_unet(unet_config, xl: XL) -> None:
    """Refuse a U-Net whose added embedding does not take this model's pooled text and six size numbers."""
    want = unet_config["addition_time_embed_dim"] * 6 + xl.pooled_width
    got = unet_config.get("projection_class_embeddings_input_dim")
    if got != want:
        raise ValueError(f"SDXL U-Net projection_class_embeddings_input_dim={got} does not fit its text encoder 2: "
                         f"6 size numbers x {unet_config['addition_time_embed_dim']} + pooled {xl.pooled_width} = "
                         f"{want} (a refiner takes 5 numbers: SDXL refiners are not supported yet); use the base "
                         f"model's U-Net and text_encoder_2.")
