"""Sample images of a training run: prompts with their own drawing settings, as kohya's sd-scripts read them
(``--sample_prompts``), drawn every ``validate_every`` steps into ``<out>/samples``.

A prompt line is the prompt and then kohya's options, each after " --":
``a red circle --n blurry --w 256 --h 192 --d 5 --l 7.5 --s 20 --ss euler_a`` (negative prompt, width, height,
seed, guidance scale, steps, sampler). A ``.txt`` file holds one line per prompt (blank lines and lines starting
with '#' are skipped); a ``.json`` file a list of such lines or of objects with kohya's keys (``prompt``,
``negative_prompt``, ``width``, ``height``, ``seed``, ``scale``, ``sample_steps``, ``sample_sampler``); a
``.toml`` file a ``[prompt]`` table of settings shared by its ``[[prompt.subset]]`` tables, one per prompt.
What a prompt leaves out is the trainer's (distill-lcm: the lcm sampler) or the model's default; its seed is the
run's seed + its index. Unlike kohya, a setting it cannot read is refused (naming the line) before training.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import checks, files

# kohya's one-letter options -> its keys (library/train_util.py, line_to_prompt_dict)
OPTIONS = {"n": "negative_prompt", "w": "width", "h": "height", "d": "seed", "l": "scale", "s": "sample_steps",
           "ss": "sample_sampler"}
# kohya's sampler names for the samplers latentgen names otherwise (ddim, pndm, lms, euler, euler_a, heun: the same)
KOHYA_SAMPLERS = {"k_lms": "lms", "k_euler": "euler", "k_euler_a": "euler_a", "dpm_2": "dpm2", "k_dpm_2": "dpm2",
                  "dpm_2_a": "dpm2_a", "k_dpm_2_a": "dpm2_a", "dpmsolver++": "dpm++2m"}
FILE_KINDS = (".txt", ".json", ".toml")


@dataclass(frozen=True)
class Sample:
    """One sample image: ``Pipeline.generate``'s prompt and the settings the line gives (None: the default)."""
    prompt: str
    where: str  # "samples.txt line 3": what an error names
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    guidance: float | None = None
    steps: int | None = None
    scheduler: str | None = None

    def call(self, index: int, run_seed: int, **defaults) -> dict:
        """``generate``'s arguments for sample ``index`` of a run seeded ``run_seed``: ``defaults`` (the trainer's
        scheduler, steps, guidance) under what the line gives."""
        given = {k: getattr(self, k) for k in ("negative_prompt", "width", "height", "guidance", "steps", "scheduler")}
        return {**defaults, **{k: v for k, v in given.items() if v is not None},
                "seed": run_seed + index if self.seed is None else self.seed}


def from_line(line: str, where: str) -> Sample:
    """A kohya prompt line (the prompt, then " --KEY VALUE" options) as a ``Sample``."""
    head, *opts = line.strip().split(" --")
    if head.startswith("--"):
        raise ValueError(f"{where}: {line.strip()!r} starts with an option; write the prompt first, then its options, "
                         f"such as 'a red circle --s 20'.")
    given = {"prompt": head.strip()}
    for opt in opts:
        key, _, value = opt.strip().partition(" ")
        if key.lower() not in OPTIONS:
            raise ValueError(f"{where}: --{key} is not a sample prompt option; use "
                             f"{', '.join('--' + k for k in OPTIONS)} (negative prompt, width, height, seed, guidance "
                             f"scale, steps, sampler), such as 'a red circle --s 20 --d 1'.")
        if not value.strip():
            raise ValueError(f"{where}: --{key} has no value; give one after it, such as '--{key.lower()} "
                             f"{_EXAMPLES[OPTIONS[key.lower()]]}'.")
        given[OPTIONS[key.lower()]] = value.strip()
    return from_dict(given, where)


_EXAMPLES = {"negative_prompt": "blurry", "width": "512", "height": "512", "seed": "1", "scale": "7.5",
             "sample_steps": "20", "sample_sampler": "euler_a"}


