"""A1111's Prompt matrix: a prompt ``"base|part 1|part 2|part 3"`` drawn with every combination of its parts
(2**3 = 8 images, combination k holding part n when bit n of k is set), as a grid whose columns are labeled with
the first half of the parts and its rows with the rest, each part struck through where the cell leaves it out.
Every cell has the call's seed (A1111's default), or seed + k (``different_seeds``: "Random seeds"). The parts go
after the base, or before it (``at_start``), joined by ", " or " "; ``negative`` varies the negative prompt
instead. Facts from A1111's ``scripts/prompt_matrix.py`` and ``modules/images.py`` (``draw_prompt_matrix``)."""

from __future__ import annotations

from .cells import draw
from .draw import annotated
from .xyz import SETTINGS, Plot

JOINERS = {"comma": ", ", "space": " "}  # A1111's "Joining char"


def prompts(text: str, at_start: bool = False, joiner: str = "comma", what: str = "prompt") -> list[str]:
    """The 2 ** (parts - 1) prompts of ``text``, combination k at index k, as A1111 writes them: each part
    stripped of spaces and commas, the base as written; ``what``: the field ``text`` is, for errors."""
    if joiner not in JOINERS:
        raise ValueError(f"joiner={joiner!r}: use 'comma' or 'space' (A1111's Joining char).")
    base, *parts = text.split("|")
    if not parts:
        raise ValueError(f"the prompt matrix's {what} has no '|': write the parts to combine after the base, "
                         f"such as 'a cat|smiling|wearing a hat'.")
    out = []
    for k in range(2 ** len(parts)):
        chosen = [p.strip().strip(",") for n, p in enumerate(parts) if k & (1 << n)]
        out.append(JOINERS[joiner].join(chosen + [base] if at_start else [base] + chosen))
    return out


def labels(text: str) -> tuple[list, list]:
    """(column labels, row labels): the first half of the parts (rounded up) label the columns, the rest the rows;
    column c holds the parts of c's bits, row r those of r's; each label lists its parts, (part, held)."""
    parts = text.split("|")[1:]
    across, down = parts[:-(-len(parts) // 2)], parts[-(-len(parts) // 2):]

    def held(names, k):
        return [(name.strip(), bool(k & (1 << i))) for i, name in enumerate(names)]
    return [held(across, c) for c in range(2 ** len(across))], [held(down, r) for r in range(2 ** len(down))]


def matrix(pipe, prompt: str, *, seed: int = 0, at_start: bool = False, different_seeds: bool = False,
           negative: bool = False, joiner: str = "comma", margin: int = 0, style=None, **call) -> Plot:
    """Draw the prompt matrix of ``prompt`` (or of ``call["negative_prompt"]`` when ``negative``), one
    ``pipe.generate`` call per combination with ``call`` (its keyword arguments; with ``image``, and ``mask``,
    ``img2img`` or ``inpaint`` calls, as on A1111's img2img tab) under it: the labeled grid, the
    cells (combination k at index k, each with its PNG parameters) and, as labels, the combinations' texts. Every cell is checked before the first
    draws; a ``latentgen.Stop`` from the callback ends it, the cells not drawn black (as ``plot``). ``style``: a
    function (prompt, negative prompt) -> both styled, applied to each cell's prompts (A1111's styles)."""
    from .. import checks

    checks.whole("margin", margin, 0, fix="use 0 to 500 pixels between the cells (A1111's Grid margins)")
    text = call.get("negative_prompt") if negative else prompt
    if not isinstance(text, str):
        raise ValueError("negative=True varies the negative prompt: give negative_prompt='base|part|...'.")
    field = "negative_prompt" if negative else "prompt"
    texts = prompts(text, at_start, joiner, field)
    calls = [{"prompt": prompt, **call, field: p, "seed": seed + (k if different_seeds else 0)}
             for k, p in enumerate(texts)]
    for c in calls:
        if style is not None:
            c["prompt"], negative = style(c["prompt"], c.get("negative_prompt"))
            c["negative_prompt"] = negative or None
        pipe.settings(**{k: c[k] for k in SETTINGS if k in c})
    images = draw(pipe, calls)
    cols, rows = labels(text)
    return Plot(annotated(images, cols, rows, pad=margin), images, [(c[field] or "", "", "") for c in calls])
