"""``latentgen batch``: many images to a folder, resumable, shared among processes (``latentgen.batch``)."""

from __future__ import annotations

import argparse
import json

from .args import add_model_args, load_model


def cmd_batch(args: argparse.Namespace) -> int:
    import torch
    from accelerate import PartialState

    from .. import batch

    if (args.jobs is None) == (args.prompts is None):
        raise ValueError("give a jobs file (JSONL) or --prompts FILE with --seeds A-B, not both.")
    if args.jobs is not None and args.seeds is not None:  # a jobs file carries its own seeds
        raise ValueError("--seeds goes with --prompts only: a jobs file gives each job its \"seed\"; drop "
                         "--seeds, or use --prompts FILE --seeds A-B.")
    jobs = batch.read_jobs(args.jobs) if args.jobs else batch.prompt_jobs(args.prompts, args.seeds or "0")
    # one process, or one of several under `accelerate launch` (gloo on CPU, as finetune-lora)
    state = PartialState(cpu=not torch.cuda.is_available())
    device = args.device or (state.device if state.num_processes > 1 else None)
    pipe = load_model(args, device=device)
    figures = batch.run(pipe, jobs, args.out, process=state.process_index, processes=state.num_processes,
                        progress=state.is_local_main_process)
    print(json.dumps({"process": state.process_index, "jobs": len(jobs), **figures}))
    return 0


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
