"""Textual-inversion embeddings (Gal et al. 2022, https://arxiv.org/abs/2208.01618): new words for the
text encoder, each a few learned input vectors (n, D).

File layouts read (``read``):
  * A1111 ``.pt``: ``{"string_to_param": {"*": tensor (n, D)}, "name": ..., "step": ...}``, read with
    ``torch.load(weights_only=True)`` only: a pickle that needs code to load is refused.
  * A1111 / kohya ``.safetensors``: ``{"emb_params": tensor (n, D)}``.
  * diffusers ``learned_embeds.safetensors`` (or ``.bin``): ``{token: tensor (D,) or (n, D)}``.
  * SDXL (A1111, kohya): ``{"clip_l": (n, 768), "clip_g": (n, 1280)}``, read as one (n, 768 + 1280): each text
    encoder gets its own part, under the same word.

``Embeddings.load`` adds the token to the tokenizer (and ``token_1`` ... ``token_{n-1}`` for more
vectors, diffusers' convention) and their rows to the text encoder's input embeddings. Rows only
get appended (a token the vocabulary already has, such as ``style``, is refused), so prompts without
the token encode exactly as before. ``latentgen.text.prompts`` expands the token into its n ids (A1111
counts them as n tokens of the chunk).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import files

SDXL_KEYS = ("clip_l", "clip_g")


@dataclass
class Embedding:
    """One loaded embedding: its token ids (one per vector) and where it came from."""

    token: str
    ids: list[int]  # token ids of its n vectors: token, token_1, ...
    hash: str  # first 12 hex digits of the file's sha256 (PNG metadata "TI hashes")
    path: str


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``PATH[:TOKEN]`` (the CLI's and the server's ``--embedding``) -> (path, token or None), the file
    checked before any model loads. A path that exists is taken whole, so a ':' inside it is fine."""
    path, _, token = (spec, "", "") if Path(spec).is_file() else spec.rpartition(":")
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"--embedding {spec}: no such file; give an embedding file's PATH[:TOKEN].")
    return path, token or None


def _vectors(value, path: Path) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() not in (1, 2):
        raise ValueError(f"{path.name}: the embedding is {type(value).__name__} "
                         f"{tuple(getattr(value, 'shape', ()))}, not a tensor of vectors (n, D) or (D,).")
    return value.detach().float().reshape(-1, value.shape[-1])  # (n, D)


def _layout(data, path: Path) -> tuple[torch.Tensor, str | None, bool]:
    """The vectors (n, D) in a loaded file, the token the file itself names (diffusers layout), whether it is
    SDXL's (clip_l and clip_g side by side)."""
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path.name} holds {type(data).__name__}, not an embedding dict; expected A1111's "
                         f"string_to_param / emb_params or diffusers' {{token: tensor}}.")
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise ValueError(f"{path.name}: string_to_param must hold exactly one tensor, "
                             f"found {len(params) if isinstance(params, dict) else type(params).__name__}.")
        return _vectors(next(iter(params.values())), path), None, False
    if "emb_params" in data:
        return _vectors(data["emb_params"], path), None, False
    if any(k in data for k in SDXL_KEYS):
        parts = [_vectors(data[k], path) for k in SDXL_KEYS if k in data]
        if len(parts) != 2 or len(parts[0]) != len(parts[1]):
            raise ValueError(f"{path.name} is an SDXL embedding, but its clip_l and clip_g do not pair up "
                             f"({', '.join(f'{k} {tuple(data[k].shape)}' for k in SDXL_KEYS if k in data)}).")
        return torch.cat(parts, dim=1), None, True  # (n, 768 + 1280)
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if len(tensors) == 1 and len(data) == 1:
        token, value = next(iter(tensors.items()))
        return _vectors(value, path), str(token), False
    raise ValueError(f"{path.name} is no known embedding layout (keys: {', '.join(map(str, list(data)[:8]))}); "
                     f"expected string_to_param (A1111 .pt), emb_params (.safetensors) or one {{token: tensor}}.")


def read(path: str | Path) -> tuple[torch.Tensor, str | None]:
    """Read an embedding file of any layout above: (vectors (n, D) float32, token named in the file or None)."""
    return _read(path)[:2]


