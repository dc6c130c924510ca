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
* A refiner (SDXL's second stage, ``StableDiffusionXLImg2ImgPipeline``'s ``requires_aesthetics_score``) has bigG
  alone, as the pipeline's one ``text_encoder`` (hidden (1, 77 * k, 1280), pooled from it), and five size numbers:
  (original h, w, crop top, left, aesthetic score), 6 for the prompt and 2.5 for the negative by default
  (diffusers' and A1111's ``sdxl_refiner_high/low_aesthetic_score``); no forced zeros.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from . import prompts


@dataclass
class XL:
    """The second text encoder of an SDXL model and how it is read."""

    tokenizer_2: object | None  # CLIPTokenizer over CLIP's vocabulary, padding with "!"; None: a refiner
    text_encoder_2: torch.nn.Module | None  # CLIPTextModelWithProjection (OpenCLIP ViT-bigG/14); None: a refiner
    force_zeros: bool = True  # model_index.json's force_zeros_for_empty_prompt
    aesthetic: tuple[float, float] | None = None  # a refiner's aesthetic scores (prompt, negative): (6.0, 2.5)

    @property
    def refiner(self) -> bool:  # bigG alone, as the pipeline's text_encoder
        return self.text_encoder_2 is None

    def encoders(self) -> list:  # the second text encoder, if there is one
        return [] if self.text_encoder_2 is None else [self.text_encoder_2]


def pooled_width(text_encoder, xl: XL) -> int:
    """The pooled embedding's width P: bigG's projection (1280), the refiner's one encoder or the base's second."""
    return (text_encoder if xl.refiner else xl.text_encoder_2).config.projection_dim


@dataclass(frozen=True)
class SizeCond:
    """SDXL's size conditioning of one call (diffusers' ``original_size``, ``crops_coords_top_left``,
    ``target_size``, their ``negative_*`` and the refiner's ``aesthetic_score``), sizes as (width, height).
    Left out, each is the default: original = target = the drawing's size, crop (0, 0), the refiner's scores 6
    and 2.5. A small ``original`` (such as (256, 256)) draws as the model saw upscaled small images; a crop as
    it saw cropped ones; ``negative=SizeCond(original=(512, 512))`` steers away from them."""

    original: tuple[int, int] | None = None  # (width, height)
    crop: tuple[int, int] = (0, 0)  # (top, left) in pixels
    target: tuple[int, int] | None = None  # (width, height)
    aesthetic: float | None = None  # a refiner's aesthetic score (its prompt's 6, its negative's 2.5 by default)
    negative: SizeCond | None = None  # the negative prompt's numbers (default: the prompt's, with score 2.5)


def check_size_cond(c) -> SizeCond | None:
    """A ``SizeCond`` (or None), checked before any model work."""
    if c is None:
        return None
    if not isinstance(c, SizeCond):
        raise TypeError(f"size_cond must be a latentgen.SizeCond, got {type(c).__name__}; such as "
                        f"size_cond=latentgen.SizeCond(original=(512, 512)).")
    for name in ("original", "crop", "target"):
        v = getattr(c, name)
        if v is not None and not (isinstance(v, tuple) and len(v) == 2 and all(
                isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 1 << 16 for n in v)):
            raise ValueError(f"size_cond.{name}={v!r} is invalid: use two whole numbers of pixels, such as (1024, 1024)"
                             + (" (top, left)" if name == "crop" else " (width, height)") + ".")
    if c.aesthetic is not None and not (isinstance(c.aesthetic, (int, float)) and 0 <= c.aesthetic <= 10):
        raise ValueError(f"size_cond.aesthetic={c.aesthetic!r} is invalid: use a score from 0 to 10, such as 6.")
    if c.negative is not None:
        if c.negative.negative is not None:
            raise ValueError("size_cond.negative.negative is meaningless: give the negative's numbers once.")
        check_size_cond(c.negative)
    return c


def size_numbers(width: int, height: int, c: SizeCond | None, aesthetic: tuple[float, float] | None):
    """(the prompt's, the negative's) size numbers, (1, 6) each, or a refiner's (1, 5) with its ``aesthetic``
    scores (prompt, negative) unless ``c`` gives its own, over the drawing's size and ``c``."""
    c = c or SizeCond()
    negative = c.negative or replace(c, aesthetic=None)  # the prompt's sizes, the negative's own score
    if aesthetic is None and (c.aesthetic, negative.aesthetic) != (None, None):
        raise ValueError("size_cond.aesthetic is an SDXL refiner's number; this model takes none: leave it out.")
    scores = (None, None) if aesthetic is None else tuple(
        own if own is not None else default for own, default in zip((c.aesthetic, negative.aesthetic), aesthetic))
    return tuple(time_ids(width, height, original=o.original, crop=o.crop, target=o.target, aesthetic=a)
                 for o, a in ((c, scores[0]), (negative, scores[1])))


def is_xl(unet_config) -> bool:
    """Whether a U-Net config is SDXL's: the pooled text and the sizes enter through ``add_embedding``."""
    return unet_config.get("addition_embed_type") == "text_time"


def max_clip_skip(text_encoder, xl: XL | None) -> int:
    """The largest clip_skip a model takes: its encoder's layer count for SD 1.x/2.x (clip_skip 1 reads the last
    layer), one less for SDXL (1 reads the penultimate; the shallower encoder bounds both)."""
    return min([text_encoder.config.num_hidden_layers] + [m.config.num_hidden_layers for m in
                                                           (xl.encoders() if xl else [])]) - (1 if xl else 0)


