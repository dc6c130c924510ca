"""``latentgen batch``: many images to a folder, resumable, shared among processes (``latentgen.batch``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .args import add_model_args, load_model

MAX_PROMPT_JOBS = 1_000_000  # prompts x seeds of one --prompts batch: days of images, ~0.5 GB of jobs in memory


def cmd_batch(args: argparse.Namespace) -> int:
    import torch
    from accelerate import PartialState

    from .. import batch

    if (args.jobs is None) == (args.prompts is None):
        raise ValueError("give a jobs file (JSONL) or --prompts FILE with --seeds A-B, not both.")
    if args.jobs is not None and args.seeds is not None:  # a jobs file carries its own seeds
        raise ValueError("--seeds goes with --prompts only: a jobs file gives each job its \"seed\"; drop "
                         "--seeds, or use --prompts FILE --seeds A-B.")
    jobs = batch.read_jobs(args.jobs) if args.jobs else prompt_jobs(args.prompts, args.seeds or "0")
    # one process, or one of several under `accelerate launch` (gloo on CPU, as finetune-lora)
    state = PartialState(cpu=not torch.cuda.is_available())
    device = args.device or (state.device if state.num_processes > 1 else None)
    pipe = load_model(args, device=device)
    figures = batch.run(pipe, jobs, args.out, process=state.process_index, processes=state.num_processes,
                        progress=state.is_local_main_process,  # a job's refiner or hires model: --vae, --backend too
                        load=lambda path: load_model(args, path, device=device, prediction_type=None))
    print(json.dumps({"process": state.process_index, "jobs": len(jobs), **figures}))
    return 0


def prompt_jobs(prompts_file: str | Path, seeds: str) -> list:
    """Every prompt of a text file (one per line) with every seed of a range ``A-B`` (inclusive) or ``S``: the
    jobs of ``--prompts FILE --seeds A-B``. A line may be A1111's "Prompts from file" options instead
    (``--prompt "a cat" --steps 20 --seed 5``, ``latentgen.text.lines``): its ``--seed`` replaces the range, and
    ``--batch_size`` x ``--n_iter`` images follow each seed (seed, seed + 1, ...; a range is stepped by that count,
    so no seed is drawn twice)."""
    from .. import batch
    from ..text import lines as a1111_lines

    path = Path(prompts_file)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {str(path)!r} does not exist: give a text file, one prompt per line.")
    lines = [(n, ln.strip()) for n, ln in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1)]
    prompts = [(n, p) for n, p in lines if p]
    if not prompts:
        raise ValueError(f"{path} holds no prompts: write one per line.")
    r = seed_range(seeds)
    parsed = [(n, *a1111_lines.job(a1111_lines.fields(p, f"{path}:{n}"), f"{path}:{n}")) for n, p in prompts]
    count = sum(k if "seed" in a else -(-(r.stop - r.start) // k) * k for _, a, k in parsed)  # not len(r): 2**63
    if count > MAX_PROMPT_JOBS:  # each job is held in memory (~0.5 KB)
        raise ValueError(f"--seeds {seeds} with the {len(prompts)} prompt(s) of {path} makes {count} images; one "
                         f"batch takes at most {MAX_PROMPT_JOBS}: give a shorter range, and each further range its "
                         f"own --out.")
    return [batch.Job({**a, "seed": s + i}, f"{path}:{n} with seed {s + i}") for n, a, k in parsed
            for s in ([a["seed"]] if "seed" in a else range(r.start, r.stop, k)) for i in range(k)]


def seed_range(text: str) -> range:
    """``"0-99"`` -> range(0, 100); ``"7"`` -> range(7, 8)."""
    from ..request import MAX_SEED

    first, _, last = text.partition("-")
    try:
        a, b = int(first), int(last or first)
    except ValueError:
        raise ValueError(f"--seeds {text!r} is invalid: use a range such as 0-99, or one seed such as 7.") from None
    if a < 0 or b < a or b > MAX_SEED:
        raise ValueError(f"--seeds {text!r} is invalid: use A-B with 0 <= A <= B <= {MAX_SEED}, such as 0-99.")
    return range(a, b + 1)


def add_parser(sub) -> None:
    b = sub.add_parser("batch", help="many images to a folder: resumable, one manifest line per image",
                       description="Draw every job (one JSON object per line: prompt, seed and any generate "
                                   "argument) to OUT/NNNNNN.png; a re-run skips images already done. Under "
                                   "`accelerate launch` each process draws its own share.")
    b.add_argument("jobs", nargs="?", default=None, help="JSONL file, one job per line")
    b.add_argument("--prompts", default=None, help="instead of a jobs file: prompts, one per line")
    b.add_argument("--seeds", default=None, help="with --prompts only: seeds A-B (inclusive) for every prompt "
                                                 "(default 0)")
    b.add_argument("--out", required=True, help="output folder (PNGs and manifest-*.jsonl)")
    add_model_args(b)
    b.set_defaults(func=cmd_batch)
