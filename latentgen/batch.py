"""Many images to disk: a list of jobs (one image each), streamed out as they are made, resumable,
shared among processes.

    latentgen batch jobs.jsonl --out runs/batch
    latentgen batch --prompts prompts.txt --seeds 0-99 --out runs/batch
    accelerate launch --multi_gpu --num_processes 2 --num_cpu_threads_per_process 2 \
        -m latentgen.cli batch jobs.jsonl --out runs/batch

A job is one JSON object per line: ``prompt`` and ``seed``, and any other ``generate`` argument
(``negative_prompt``, ``steps``, ``guidance``, ``width``, ``height``, ``scheduler``). Job ``i``
becomes ``OUT/i.png`` (six digits) with its settings in the PNG's parameters chunk, written
atomically, and then one line in ``OUT/manifest-<process>.jsonl`` (file, sha256, job). A job is
done when its manifest line is there and its file matches it: a re-run (after a kill, with any
number of processes) skips those and redraws the rest. Process ``p`` of ``n`` takes jobs
``p, p + n, ...``; each image is drawn alone from its own seed, so it is bit-identical whatever
the number of processes (``tests/test_batch.py``), given the same threads per process: on CPU,
float sums can depend on torch's thread count, and the launcher sets 1 unless told otherwise.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from . import checks

JOB_KEYS = ("prompt", "seed", "negative_prompt", "steps", "guidance", "width", "height", "scheduler")


def read_jobs(path: str | Path) -> list[dict]:
    """The jobs of a JSONL file, each checked for its keys and a text prompt (line numbers in errors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"jobs file {str(path)!r} does not exist: give a JSONL file with one "
                                f'{{"prompt": ..., "seed": ...}} object per line.')
    jobs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            job = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n} is not JSON ({e.msg}): write one object per line, such as "
                             f'{{"prompt": "a red circle on a blue background", "seed": 1}}.') from None
        jobs.append(check_job(job, f"{path}:{n}"))
    if not jobs:
        raise ValueError(f"{path} holds no jobs: write one JSON object per line.")
    return jobs


def check_job(job, where: str) -> dict:
    """One job's keys and the types a model is not needed to check."""
    if not isinstance(job, dict):
        raise ValueError(f"{where}: a job is a JSON object, not {type(job).__name__}.")
    unknown = sorted(set(job) - set(JOB_KEYS))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; a job may have {', '.join(JOB_KEYS)}.")
    if not isinstance(job.get("prompt"), str):
        raise ValueError(f"{where}: 'prompt' must be text, such as \"a red circle on a blue background\".")
    checks.whole(f"{where}: seed", job.get("seed", 0), 0)
    return {"seed": 0, **job}


def prompt_jobs(prompts_file: str | Path, seeds: str) -> list[dict]:
    """Every prompt of a text file (one per line) with every seed of a range ``A-B`` (inclusive) or ``S``."""
    path = Path(prompts_file)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {str(path)!r} does not exist: give a text file, one prompt per line.")
    prompts = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not prompts:
        raise ValueError(f"{path} holds no prompts: write one per line.")
    return [{"prompt": p, "seed": s} for p in prompts for s in seed_range(seeds)]


def seed_range(text: str) -> range:
    """``"0-99"`` -> range(0, 100); ``"7"`` -> range(7, 8)."""
    first, _, last = text.partition("-")
    try:
        a, b = int(first), int(last or first)
    except ValueError:
        raise ValueError(f"seeds={text!r} is invalid: use a range such as 0-99, or one seed such as 7.") from None
    if a < 0 or b < a:
        raise ValueError(f"seeds={text!r} is invalid: use A-B with 0 <= A <= B, such as 0-99.")
    return range(a, b + 1)


def image_name(index: int) -> str:
    return f"{index:06d}.png"


def done_jobs(out: Path) -> set[int]:
    """Indices of jobs with a manifest line (any process's) whose file is there with that sha256."""
    done = set()
    for manifest in sorted(out.glob("manifest-*.jsonl")):
        for line in manifest.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: its image is redrawn
                continue
            f = out / row["file"]
            if f.is_file() and hashlib.sha256(f.read_bytes()).hexdigest() == row["sha256"]:
                done.add(row["index"])
    return done


def run(pipe, jobs: list[dict], out: str | Path, *, process: int = 0, processes: int = 1,
        progress: bool = True) -> dict:
    """Draw this process's share of ``jobs`` that are not done into ``out``; returns figures
    (images drawn, skipped, seconds, images per second). Every job's settings are checked on the
    model before the first image."""
    from tqdm import tqdm

    from . import metadata

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for job in jobs:  # cheap: settings only, no model call
        pipe.settings(**{k: v for k, v in job.items() if k in ("steps", "guidance", "width", "height",
                                                               "scheduler")})
    mine = range(process, len(jobs), processes)
    done = done_jobs(out)
    todo = [i for i in mine if i not in done]
    manifest = out / f"manifest-{process}.jsonl"
    t0 = time.perf_counter()
    with open(manifest, "a") as log:
        for i in tqdm(todo, desc="images", unit="img", disable=not progress):
            job = jobs[i]
            image = pipe.generate(job["prompt"], **{k: v for k, v in job.items() if k != "prompt"})[0]
            path = metadata.save_png(image, out / image_name(i), image.info.get("parameters"), force=True)
            row = {"index": i, "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                   "job": job}
            log.write(json.dumps(row) + "\n")
            log.flush()
    seconds = time.perf_counter() - t0
    return {"drawn": len(todo), "skipped": len(mine) - len(todo), "seconds": round(seconds, 2),
            "images_per_second": round(len(todo) / seconds, 3) if todo and seconds > 0 else None}
