"""A1111's prompt styles: named prompt and negative-prompt templates kept in a ``styles.csv``, applied to a request's
prompts by name (the API's ``styles`` field, ``latentgen generate --style``).

The file is A1111's: CSV in UTF-8 (a byte order mark is fine), a header row with the columns ``name``, ``prompt``
and ``negative_prompt`` (A1111's old files: ``name`` and ``text``), one style per row; a later row of the same name
replaces an earlier one. A style's text holds ``{prompt}`` where the prompt goes; without it the style is appended
after a comma (A1111's ``merge_prompts``). Several styles apply in the order given, each to the result of the last;
the negative prompt takes the styles' negative texts the same way. The merged prompts are what is drawn and what
the PNG's parameters say, as in A1111.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge(template: str, prompt: str) -> str:
    """One style's text over ``prompt``: ``{prompt}`` replaced by it, or the two joined by ", " (empty ones left out)."""
    if "{prompt}" in template:
        return template.replace("{prompt}", prompt)
    return ", ".join(p for p in (prompt.strip(), template.strip()) if p)


def read(path: str | Path) -> dict[str, Style]:
    """{name: Style} of an A1111 ``styles.csv``; a file that is not one is refused, naming what is missing."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            rows, header = list(reader), reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"styles file {str(path)!r} cannot be read ({type(e).__name__}: {e}); give A1111's "
                         f"styles.csv: UTF-8 CSV with the columns name, prompt, negative_prompt.") from None
    text = "prompt" if "prompt" in header else "text"
    if header and ("name" not in header or text not in header):
        raise ValueError(f"styles file {str(path)!r} has the columns {', '.join(map(repr, header))}; A1111's "
                         f"styles.csv has name, prompt and negative_prompt.")
    return {r["name"]: Style(r["name"], r.get(text) or "", r.get("negative_prompt") or "")
            for r in rows if r.get("name") and not r["name"].startswith("#")}  # "#...": A1111's comment rows


def apply(prompt: str, negative_prompt: str | None, names: list[str], table: dict[str, Style],
          field: str = "styles", limit: int | None = None) -> tuple[str, str]:
    """(prompt, negative prompt) with the styles ``names`` applied in order; an unknown name is refused, naming the
    known ones (A1111 skips it without a word), and so is a result longer than ``limit`` characters."""
    for name in names:
        if name not in table:
            known = ", ".join(map(repr, table)) or "none: give a styles file"
            raise ValueError(f"{field}: no style {name!r}; the styles are {known}.")
    for name in names:
        prompt, negative_prompt = merge(table[name].prompt, prompt), merge(table[name].negative_prompt,
                                                                          negative_prompt or "")
        if limit is not None and max(len(prompt), len(negative_prompt)) > limit:
            raise ValueError(f"{field}: the prompts with these styles are over {limit} characters; name fewer.")
    return prompt, negative_prompt or ""


def apply_given(prompt: str | None, negative_prompt: str | None, names: list[str], table: dict[str, Style],
                field: str = "styles", limit: int | None = None) -> tuple:
    """``apply`` to a hires pass's own prompts: each styled where given, left as it was ("" or None) where not
    (it then follows the first pass's, styled already), as A1111 styles ``hr_prompt``."""
    if not (prompt or negative_prompt):
        return prompt, negative_prompt
    styled = apply(prompt or "", negative_prompt, names, table, field, limit)
    return tuple(s if given else given for s, given in zip(styled, (prompt, negative_prompt)))
