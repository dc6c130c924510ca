"""A1111's prompts that change while drawing: prompt editing, alternation and ``AND``, as texts per step.

A1111's syntax (its ``modules/prompt_parser.py``, "current" scheduling, the default since v1.6):

* ``[from:to:when]`` draws ``from`` up to step ``when``, then ``to``; ``[to:when]`` adds ``to`` after
  ``when``; ``[from::when]`` removes ``from`` after it. ``when`` with a decimal point is a fraction of
  the steps (``0.5``: ``int(0.5 * steps)``), without one a step number (``10``). Step numbers count from 1
  and the text of step s (s = 1 .. steps) is ``from`` while ``s <= when``: at 0 the whole run draws ``to``.
* ``[a|b|c]`` alternates: step s draws option ``(s - 1) % n``; an option may be empty (``[a|]``).
* Both nest, inside each other and inside emphasis (``([red|blue]:1.2)``); what stays is A1111's emphasis
  and plain text, which ``latentgen.text.prompts`` then reads. ``\\[`` and ``\\|`` are literal.
* A prompt A1111's grammar cannot read as a whole (a ``|`` outside square brackets, a trailing lone
  backslash) is drawn as its text, as A1111 does.
* ``AND`` (upper case) splits a prompt into parts drawn together (composable diffusion, Liu et al. 2022,
  https://arxiv.org/abs/2206.01714): each part's noise prediction is guided against the negative prompt and
  the guided differences are summed, part i with its weight (``a cat AND a hat :0.5``; default 1).

``steps(text, n)`` gives the schedule as A1111 builds it: a list of ``(last_step, text)``, the loop's step i
(counting from 0) drawing the first entry with ``i <= last_step`` (``text_at``; so, as in A1111, the loop's
steps 0 and 1 both draw step 1's text: ``[a|b]`` draws a, a, b, a, ...). Neighbouring entries of one
text are merged, so ``[a|a]`` and ``[a:b:0]`` have one entry and draw exactly as ``a`` and ``b``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*\]")  # A1111's SIGNED_NUMBER
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.S)  # text, with backslash escapes kept for the emphasis parser
_AND = re.compile(r"\bAND\b")
_PART_WEIGHT = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.S)  # 'a hat :0.5'


@dataclass(frozen=True)
class Edit:
    """``[before:after:when]``: ``before`` (None: nothing) to step ``when``, ``after`` from then on."""

    before: tuple | None
    after: tuple
    when: str  # as written: '0.5' (a fraction of the steps) or '10' (a step number)


@dataclass(frozen=True)
class Alternate:
    """``[a|b|c]``: one option per step, in turn."""

    options: tuple[tuple, ...]


class _Fail(Exception):
    """The text at this position is not what the construct being read needs."""


def parse(text: str) -> tuple | None:
    """``text`` as a tree: a tuple of plain strings, ``Edit`` and ``Alternate`` nodes (emphasis brackets stay
    text, their insides parsed). None when A1111's grammar cannot read the text (then it is drawn as it is)."""
    out: list = []
    i = 0
    while i < len(text):
        try:
            i = _item(text, i, out)
        except _Fail:
            if text[i] not in "[]():":  # only these may stand alone at the top level
                return None
            out.append(text[i])
            i += 1
    return tuple(out)


def _item(text: str, i: int, out: list) -> int:
    """Read one piece at ``i`` into ``out``: plain text, emphasis, an edit or an alternation; the new position."""
    m = _PLAIN.match(text, i)
    if m:
        out.append(m.group(0))
        return m.end()
    if text[i] == "(":  # '(' prompt ')' or '(' prompt ':' prompt ')'
        inner, j = _prompt(text, i + 1)
        parts = ["(", *inner]
        if j < len(text) and text[j] == ":":
            weight, j = _prompt(text, j + 1)
            parts += [":", *weight]
        if j >= len(text) or text[j] != ")":
            raise _Fail
        out += [*parts, ")"]
        return j + 1
    if text[i] == "[":
        first, j = _prompt(text, i + 1)
        if j < len(text) and text[j] == "]":  # '[' prompt ']': emphasis
            out += ["[", *first, "]"]
            return j + 1
        if j < len(text) and text[j] == "|":
            options = [first]
            while j < len(text) and text[j] == "|":
                option, j = _prompt(text, j + 1)
                options.append(option)
            if j >= len(text) or text[j] != "]":
                raise _Fail
            out.append(Alternate(tuple(options)))
            return j + 1
        if j < len(text) and text[j] == ":":
            when = _NUMBER.match(text, j + 1)
            if when:  # '[to:when]'
                out.append(Edit(None, first, when.group(1)))
                return when.end()
            second, k = _prompt(text, j + 1)
            when = _NUMBER.match(text, k + 1) if k < len(text) and text[k] == ":" else None
            if when:  # '[from:to:when]'
                out.append(Edit(first, second, when.group(1)))
                return when.end()
    raise _Fail


