"""The text side of one call: its prompts' ``<lora:...>`` tags, their CLIP embeddings as the loop takes them
(cond and uncond, each image padded to its own number of chunks), and the LoRAs the tags apply while it runs.
The prompt syntax itself is ``latentgen.text.prompts``."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from functools import partial

import torch

from .. import metadata
from . import prompts
from .embeddings import Embeddings


class CallText:
    """The text side of one call (``Pipeline.sample``): ``<lora:...>`` tags out of the prompts (under
    "a1111"), each distinct text encoded once, alone (``prompts.embed``) -> (1, 77 * k, D); an image's
    cond and uncond padded to its own number of chunks (a batch mate's would change the image) with the
    encoding of an empty chunk (A1111's ``pad_cond_uncond``). ``loras``: the call's (name, weight) tags,
    the same for every prompt. ``info``: its PNG fields (``latentgen.metadata.text_fields``)."""

    def __init__(self, draws: Sequence, settings, tokenizer, text_encoder, embeddings: Embeddings):
        syntax = settings.prompt_syntax
        self.encode = partial(prompts.embed, tokenizer=tokenizer, text_encoder=text_encoder,
                              clip_skip=settings.clip_skip, syntax=syntax, expand=embeddings.expansions())
        self.cache: dict[str, torch.Tensor] = {}
        self.text: dict[str, str] = {}  # prompt as given -> text to encode
        asked: dict[str, tuple] = {}
        for d in draws:
            self.text[d.prompt], asked[d.prompt] = (prompts.tagged_loras(d.prompt, d.negative_prompt)
                                                    if syntax == "a1111" else (d.prompt, ()))
            if syntax == "a1111":  # refused now, before any model runs, rather than at its turn to be encoded
                prompts.check_editing(self.text[d.prompt])
                prompts.check_editing(d.negative_prompt or "")
        sets = set(asked.values())
        if len(sets) > 1:
            raise ValueError(f"the prompts of one call ask for different LoRA tags ({' vs '.join(map(str, sets))}); "
                             f"give every prompt the same <lora:...> tags, or make one call per set.")
        self.loras: list[tuple[str, float]] = list(sets.pop()) if sets else []
        texts = list(self.text.values()) + [d.negative_prompt for d in draws if d.negative_prompt]
        self.info = metadata.text_fields(settings.clip_skip, syntax, embeddings.used(texts))

    def _embed(self, text: str) -> torch.Tensor:  # (1, 77 * k, D), each text encoded once
        return self.cache[text] if text in self.cache else self.cache.setdefault(text, self.encode(text))

    def chunks(self, d, cfg: bool) -> int:
        """How many 77-token chunks image ``d``'s conditioning holds (``request.batches`` groups by it)."""
        return self._pair(d, cfg)[0].shape[1] // self._embed("").shape[1]

    def embed(self, draws: Sequence, cfg: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """cond (B, 77 * k, D) and, with ``cfg``, uncond (B, 77 * k, D) of ``draws`` of one k (``request.batches``)."""
        pairs = [self._pair(d, cfg) for d in draws]
        return torch.cat([p[0] for p in pairs]), torch.cat([p[-1] for p in pairs]) if cfg else None

    def _pair(self, d, cfg: bool) -> list[torch.Tensor]:  # [cond] or [cond, uncond], (1, 77 * k, D) each
        zs = [self._embed(self.text[d.prompt])] + ([self._embed(d.negative_prompt)] if cfg else [])
        length = max(z.shape[1] for z in zs)  # 77 * k: this image's own k, as in a one-image call
        for i, z in enumerate(zs):
            if z.shape[1] < length:
                empty = self._embed("")  # (1, 77, D): BOS, EOS, padding
                zs[i] = torch.cat([z] + [empty] * ((length - z.shape[1]) // empty.shape[1]), dim=1)
        return zs

    @contextmanager
    def lora_tags(self, loras):
        """Apply the LoRAs the tags name while the block runs. One already in ``loras`` (a
        ``LoraAdapters``) by that name gets the tag's weight, then its own scale back; any other name is
        a shipped LoRA (``latentgen.lora.formats.resolve``: ``"purple"``) or a file, loaded for the block and
        parked after (inactive: the model computes as without it, and the next call with that tag reuses it).
        Loaded LoRAs that no tag names stay as they are (A1111 would turn them off)."""
        restore: dict[str, float] = {}
        added: list[str] = []
        try:
            for name, weight in self.loras:
                if name not in loras.loaded:
                    try:
                        added.append(loras.load(name, scale=weight))
                    except FileNotFoundError as e:
                        raise FileNotFoundError(f"prompt tag <lora:{name}>: no LoRA of that name is loaded "
                                                f"({', '.join(loras.loaded) or 'none'}); {e}") from None
                    continue
                if name not in added:
                    restore.setdefault(name, loras.loaded[name].scale)
                loras.set_scale(name, weight)
            yield
        finally:
            for name in reversed(added):
                loras.park(name)  # inactive, kept injected for the tag's next call (``LoraAdapters.park``)
            for name, scale in restore.items():
                loras.set_scale(name, scale)