def _read(path: str | Path) -> tuple[torch.Tensor, str | None, bool]:  # ``read``, and whether it is SDXL's
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedding file {str(path)!r} does not exist; pass the path of a .pt, .bin "
                                f"or .safetensors textual-inversion file.")
    from ..models.checkpoints import sniff

    if sniff(path) == "safetensors":
        from safetensors.torch import load_file

        try:
            data = load_file(str(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
            raise ValueError(f"{path.name} is not a readable .safetensors file ({e}).") from None
        return _layout(data, path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a file it cannot read
        code = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if code:
            raise ValueError(f"{path.name} is a pickle that needs code to load ({code.group(1)}); latentgen "
                             f"loads tensors only (torch.load(weights_only=True)). Convert it to .safetensors "
                             f"where you trust its source.") from None
        why = re.search(r"WeightsUnpickler error: \s*(.+)", str(e))
        raise ValueError(f"{path.name} is not a readable torch file "
                         f"({why.group(1) if why else f'{type(e).__name__}: {e}'}).") from None
    return _layout(data, path)


class Embeddings:
    """The textual-inversion embeddings of a pipeline (``pipe.embeddings``), by token, in load order."""

    def __init__(self, tokenizer, text_encoder, xl=None):
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.xl = xl  # SDXL's second tokenizer and encoder (``latentgen.text.xl.XL``): each word goes into both
        self.loaded: dict[str, Embedding] = {}

    def __repr__(self) -> str:
        return f"Embeddings({ {t: len(e.ids) for t, e in self.loaded.items()} })"

    def load(self, path: str | Path, token: str | None = None) -> str:
        """Add the embedding in ``path`` as the word ``token``; returns the token.

        token: default the file's stem (as A1111); for diffusers' ``learned_embeds.*`` files, the
        token stored in the file. The tokenizer matches it as a whole word, case-insensitively. An SDXL model
        takes SDXL files (clip_l and clip_g), each part into its own text encoder.
        """
        vectors, own, xl = _read(path)  # (n, D)
        path = Path(path)
        if xl != (self.xl is not None):
            what = ("an SDXL embedding (clip_l/clip_g), and this model is SD 1.x/2.x" if xl else
                    f"an SD 1.x/2.x embedding ({vectors.shape[1]} wide), and this model is SDXL (clip_l and clip_g)")
            raise ValueError(f"{path.name} is {what}: use an embedding made for this model's family.")
        if xl and self.xl.refiner:  # a refiner's one encoder is bigG: the clip_g part
            vectors = vectors[:, vectors.shape[1] - self.text_encoder.get_input_embeddings().weight.shape[1]:]
        token = token or (own if own and path.stem == "learned_embeds" else path.stem)
        words = [token] + [f"{token}_{i}" for i in range(1, len(vectors))]
        self._check(token, words, vectors, path)
        width = self.text_encoder.get_input_embeddings().weight.shape[1]
        ids = self._add(self.tokenizer, self.text_encoder, words, vectors[:, :width])
        if xl and not self.xl.refiner and self._add(self.xl.tokenizer_2, self.xl.text_encoder_2, words, vectors[:, width:]) != ids:
            raise ValueError(f"{path.name}: the SDXL model's two tokenizers gave the word different ids; load both "
                             f"tokenizers from the same model, with the same embeddings in the same order.")
        self.loaded[token] = Embedding(token, ids, files.sha256(path)[:12], str(path))  # A1111's TI hash
        return token

    @staticmethod
    def _add(tok, text_encoder, words: list[str], vectors: torch.Tensor) -> list[int]:
        """The words added to ``tok`` and their rows (n, D) to ``text_encoder``'s input embeddings; their ids."""
        from transformers import AddedToken

        tok.add_tokens([AddedToken(w, single_word=True) for w in words])
        ids = tok.convert_tokens_to_ids(words)
        text_encoder.resize_token_embeddings(len(tok), mean_resizing=False)
        table = text_encoder.get_input_embeddings()  # (vocab + added, D): old rows unchanged
        with torch.no_grad():
            table.weight[ids] = vectors.to(table.weight)
        return ids

    def _check(self, token: str, words: list[str], vectors: torch.Tensor, path: Path) -> None:
        width = sum(m.get_input_embeddings().weight.shape[1]
                    for m in (self.text_encoder, *(self.xl.encoders() if self.xl else [])))
        if vectors.shape[1] != width:
            raise ValueError(f"{path.name} has vectors of width {vectors.shape[1]}, but this text encoder's "
                             f"width is {width} (768: SD 1.x, 1024: SD 2.x, 2048: SDXL's two); use an embedding made "
                             f"for this model.")
        room = self.tokenizer.model_max_length - 2
        if not 1 <= len(vectors) <= room:
            raise ValueError(f"{path.name} has {len(vectors)} vectors; an embedding must fit in one chunk of "
                             f"{room} tokens.")
        if not token or any(ch.isspace() for ch in token):
            raise ValueError(f"token={token!r} is invalid: use one word without spaces, such as token='my-style'.")
        have = {t.lower() for t in [*self.loaded, *self.tokenizer.get_added_vocab()]}
        taken = [w for w in words if w.lower() in have]
        if taken:
            raise ValueError(f"token {taken[0]!r} is already loaded; pass another token=... for {path.name}.")
        vocab = self.tokenizer.get_vocab()  # CLIP's BPE entries, lower case ('style', as in 'stylesheet')
        taken = [w for w in words if w.lower() in vocab]
        if taken:  # add_tokens would add nothing, and the file's vector would overwrite that entry's row
            raise ValueError(f"token {taken[0]!r} is already in the tokenizer's vocabulary; pass another "
                             f"token=... for {path.name}, such as token='<{token}>'.")

    def expansions(self) -> dict[int, list[int]]:
        """{first token id: the ids of all n vectors}, for ``latentgen.text.prompts.tokenize``."""
        return {e.ids[0]: e.ids for e in self.loaded.values()}

    def used(self, texts: list[str]) -> dict[str, str]:
        """{token: file hash} of the embeddings that any of ``texts`` uses, in load order."""
        if not self.loaded:
            return {}
        seen = {i for t in texts for i in self.tokenizer(t, add_special_tokens=False, verbose=False).input_ids}
        return {t: e.hash for t, e in self.loaded.items() if e.ids[0] in seen}