def from_dict(d: dict, where: str) -> Sample:
    """A prompt given as kohya's keys (values as numbers or as the text of a line) as a ``Sample``."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: {d!r} is not a prompt; give a prompt line or an object with a \"prompt\".")
    unknown = sorted(set(d) - {"prompt", "enum", *_EXAMPLES})  # enum: kohya numbers its prompts itself
    if unknown:
        raise ValueError(f"{where}: {', '.join(map(repr, unknown))} is not a sample prompt key; use prompt, "
                         f"{', '.join(_EXAMPLES)}.")
    prompt = d.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: the prompt is empty; give the text to draw, such as 'a red circle'.")
    negative = d.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise ValueError(f"{where}: negative_prompt={negative!r} is invalid: give a text.")
    try:
        return Sample(prompt.strip(), where, negative, _size("width", d), _size("height", d),
                      _number("seed", d, int, 0), _number("scale", d, float, 0), _number("sample_steps", d, int, 1),
                      sampler_name(d.get("sample_sampler")))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _number(key: str, d: dict, kind: type, minimum: float):
    value = d.get(key)
    if isinstance(value, str):
        try:
            value = kind(value)
        except ValueError:
            raise ValueError(f"{key}={value!r} is invalid: give a number, such as {_EXAMPLES[key]}.") from None
    if value is None:
        return None
    if kind is int:
        return checks.whole(key, value, minimum, f"use a whole number >= {minimum}, such as {_EXAMPLES[key]}")
    return checks.number(key, value, minimum=minimum, fix=f"use a number >= {minimum}, such as {_EXAMPLES[key]}")


def _size(key: str, d: dict) -> int | None:
    value = _number(key, d, int, 8)
    if value is not None and value % 8:
        raise ValueError(f"{key}={value} is invalid: use a multiple of 8, such as {value // 8 * 8}.")
    return value


def sampler_name(name) -> str | None:
    """kohya's sampler name as latentgen's (its own names are taken too)."""
    if name is None:
        return None
    from .. import schedulers  # diffusers: only when a prompt names a sampler

    ours = KOHYA_SAMPLERS.get(str(name).lower(), str(name).lower())
    if ours not in schedulers.SAMPLERS:
        raise ValueError(f"sample_sampler={name!r} is unknown; use one of: {', '.join(schedulers.SAMPLERS)} (or "
                         f"kohya's {', '.join(KOHYA_SAMPLERS)}).")
    return ours


def read(path: str | Path) -> list[Sample]:
    """The prompts of a kohya sample prompt file (.txt, .json or .toml, as the module docstring says)."""
    path = Path(path)
    if path.suffix.lower() not in FILE_KINDS:
        raise ValueError(f"sample_prompts={str(path)!r} is not a prompt file kohya reads: give a .txt file of prompt "
                         f"lines, a .json list or a .toml file.")
    if not path.is_file():
        raise FileNotFoundError(f"sample_prompts={str(path)!r} does not exist: give a .txt file with a prompt per "
                                f"line, such as 'a red circle --s 20'.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".txt":
        found = [from_line(line, f"{path.name} line {i}") for i, line in enumerate(text.splitlines(), 1)
                 if line.strip() and not line.strip().startswith("#")]
    else:
        found = [(from_line if isinstance(p, str) else from_dict)(p, f"{path.name} prompt {i}")
                 for i, p in enumerate(_entries(path, text), 1)]
    if not found:
        raise ValueError(f"sample_prompts={str(path)!r} has no prompts: write one per line, such as "
                         f"'a red circle --s 20'.")
    return found


def _entries(path: Path, text: str) -> list:
    """A .json file's list, or a .toml file's [[prompt.subset]] tables over its [prompt] settings."""
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            toml = __import__("tomllib" if sys.version_info >= (3, 11) else "tomli")
            data = toml.loads(text)
    except ValueError as e:  # json.JSONDecodeError, tomllib.TOMLDecodeError
        raise ValueError(f"sample_prompts={str(path)!r} is not valid {path.suffix[1:].upper()}: {e}.") from None
    if path.suffix.lower() == ".json":
        if not isinstance(data, list):
            raise ValueError(f"sample_prompts={str(path)!r} holds no list: write [\"a red circle --s 20\", ...].")
        return data
    table = data.get("prompt")
    if not isinstance(table, dict) or not isinstance(table.get("subset"), list):
        raise ValueError(f"sample_prompts={str(path)!r} has no [[prompt.subset]] tables: write a [prompt] table of "
                         f"shared settings and a [[prompt.subset]] table with prompt = \"...\" for each image.")
    shared = {k: v for k, v in table.items() if k != "subset"}
    return [{**shared, **s} if isinstance(s, dict) else s for s in table["subset"]]


def gather(prompts: list[str], path: str | Path | None) -> list[Sample]:
    """The run's sample prompts: ``prompts`` (lines, ``--validation-prompt``) and then those of the file ``path``."""
    return [from_line(p, f"validation prompt {i}") for i, p in enumerate(prompts, 1)] + (read(path) if path else [])


