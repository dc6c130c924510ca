"""The text side of one call: its prompts' ``<lora:...>`` tags, their texts step by step (prompt editing,
alternation, ``AND``: ``latentgen.text.schedule``), their CLIP embeddings as the loop takes them (``Cond``: each
image padded to its own number of chunks), and the LoRAs the tags apply while it runs. The prompt syntax
itself (emphasis, chunks) is ``latentgen.text.prompts``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import torch

from .. import metadata
from . import prompts, schedule
from . import xl as sdxl
from .embeddings import Embeddings


@dataclass(frozen=True)
class Cond:
    """A chunk of B images' text conditioning, as the loop (``Pipeline.denoise``) takes it."""

    cond: torch.Tensor  # (B * K, 77 * k, D): K parts per image (A1111's AND; K = 1 without it), image by image
    uncond: torch.Tensor | None  # (B, 77 * k, D): the negative prompts; None without CFG
    weights: torch.Tensor | None = None  # (B, K) the parts' weights; None: one part of weight 1
    context: Callable | None = None  # ``starts.Hooks.context`` when the text changes by step (prompt editing)
    added: Callable | None = None  # SDXL: step i -> the U-Net's added_cond_kwargs, rows as the context's


@dataclass(frozen=True)
class Schedules:
    """One image's texts over the steps: per ``AND`` part its schedule and weight, and the negative's schedule
    (``latentgen.text.schedule``); a schedule is ``[(last_step, text), ...]``."""

    parts: tuple[tuple[tuple, float], ...]
    negative: tuple | None  # None without CFG


