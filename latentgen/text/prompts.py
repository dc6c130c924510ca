"""Prompt text -> CLIP conditioning, with AUTOMATIC1111's prompt syntax (``syntax="a1111"``, the default):
``parse`` (emphasis), ``extra_networks`` (``<lora:NAME:WEIGHT>`` tags), ``tokenize`` (chunks of 77 ids
and weights), ``encode`` (-> (1, 77 * k, D)). A1111's rules (its "Original" emphasis, from
``modules/prompt_parser.py`` and ``modules/sd_hijack_clip.py``):

* ``(a)`` multiplies the weight of ``a`` by 1.1, ``((a))`` by 1.21, ``[a]`` divides it by 1.1,
  ``(a:1.3)`` (or ``(a : 1.3)``) by 1.3. ``\\(``, ``\\)``, ``\\[``, ``\\]``, ``\\\\`` are the literal
  characters; a lone backslash is dropped. Neighbouring pieces of equal weight are merged.
* Unbalanced brackets, as A1111: an unclosed ``(`` or ``[`` reaches the end of the prompt; a ``)``
  or ``]`` with nothing open, and ``:1.3)`` with no ``(`` open, are literal text.
* ``BREAK`` (in capitals) ends the chunk. Unlike A1111, which turns ``(a BREAK b)`` into the word
  ``BREAK`` at weight -1.1, a ``BREAK`` inside brackets still breaks.
* Chunks of 75 tokens, each through CLIP alone as BOS + 75 + EOS: when a chunk is full and its last
  comma is at most 20 tokens back, the tokens after that comma move to the next chunk. A
  textual-inversion word counts as its n vectors, kept in one chunk. Padding: EOS, then the
  tokenizer's pad id (SD 1: EOS again; SD 2: ``!``, id 0), as A1111 pads each.
* A chunk's hidden states (77, D) are multiplied by the token weights, then rescaled to the chunk's
  original mean (A1111 takes the mean over the batch's prompts; here each prompt's own, so an image
  does not depend on its batch mates; a mean of ~0, where A1111 divides by ~0, is left alone).
  All weights 1: no rescaling, so a prompt of <= 75 tokens without syntax encodes bit for bit as
  under ``"plain"``.
* ``clip_skip`` (A1111's "Clip skip"): 1 is the last layer; n takes the hidden states n layers from
  the end, through the final layer norm. diffusers' ``clip_skip`` counts one less.

Prompt editing ``[a:b:when]``, alternation ``[a|b]`` and ``AND`` are read first, into the texts of each step
(``latentgen.text.schedule``); this module reads each of those texts. ``syntax="plain"``: the text as it is,
cut at 75 tokens with a warning (latentgen before prompt syntax; diffusers alike).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

SYNTAXES = ("a1111", "plain")
BREAK = ("BREAK", -1.0)  # parse()'s marker: start a new chunk here
COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack: tokens a chunk may give back after its last comma

_PIECE = re.compile(r"""
    \\[()\[\]\\]            # escaped bracket or backslash: the literal character
  | \\                      # a lone backslash (dropped)
  | \( | \[                 # open emphasis
  | :\s*([+-]?[.\d]+)\s*\)  # ':1.3)', ': 1.3 )': close a ( with that factor (spaces as A1111 allows)
  | \) | \]                 # close emphasis
  | [^\\()\[\]:]+           # plain text
  | :                       # a colon that is not a weight
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_TAG = re.compile(r"<(\w+):([^>]+)>")