def check_options(opts) -> None:
    """A LoRA trainer's sample settings (``configs.LoraOptions``): the sample prompts read (a bad line or file is
    refused now, not mid-run), their sampler known, and something to draw them, at steps or epochs (not both)."""
    every = [n for n in ("validate_every", "validate_every_epochs") if getattr(opts, n) is not None]
    for n in every:
        checks.whole(n, getattr(opts, n), 1, f"use a whole number >= 1, such as {n}=10")
    if len(every) > 1:
        raise ValueError("give validate_every=N steps or validate_every_epochs=N epochs, not both.")
    found = gather(opts.validation_prompts, opts.sample_prompts)
    sampler_name(opts.sample_sampler)  # kohya's names or latentgen's
    if found and not every and not opts.sample_at_first:
        raise ValueError("sample prompts are given but never drawn: add validate_every=N (--validate-every N) "
                         "to draw them every N steps, validate_every_epochs=N, or sample_at_first=True.")
    if not found and (every or opts.sample_at_first):
        raise ValueError(f"{(every or ['sample_at_first'])[0]} draws the sample prompts, and none is given: add "
                         f"validation_prompts (--validation-prompt) or sample_prompts=FILE (--sample-prompts).")


def check(pipe, found: list[Sample], run_seed: int, **defaults) -> None:
    """Refuse, naming the line, a sample whose settings ``pipe`` would refuse (a size off its VAE's grid, more steps
    than the LCM sampler takes): before training, not at the first sample."""
    for i, s in enumerate(found):
        call = s.call(i, run_seed, **defaults)
        call.pop("negative_prompt", None)
        try:
            pipe.settings(prompt=s.prompt, **call)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{s.where}: {e}") from None


def draw(pipe, found: list[Sample], out: str | Path, step: int, run_seed: int, name: str, **defaults) -> Path:
    """Draw every sample of step ``step`` into ``<out>/samples``: ``<name>_<step>_<index>_<seed>.png`` each (kohya's
    names without its time stamp), its settings in the PNG as A1111 writes them, and ``step-<step>.png``, a grid of
    them all labeled with their prompts. Returns the grid's path."""
    from ..images import grid
    from ..metadata import save_png

    folder = Path(out) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i, s in enumerate(found):
        call = s.call(i, run_seed, **defaults)
        image = pipe.generate(s.prompt, **call)[0]
        save_png(image, folder / f"{name}_{step:06d}_{i:02d}_{call['seed']}.png", image.info.get("parameters"),
                 force=True)
        images.append(image)
    path = folder / f"step-{step:07d}.png"
    with files.atomic_path(path) as tmp:
        grid(images, cols=min(len(images), 6), labels=[s.prompt for s in found]).save(tmp, format="PNG")
    return path