def _prompt(text: str, i: int) -> tuple[tuple, int]:
    """Pieces from ``i`` up to the first character no piece takes (``:``, ``|``, a closing bracket, the end)."""
    out: list = []
    while i < len(text) and text[i] not in ":|)]":
        i = _item(text, i, out)
    return tuple(out), i


def steps(text: str, n: int, *, base_steps: int | None = None) -> list[tuple[int, str]]:
    """A1111's schedule of ``text`` over ``n`` steps: ``[(last_step, text), ...]`` (see the module docstring).
    ``base_steps``: for a hires-fix second pass of ``n`` steps after a first of ``base_steps``, where A1111
    counts ``when`` over both passes (``10`` is the tenth step of the first pass, ``1.5`` the middle of the second)."""
    tree = parse(text)
    if tree is None:
        return [(n, text)]
    offset_step, offset_fraction = (base_steps, 1.0) if base_steps is not None else (0, 0.0)
    whens: dict[int, int] = {}  # id(Edit) -> its step

    def collect(nodes, ends: set[int]) -> None:
        for node in nodes:
            if isinstance(node, Edit):
                v = (float(node.when) - offset_fraction) * n if "." in node.when else float(node.when) - offset_step
                whens[id(node)] = min(n, int(v))
                if whens[id(node)] >= 1:
                    ends.add(whens[id(node)])
                collect((node.before or ()) + node.after, ends)
            elif isinstance(node, Alternate):
                ends.update(range(1, n + 1))
                for option in node.options:
                    collect(option, ends)

    def at(nodes, step: int) -> str:
        parts = []
        for node in nodes:
            if isinstance(node, Edit):
                parts.append(at(node.before or (), step) if step <= whens[id(node)] else at(node.after, step))
            elif isinstance(node, Alternate):
                parts.append(at(node.options[(step - 1) % len(node.options)], step))
            else:
                parts.append(node)
        return "".join(parts)

    ends = {n}
    collect(tree, ends)
    out: list[tuple[int, str]] = []
    for end in sorted(ends):
        text_then = at(tree, end)
        if out and out[-1][1] == text_then:
            out[-1] = (end, text_then)  # the same text on: one entry
        else:
            out.append((end, text_then))
    return out


def check_parts(text: str, cfg: bool) -> None:
    """``AND`` parts and part weights guide each part against the negative prompt: they need CFG (guidance > 1)."""
    split = parts(text)
    if not cfg and (len(split) > 1 or split[0][1] != 1):
        raise ValueError(f"prompt {text!r} uses A1111's AND or a part weight (':0.5' at its end), which guides each "
                         f"part against the negative prompt: use guidance > 1, or write 'and' in lower case (and "
                         f"no ':weight' at the end).")


def fixed(text: str) -> str | None:
    """The one text ``text`` stands for at every step (``[a:b:0]`` -> ``b``), or None when it changes by step
    or has ``AND`` parts: what a single embedding (``Pipeline.encode_prompt``) can hold."""
    entries = steps(text, 10_000)
    return entries[0][1] if len(entries) == 1 and len(parts(entries[0][1])) == 1 else None


def text_at(schedule: list[tuple[int, str]], i: int) -> str:
    """The text the loop's step ``i`` (from 0) draws: the first entry with ``i <= last_step`` (A1111's rule)."""
    return next((text for end, text in schedule if i <= end), schedule[-1][1])


def parts(text: str) -> list[tuple[str, float]]:
    """``AND``'s parts of a prompt with their weights: ``"a cat AND a hat :0.5"`` -> ``[("a cat", 1.0), ("a hat",
    0.5)]``. As in A1111, a ``:weight`` at the end of a prompt without ``AND`` weighs its one part too."""
    out = []
    for piece in _AND.split(text):
        m = _PART_WEIGHT.match(piece)
        out.append((piece, 1.0) if m.group(2) is None else (m.group(1), float(m.group(2))))
    return out
