"""One way to check an argument: a ValueError that names the parameter and the fix, raised before
any heavy work. ``True`` is never an integer or a number here, and NaN or infinity never a number."""

from __future__ import annotations

import math
from dataclasses import MISSING, field, fields
from numbers import Integral, Real


def whole(name: str, value, minimum: int | None = None, fix: str | None = None) -> int:
    """``value`` as an int, when it is a whole number (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or (minimum is not None and value < minimum):
        raise ValueError(f"{name}={value!r} is invalid: {fix or f'use a whole number >= {minimum}'}.")
    return int(value)


def number(name: str, value, *, minimum: float | None = None, maximum: float | None = None,
           positive: bool = False, fix: str | None = None) -> float:
    """``value`` as a float, when it is a finite real number (not a bool) in [minimum, maximum]
    (and > 0 with ``positive``)."""
    ok = not isinstance(value, bool) and isinstance(value, Real) and math.isfinite(value)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok or (positive and value <= 0):
        lo = "a positive number" if positive else None
        rng = f"a number in [{minimum}, {maximum}]" if minimum is not None and maximum is not None else None
        fix = fix or "use " + (rng or lo or "a finite number")
        raise ValueError(f"{name}={value!r} is invalid: {fix}.")
    return float(value)


def choice(name: str, value, options, fix: str | None = None):
    """``value`` when it is one of ``options``."""
    if value not in options:
        raise ValueError(f"{name}={value!r} is invalid: {fix or 'use one of ' + ', '.join(map(repr, options))}.")
    return value


def option(default=MISSING, help: str = "", *, choices=None, flag: str | None = None):
    """A config dataclass field that carries its own help text (and choices, and a CLI flag name
    where it differs from the field's): the CLI derives its flags from these, so defaults live once."""
    meta = {"help": help, "choices": choices, "flag": flag}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def check_choices(cfg) -> None:
    """Every field of a config dataclass declared with ``choices`` holds one of them."""
    for f in fields(cfg):
        if f.metadata.get("choices"):
            choice(f.name, getattr(cfg, f.name), f.metadata["choices"])