def parse(text: str) -> list[tuple[str, float]]:
    """A1111's emphasis syntax: ``text`` as (piece, weight) pairs, in order, with ``BREAK`` markers
    (``("BREAK", -1.0)``): ``parse("a (b:1.3)") == [("a ", 1.0), ("b", 1.3)]``. Rules: the module docstring.
    Prompt editing, alternation and ``AND`` are read before, by ``latentgen.text.schedule``.
    """
    res: list[list] = []  # [piece, weight]; weight None marks a BREAK, which brackets leave alone
    round_open: list[int] = []  # index in res where each open '(' starts
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for item in res[start:]:
            if item[1] is not None:
                item[1] *= factor

    for m in _PIECE.finditer(text):
        piece, factor = m.group(0), m.group(1)
        if piece.startswith("\\"):
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(res))
        elif piece == "[":
            square_open.append(len(res))
        elif factor is not None and round_open:  # a bad number ('1.2.3') is text; the ')' still closes
            res += [] if _is_number(factor) else [[piece[:-1], 1.0]]
            scale(round_open.pop(), float(factor) if _is_number(factor) else 1.1)
        elif piece == ")" and round_open:
            scale(round_open.pop(), 1.1)
        elif piece == "]" and square_open:
            scale(square_open.pop(), 1 / 1.1)
        else:  # text, or a closer with nothing open (kept as text)
            for i, part in enumerate(_BREAK.split(piece)):
                if i:
                    res.append([BREAK[0], None])
                res.append([part, 1.0])
    for start, factor in [(i, 1.1) for i in round_open] + [(i, 1 / 1.1) for i in square_open]:
        scale(start, factor)  # unclosed brackets reach the end of the prompt
    merged: list[list] = []
    for item in res or [["", 1.0]]:
        if merged and item[1] is not None and merged[-1][1] == item[1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return [BREAK if w is None else (t, w) for t, w in merged]


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:  # '1.2.3' or '.': A1111 fails
        return False
    return True


def extra_networks(text: str) -> tuple[str, list[tuple[str, str, float | tuple[float, float]]]]:
    """Take A1111's extra-network tags out of ``text``: ``<lora:NAME:WEIGHT>`` -> ("lora", NAME, WEIGHT).

    WEIGHT defaults to 1.0. A1111's per-part weights, ``<lora:NAME:TE:UNET>`` or ``te=``/``unet=`` (the text
    encoders' and the U-Net's; UNET defaults to TE), give (TE, UNET) where they differ. Returns the text without
    its tags (each tag replaced by nothing) and the tags in order. Tags of other kinds (``<hypernet:x>``) are
    returned too; the caller decides.
    """
    tags: list[tuple] = []

    def found(m: re.Match) -> str:
        kind, items = m.group(1), m.group(2).split(":")
        named = dict(x.split("=", 1) for x in items if "=" in x)
        args = [x for x in items if "=" not in x]
        if not args or len(args) > 3 or set(named) - {"te", "unet"}:
            raise ValueError(f"prompt tag {m.group(0)!r} is not supported: write <{kind}:NAME>, <{kind}:NAME:WEIGHT> "
                             f"or <{kind}:NAME:TE:UNET> (te= and unet= work too; dyn= does not).")
        for value in [*args[1:], *named.values()]:
            if not _is_number(value) or not math.isfinite(float(value)):
                raise ValueError(f"prompt tag {m.group(0)!r} has weight {value!r}, not a finite number: "
                                 f"write it as <{kind}:{args[0]}:0.8>.")
        te = float(named.get("te", args[1] if len(args) > 1 else 1.0))
        unet = float(named.get("unet", args[2] if len(args) > 2 else te))
        tags.append((kind, args[0], te if te == unet else (te, unet)))
        return ""

    return _TAG.sub(found, text), tags


def tagged_loras(prompt: str, negative_prompt: str | None = None) -> tuple[str, tuple[tuple, ...]]:
    """(the prompt without its tags, its ``<lora:NAME:WEIGHT>`` tags as (NAME, WEIGHT)) under "a1111" (WEIGHT: a
    number, or (TE, UNET) from ``<lora:NAME:TE:UNET>``);
    tags of other kinds, and tags in the negative prompt, are refused."""
    text, tags = extra_networks(prompt)
    if any(kind != "lora" for kind, _, _ in tags):
        raise ValueError(f"prompt {prompt!r} has a tag that is not <lora:...>: only LoRA tags work; remove the others.")
    if negative_prompt and extra_networks(negative_prompt)[1]:
        raise ValueError(f"negative_prompt {negative_prompt!r} has a <lora:...> tag: tags work in the prompt only; "
                         f"move it there or remove it.")
    return text, tuple((name, weight) for _, name, weight in tags)



def lora_tags(prompt: str | list[str] | None) -> tuple[tuple, ...]:
    """The ``<lora:NAME:WEIGHT>`` tags of a prompt or of each of a list, as (NAME, WEIGHT), in order, the first
    of a name kept; tags of other kinds, and prompts that are not text, are left out (the call refuses them)."""
    texts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else []
    found: dict[str, float] = {}
    for kind, name, weight in (tag for t in texts if isinstance(t, str) for tag in extra_networks(t)[1]):
        if kind == "lora":
            found.setdefault(name, weight)
    return tuple(found.items())

# -- tokens -------------------------------------------------------------------------------------
@dataclass
class Chunk:
    """One CLIP pass: BOS, up to 75 prompt tokens, EOS, padding."""

    ids: torch.Tensor  # (77,) int64 token ids
    weights: torch.Tensor  # (77,) float32 emphasis per token; 1 for BOS, EOS and padding


def _wrap(ids: list[int], weights: list[float], tok) -> Chunk:
    """BOS + ids + EOS, then the pad id up to the tokenizer's length (77)."""
    room = tok.model_max_length - 2 - len(ids)
    return Chunk(torch.tensor([tok.bos_token_id, *ids, tok.eos_token_id] + [tok.pad_token_id] * room),
                 torch.tensor([1.0, *weights, 1.0] + [1.0] * room))


def tokenize(text: str, tokenizer, *, syntax: str = "a1111",
             expand: dict[int, list[int]] | None = None) -> list[Chunk]:
    """``text`` as chunks of 77 token ids and weights (one chunk under ``syntax="plain"``).

    expand: textual-inversion tokens, {first id: all n ids} (``latentgen.text.embeddings``).
    """
    expand = expand or {}
    size = tokenizer.model_max_length - 2  # 75 prompt tokens per chunk
    if syntax == "plain":
        tokens = tokenizer(text, add_special_tokens=False, verbose=False).input_ids
        ids = [i for t in tokens for i in expand.get(t, [t])]  # a textual-inversion word: its n ids
        if len(ids) > size:
            warnings.warn(f"prompt is longer than {tokenizer.model_max_length} tokens and was cut: {text[:60]!r}...")
        return [_wrap(ids[:size], [1.0] * len(ids[:size]), tokenizer)]
    if syntax != "a1111":
        raise ValueError(f"prompt_syntax={syntax!r} is invalid: use one of {', '.join(map(repr, SYNTAXES))}.")
    comma = tokenizer.convert_tokens_to_ids(",</w>")  # CLIP's comma (get_vocab would copy 49k entries)
    done: list[tuple[list[int], list[float]]] = []
    ids: list[int] = []
    weights: list[float] = []
    last_comma = -1  # position in ids of the chunk's last comma
    for piece, weight in parse(text):
        if (piece, weight) == BREAK:
            done.append((ids, weights))
            ids, weights, last_comma = [], [], -1
            continue
        pieces = tokenizer(piece, add_special_tokens=False, verbose=False).input_ids if piece else []
        for unit in [expand.get(t, [t]) for t in pieces]:  # one id, or a textual-inversion word's n ids
            if unit == [comma]:
                last_comma = len(ids)
            elif len(ids) == size and last_comma >= 0 and size - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1  # the words after the last comma move to the next chunk
                done.append((ids[:cut], weights[:cut]))
                ids, weights, last_comma = ids[cut:], weights[cut:], -1
            if len(ids) + len(unit) > size:
                done.append((ids, weights))
                ids, weights, last_comma = [], [], -1
            ids += unit
            weights += [weight] * len(unit)
    if ids or not done:
        done.append((ids, weights))
    return [_wrap(i, w, tokenizer) for i, w in done]


# -- encoding -----------------------------------------------------------------------------------
def embed(text: str, tokenizer, text_encoder, *, clip_skip: int = 1, syntax: str = "a1111",
          expand: dict[int, list[int]] | None = None) -> torch.Tensor:
    """One prompt's CLIP embeddings: ``tokenize``, then ``encode`` -> (1, 77 * k, D)."""
    return encode(text_encoder, tokenize(text, tokenizer, syntax=syntax, expand=expand), clip_skip=clip_skip)



@torch.no_grad()
def encode(text_encoder, chunks: Sequence[Chunk], *, clip_skip: int = 1) -> torch.Tensor:
    """CLIP embeddings of a prompt's chunks, each encoded alone and joined: (1, 77 * k, D)."""
    layers = text_encoder.config.num_hidden_layers
    if not 1 <= clip_skip <= layers:
        raise ValueError(f"clip_skip={clip_skip!r} is invalid: this text encoder has {layers} layers; use 1 "
                         f"(the last layer) to {layers}, such as clip_skip=2.")
    out = [emphasize(states(text_encoder, c.ids[None].to(text_encoder.device), clip_skip), c.weights)
           for c in chunks]
    return out[0] if len(out) == 1 else torch.cat(out, dim=1)


def states(text_encoder, ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
    """The hidden states (B, 77, D) of token ids (B, 77) that prompts draw with: the last layer's, or at
    ``clip_skip`` n the states n layers from the end through the final layer norm (A1111's Clip skip; kohya's
    trainers read the same with --clip_skip). Gradients flow (LoRA training calls it)."""
    if clip_skip == 1:
        return text_encoder(ids)[0]
    hidden = text_encoder(ids, output_hidden_states=True).hidden_states  # layers + 1 of (B, 77, D)
    norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm  # transformers 4 / 5
    return norm(hidden[-clip_skip])


def emphasize(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A chunk's hidden states (1, 77, D) times its token weights (77,), rescaled to the chunk's mean (A1111)."""
    if bool((weights == 1).all()):
        return z
    mean = z.mean()
    z = z * weights.to(z)[None, :, None]  # (1, 77, D) * (1, 77, 1)
    if z.mean().abs() > 1e-4 * z.abs().mean():  # a mean of ~0 (layer norm without bias) is kept as is
        z = z * (mean / z.mean())  # back to the chunk's original mean
    return z