class CallText:
    """The text side of one call (``Pipeline.sample``): ``<lora:...>`` tags out of the prompts (under
    "a1111"), A1111's prompt editing, alternation and ``AND`` read into per-step texts (``schedule``), each
    distinct text encoded once, alone (``prompts.embed``) -> (1, 77 * k, D); an image's texts padded to its
    own largest number of chunks (a batch mate's would change the image) with the encoding of an empty chunk
    (A1111's ``pad_cond_uncond``). ``loras``: the call's (name, weight) tags, the same for every prompt.
    ``info``: its PNG fields (``latentgen.metadata.text_fields``). ``base_steps``: a hires-fix second pass's.
    ``xl``: an SDXL model's second encoder (``latentgen.text.xl``): each text is then (hidden, pooled), and the
    conditioning carries the pooled rows and the size numbers of ``settings``' size as ``Cond.added``."""

    def __init__(self, draws: Sequence, settings, tokenizer, text_encoder, embeddings: Embeddings,
                 base_steps: int | None = None, xl: sdxl.XL | None = None):
        syntax = settings.prompt_syntax
        how = dict(tokenizer=tokenizer, text_encoder=text_encoder, clip_skip=settings.clip_skip, syntax=syntax,
                   expand=embeddings.expansions())
        self.encode = partial(sdxl.encode, xl=xl, **how)
        if xl is None and settings.size_cond is not None:
            raise ValueError("size_cond is SDXL's size conditioning; this model (SD 1.x/2.x) takes none: leave it out.")
        self.xl, self.time_ids = xl, None if xl is None else self._sizes(xl, settings)
        self.cache: dict[str, tuple] = {}  # text -> (hidden (1, 77 * k, D), pooled (1, P) or None)
        self.plans: dict[tuple, Schedules] = {}  # (prompt as given, negative prompt) -> its texts over the steps
        asked: dict[str, tuple] = {}
        for d in draws:
            text, asked[d.prompt] = (prompts.tagged_loras(d.prompt, d.negative_prompt) if syntax == "a1111"
                                     else (d.prompt, ()))
            self.plans[d.prompt, d.negative_prompt] = self._read(text, d.negative_prompt, settings, base_steps)
        sets = set(asked.values())
        if len(sets) > 1:
            raise ValueError(f"the prompts of one call ask for different LoRA tags ({' vs '.join(map(str, sets))}); "
                             f"give every prompt the same <lora:...> tags, or make one call per set.")
        self.loras: list[tuple[str, float]] = list(sets.pop()) if sets else []
        texts = {t for p in self.plans.values() for _, t in _entries(p)}
        self.info = metadata.text_fields(settings.clip_skip, syntax, embeddings.used(sorted(texts)))

    @staticmethod
    def _read(text: str, negative: str | None, settings, base_steps: int | None) -> Schedules:
        """A prompt and its negative as ``Schedules``: "plain" reads neither editing nor ``AND``."""
        n = settings.steps
        if settings.prompt_syntax != "a1111":
            return Schedules((((((n, text),), 1.0),)), None if negative is None else ((n, negative),))
        schedule.check_parts(text, settings.cfg)
        parts = schedule.parts(text)
        steps = partial(schedule.steps, n=n, base_steps=base_steps)
        return Schedules(tuple((tuple(steps(t)), w) for t, w in parts), None if negative is None else tuple(steps(negative)))

    def _embed(self, text: str) -> torch.Tensor:  # (1, 77 * k, D), each text encoded once
        return self._both(text)[0]

    def _both(self, text: str) -> tuple:  # (hidden, pooled or None)
        return self.cache[text] if text in self.cache else self.cache.setdefault(text, self.encode(text))

    def _length(self, plan: Schedules) -> int:  # 77 * k: the image's largest text, at any step
        return max(self._embed(t).shape[1] for _, t in _entries(plan))

    def chunks(self, d) -> tuple[int, int]:
        """(chunks of 77 tokens, parts) of image ``d``'s conditioning: ``request.batches`` groups by it."""
        plan = self.plans[d.prompt, d.negative_prompt]
        return self._length(plan) // self._embed("").shape[1], len(plan.parts)

    def _padded(self, text: str, length: int, negative: bool = False) -> torch.Tensor:  # (1, length, D)
        z = self._embed(text)
        if negative and self._zeros(text):
            return torch.zeros_like(z[:, :1]).expand(-1, length, -1)
        empty = self._embed("")  # (1, 77, D): BOS, EOS, padding
        return torch.cat([z] + [empty] * ((length - z.shape[1]) // empty.shape[1]), dim=1)

    def embed(self, draws: Sequence, cfg: bool) -> Cond:
        """The conditioning of ``draws`` of one (chunks, parts) (``request.batches``), as its first step draws it,
        with a ``context`` hook when any text changes by step (one tensor per distinct set of texts)."""
        plans = [self.plans[d.prompt, d.negative_prompt] for d in draws]
        lengths = [self._length(p) for p in plans]

        def at(i: int, pooled: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
            """(cond, uncond) hidden states at step i, or with ``pooled`` SDXL's pooled embeddings (rows alike)."""
            one = self._pooled if pooled else self._padded
            cond = torch.cat([one(schedule.text_at(s, i), n) for p, n in zip(plans, lengths) for s, _ in p.parts])
            if not cfg:
                return cond, None
            return cond, torch.cat([one(schedule.text_at(p.negative, i), n, negative=True)
                                    for p, n in zip(plans, lengths)])

        cond, uncond = at(0)
        weights = [[w for _, w in p.parts] for p in plans]
        changes = sorted({end for p in plans for end, _ in _entries(p)})[:-1]  # steps after which
        context = None
        if changes:
            seen: dict[int, torch.Tensor] = {}

            def context(i: int, _given: torch.Tensor) -> torch.Tensor:
                key = next((end for end in changes if i <= end), -1)  # texts change only after these steps
                if key not in seen:
                    c, u = at(i)
                    seen[key] = torch.cat([u, c]) if cfg else c
                return seen[key]
        plain = all(w == [1.0] for w in weights)
        added = None if self.xl is None else self._added(partial(at, pooled=True), changes, cfg)
        return Cond(cond, uncond, None if plain else torch.tensor(weights, dtype=cond.dtype), context, added)

    def _zeros(self, text: str) -> bool:  # an empty negative prompt of an SDXL model that zeroes it
        return self.xl is not None and self.xl.force_zeros and text == ""

    def _pooled(self, text: str, _length: int, negative: bool = False) -> torch.Tensor:  # (1, P)
        z = self._both(text)[1]
        return torch.zeros_like(z) if negative and self._zeros(text) else z

    def _added(self, at: Callable, changes: list[int], cfg: bool) -> Callable:
        """SDXL's added conditioning by step: {"text_embeds": (rows, P), "time_ids": (rows, 6)}, the rows as the
        loop's context ([uncond;] cond), built again only where a text changes."""
        seen: dict[int, dict] = {}

        def added(i: int) -> dict:
            key = next((end for end in changes if i <= end), -1)
            if key not in seen:
                c, u = at(i)
                pooled = torch.cat([u, c]) if cfg else c
                (pos, neg), b = self.time_ids, len(c)
                sizes = torch.cat([neg.expand(len(u), -1), pos.expand(b, -1)]) if cfg else pos.expand(b, -1)
                seen[key] = {"text_embeds": pooled, "time_ids": sizes.to(pooled)}
            return seen[key]
        return added

    @staticmethod
    def _sizes(xl: sdxl.XL, settings) -> tuple[torch.Tensor, torch.Tensor]:
        """The size numbers of the prompt's rows and the negative's, (1, 6) each; a refiner's (1, 5), with its
        aesthetic scores (``latentgen.text.xl.SizeCond``: the call's ``size_cond``)."""
        return sdxl.size_numbers(settings.width, settings.height, settings.size_cond, xl.aesthetic)

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


def _entries(plan: Schedules) -> list:
    """Every (last_step, text) of a plan's schedules, the negative's included."""
    schedules = [s for s, _ in plan.parts] + ([plan.negative] if plan.negative else [])
    return [e for s in schedules for e in s]


@torch.no_grad()
def encode_prompt(pipe, text: str, *, clip_skip: int = 1, syntax: str = "a1111") -> torch.Tensor:
    """``Pipeline.encode_prompt``: CLIP text embeddings of one prompt, (1, 77 * k, D), D = 768 for SD 1.x, 2048 for
    SDXL (its pooled embedding: ``latentgen.text.xl.encode``), k chunks of 75 tokens (k = 1 with syntax "plain");
    A1111's syntax and "Clip skip": ``latentgen.text.prompts``. A prompt that changes by step or has AND parts:
    ``latentgen.text.schedule``."""
    one = text if syntax != "a1111" else schedule.fixed(text)
    if one is None:
        raise ValueError(f"prompt {text!r} changes by step or has AND parts (A1111's prompt editing, alternation,"
                         f" AND): encode its texts one by one (latentgen.text.schedule.steps), or pass it to generate.")
    return sdxl.encode(one, pipe.tokenizer, pipe.text_encoder, pipe.xl, clip_skip=clip_skip, syntax=syntax,
                       expand=pipe.embeddings.expansions())[0]  # expand: textual-inversion words