def _hidden(text_encoder, chunk: prompts.Chunk, layer: int):
    """One chunk through one encoder: (hidden state ``layer`` from the end (1, 77, D), the output's first
    item: the last hidden state, or for a projection model its pooled embedding (1, P))."""
    out = text_encoder(chunk.ids[None].to(text_encoder.device), output_hidden_states=True)
    return prompts.emphasize(out.hidden_states[-layer], chunk.weights), out[0]


@torch.no_grad()
def embed(text: str, tokenizer, text_encoder, xl: XL, *, clip_skip: int = 1, syntax: str = "a1111",
          expand: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One prompt's SDXL conditioning: (hidden (1, 77 * k, D1 + D2), pooled (1, P)); a refiner's, its one encoder
    alone: (1, 77 * k, D2)."""
    top = max_clip_skip(text_encoder, xl)
    if not 1 <= clip_skip <= top:
        raise ValueError(f"clip_skip={clip_skip!r} is invalid for SDXL: its text encoders read the penultimate "
                         f"layer at clip_skip=1 and go back at most {top}; use 1 to {top}.")
    encoders = [(tokenizer, text_encoder)] + ([] if xl.refiner else [(xl.tokenizer_2, xl.text_encoder_2)])
    chunks = [prompts.tokenize(text, tok, syntax=syntax, expand=expand) for tok, _ in encoders]  # TI: same ids
    if len({tuple(len(c.ids) for c in cs) for cs in chunks}) > 1:
        raise ValueError("the SDXL model's two tokenizers split this prompt differently: they must share CLIP's "
                         "vocabulary (tokenizer/ and tokenizer_2/ of the same SDXL model).")
    hidden, pooled = [], None
    for parts in zip(*chunks):  # (1, 77, D) per encoder; bigG's (the last) also gives the pooled (1, P)
        states = [_hidden(enc, chunk, clip_skip + 1) for (_, enc), chunk in zip(encoders, parts)]
        hidden.append(torch.cat([h.to(states[0][0]) for h, _ in states], dim=-1))
        pooled = states[-1][1] if pooled is None else pooled  # the first chunk's
    return torch.cat(hidden, dim=1), pooled.to(hidden[0])


def batch_embed(ids: torch.Tensor, ids_2: torch.Tensor, text_encoder, text_encoder_2) -> tuple[torch.Tensor, torch.Tensor]:
    """Captions' SDXL conditioning as training reads it, with gradients: token ids (B, 77) of each tokenizer ->
    (hidden (B, 77, D1 + D2), both encoders' penultimate states; pooled (B, P), bigG's): what ``embed`` gives a
    plain one-chunk prompt at clip_skip 1."""
    first = text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    out = text_encoder_2(ids_2, output_hidden_states=True)
    return torch.cat([first, out.hidden_states[-2].to(first)], dim=-1), out[0]


def batch_added(pooled: torch.Tensor, size: int) -> dict:
    """A training batch's ``added_cond_kwargs``: bigG's pooled text (B, P) and the size numbers (B, 6) of an
    uncropped ``size`` x ``size`` picture (original = target = the training size), as drawing reads them."""
    return {"text_embeds": pooled, "time_ids": time_ids(size, size).to(pooled.device).expand(len(pooled), -1)}


def encode(text: str, tokenizer, text_encoder, xl: XL | None = None, **how) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Any model's conditioning of one prompt: (hidden (1, 77 * k, D), pooled (1, P)) for SDXL (``embed``), the
    hidden states alone and None for SD 1.x/2.x (``prompts.embed``). ``how``: clip_skip, syntax, expand."""
    if xl is not None:
        return embed(text, tokenizer, text_encoder, xl, **how)
    return prompts.embed(text, tokenizer, text_encoder, **how), None


def time_ids(width: int, height: int, *, original: tuple[int, int] | None = None,
             crop: tuple[int, int] = (0, 0), target: tuple[int, int] | None = None,
             aesthetic: float | None = None) -> torch.Tensor:
    """SDXL's size conditioning for a (width x height) drawing: (1, 6) as (original h, w, crop top, left,
    target h, w); ``original`` and ``target`` as (width, height), default the drawing's size. A refiner's, with
    ``aesthetic``: (1, 5) as (original h, w, crop top, left, aesthetic score)."""
    ow, oh = original or (width, height)
    tw, th = target or (width, height)
    last = [th, tw] if aesthetic is None else [aesthetic]
    return torch.tensor([[oh, ow, crop[0], crop[1], *last]], dtype=torch.float32)


def example_added(config, batch: int) -> tuple:
    """Example (text_embeds (B, P), time_ids (B, n)) of an SDXL U-Net, its added embedding P + n * d wide: any split
    traces the same graph (it fixes only the concatenation's width); a base model's n = 6 where it fits, else 5."""
    d, width = config.addition_time_embed_dim, config.projection_class_embeddings_input_dim
    n = 6 if width > 6 * d else 5
    return torch.zeros(batch, width - n * d), torch.zeros(batch, n)


def check_unet(unet_config, text_encoder, xl: XL) -> None:
    """Refuse a U-Net whose added embedding does not take this model's pooled text and six size numbers (a
    refiner's: five)."""
    numbers, pooled = 6 if xl.aesthetic is None else 5, pooled_width(text_encoder, xl)
    want = unet_config["addition_time_embed_dim"] * numbers + pooled
    got = unet_config.get("projection_class_embeddings_input_dim")
    if got != want:
        what = "a refiner's U-Net takes 5 numbers, a base model's 6"
        raise ValueError(f"SDXL U-Net projection_class_embeddings_input_dim={got} does not fit its text encoder: "
                         f"{numbers} size numbers x {unet_config['addition_time_embed_dim']} + pooled {pooled} = "
                         f"{want} ({what}); use the U-Net and text encoders of one model.")
