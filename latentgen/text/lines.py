"""A1111's "Prompts from file or textbox" lines: one job per line, either a prompt as it is, or options as A1111's
script reads them (``--prompt "a cat" --negative_prompt blurry --steps 20 --cfg_scale 7 --seed 5``: a prompt or
negative prompt runs to the next ``--``, every other option takes one value). The options keep A1111's field names
(``fields``); ``job`` turns them into ``Pipeline.generate`` arguments for ``latentgen batch``. Where A1111 quietly
takes an unreadable line as a prompt, a line that starts with ``--`` and cannot be read is refused here, naming the
line and the option. Facts from A1111's ``scripts/prompts_from_file.py``."""

from __future__ import annotations

import shlex


def _flag(value: str) -> bool:
    return value == "true"  # A1111's: anything else is false


# A1111's options and how their values are read; "sd_model" is the server's (a model of its catalog)
OPTIONS = {"prompt": str, "negative_prompt": str, "seed": int, "subseed": int, "subseed_strength": float,
           "seed_resize_from_w": int, "seed_resize_from_h": int, "sampler_name": str, "batch_size": int,
           "n_iter": int, "steps": int, "cfg_scale": float, "width": int, "height": int, "tiling": _flag,
           "restore_faces": _flag, "styles": str, "sd_model": str, "prompt_for_display": str,
           "do_not_save_samples": _flag, "do_not_save_grid": _flag}
REFUSED = {"sampler_index": "an index into A1111's own sampler list: give --sampler_name 'Euler a'",
           "outpath_samples": "output folders are not chosen by a prompt line", "outpath_grids": "output folders are "
           "not chosen by a prompt line"}


def fields(line: str, where: str = "the line") -> dict:
    """A1111's fields of one line: ``{"prompt": line}`` for a plain prompt, else its options read as A1111 reads them;
    a line of options that cannot be read (an unknown option, a missing or malformed value) is a ValueError naming
    ``where`` and the option."""
    line = line.strip()
    if not line.startswith("--"):
        return {"prompt": line}
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise ValueError(f"{where}: {e} (close the quotes around a prompt)") from None
    out, i = {}, 0
    while i < len(words):
        tag = words[i][2:] if words[i].startswith("--") else None
        if tag in REFUSED:
            raise ValueError(f"{where}: --{tag} is not taken: {REFUSED[tag]}.")
        if not tag or tag not in OPTIONS:
            what = f"--{tag} is not an option of A1111's prompt lines" if tag else f"{words[i]!r} is not an option"
            raise ValueError(f"{where}: {what}; write '--name value' pairs of --{', --'.join(OPTIONS)}.")
        if i + 1 >= len(words) or words[i + 1].startswith("--"):
            raise ValueError(f"{where}: --{tag} has no value: write it after the option, such as --{tag} 20.")
        end = i + 2
        if tag in ("prompt", "negative_prompt"):  # up to the next option, its words joined by spaces
            while end < len(words) and not words[end].startswith("--"):
                end += 1
        try:
            out[tag] = OPTIONS[tag](" ".join(words[i + 1:end]))
        except ValueError:
            kind = "a whole number" if OPTIONS[tag] is int else "a number"
            raise ValueError(f"{where}: --{tag} {words[i + 1]!r} is not {kind}.") from None
        i = end
    return out


def read(text: str, where: str = "line") -> list[tuple[int, dict]]:
    """(line number, fields) of every non-empty line of ``text`` (a file's or a textbox's), each checked."""
    lines = [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1)]
    return [(n, fields(ln, f"{where} {n}")) for n, ln in lines if ln]


def job(f: dict, where: str = "the line") -> tuple[dict, int]:
    """(``Pipeline.generate`` arguments, how many images: batch_size x n_iter) of a line's fields, for
    ``latentgen batch``; what a batch cannot honour (a model, styles, face restoration) is refused."""
    from ..plot.values import sampler

    if not f.get("prompt"):
        raise ValueError(f"{where}: a line of options needs its --prompt: a batch has no prompt of its own.")
    for name, why in (("sd_model", "give the model with --model"), ("styles", "write the style into the prompt"),
                      ("restore_faces", "there is no face restoration")):
        if f.get(name):
            raise ValueError(f"{where}: --{name} is not taken by latentgen batch: {why}.")
    names = {"prompt": "prompt", "negative_prompt": "negative_prompt", "seed": "seed", "steps": "steps",
             "cfg_scale": "guidance", "width": "width", "height": "height", "tiling": "tiling"}
    args = {names[k]: v for k, v in f.items() if k in names}
    if "sampler_name" in f:
        try:
            args["scheduler"] = sampler(f["sampler_name"])
        except ValueError as e:
            raise ValueError(f"{where}: --sampler_name: {e}") from None
    if any(k in f for k in ("subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h")):
        size = (f.get("seed_resize_from_w", 0), f.get("seed_resize_from_h", 0))
        args["variation"] = {"seed": f.get("subseed", 0), "strength": f.get("subseed_strength", 0.0),
                             "resize_from": list(size) if min(size) > 0 else None}
    count = f.get("batch_size", 1) * f.get("n_iter", 1)
    if min(f.get("batch_size", 1), f.get("n_iter", 1)) < 1:
        raise ValueError(f"{where}: --batch_size and --n_iter are counts of images: use 1 or more.")
    return args, count
