"""Many images to disk: a list of jobs (one image each), streamed out as they are made, resumable,
shared among processes.

    latentgen batch jobs.jsonl --out runs/batch
    latentgen batch --prompts prompts.txt --seeds 0-99 --out runs/batch
    accelerate launch --multi_gpu --num_processes 2 --num_cpu_threads_per_process 2 \
        -m latentgen.cli batch jobs.jsonl --out runs/batch

A job is one JSON object per line: ``prompt`` and ``seed``, and any other ``generate`` argument
(``negative_prompt``, ``steps``, ``guidance``, ``width``, ``height``, ``scheduler``, ``clip_skip``,
``prompt_syntax``, ``tiling``, ``guidance_rescale``), and as JSON objects of their fields ``variation`` (``latentgen.Variation``:
seed, strength, resize_from), ``hires`` (``latentgen.Hires``: scale, strength, upscaler, steps, ...) and
``refiner`` (model: a folder or file, switch_at; each model loaded once; a hires pass's ``model`` too). Job ``i`` becomes ``OUT/i.png`` (six
digits) with its settings in the PNG's parameters chunk: one line in ``OUT/manifest-<process>.jsonl`` (index, file, sha256, job) is
written first, then the file appears in one rename. A job is done when a manifest line holds the
job as it is now and its file matches that line's sha256: a re-run (after a kill, with any number
of processes, after the jobs file was edited or ``--seeds`` extended) skips those and redraws the
rest, replacing the old image. Every job's settings and ``<lora:NAME>`` tags are checked on the model
before the first image. A file ``OUT/i.png`` that no manifest names is the user's: the run refuses
before drawing. Process ``p`` of ``n`` takes jobs ``p, p + n, ...``; each image is drawn
alone from its own seed, so it is bit-identical whatever the number of processes
(``tests/test_batch.py``), given the same threads per process: on CPU, float sums can depend on
torch's thread count, and the launcher sets 1 unless told otherwise.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

from . import files
from .backends import raise_if_interrupted
from .guard import NonFiniteError
from .models.refiner import Refiner
from .request import seeds
from .starts import Variation
from .text import prompts, xl
from .text.schedule import check_parts
from .upscale.hires import Hires

SETTING_KEYS = ("seed", "steps", "guidance", "width", "height", "scheduler", "clip_skip", "prompt_syntax", "tiling",
                "guidance_rescale")
OBJECT_FIELDS = {key: tuple(f.name for f in fields(cls)) for key, cls in  # a refiner's model: a path in a job
                 (("variation", Variation), ("hires", Hires), ("refiner", Refiner))}
EXAMPLES = {"variation": {"seed": 7, "strength": 0.3}, "hires": {"scale": 2, "strength": 0.5},
            "refiner": {"model": "path/to/sdxl-refiner", "switch_at": 0.8}}
JOB_KEYS = ("prompt", "negative_prompt", *SETTING_KEYS, *OBJECT_FIELDS)


@dataclass(frozen=True)
class Job:
    """One image: ``generate``'s arguments (prompt, seed, ...) and where the job was written, for errors."""

    args: dict
    where: str  # "jobs.jsonl:3", "prompts.txt:2 with seed 7", or "job 3" for a dict given in Python


def read_jobs(path: str | Path) -> list[Job]:
    """The jobs of a JSONL file, each checked for its keys, a text prompt and a seed (line numbers in errors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"jobs file {str(path)!r} does not exist: give a JSONL file with one "
                                f'{{"prompt": ..., "seed": ...}} object per line.')
    jobs = []
    for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):  # -sig: a BOM is not text
        if not line.strip():
            continue
        try:
            job = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n} is not JSON ({e.msg}): write one object per line, such as "
                             f'{{"prompt": "a red circle on a blue background", "seed": 1}}.') from None
        jobs.append(Job(check_job(job, f"{path}:{n}"), f"{path}:{n}"))
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
    if job.get("negative_prompt") is not None and not isinstance(job["negative_prompt"], str):
        raise ValueError(f"{where}: 'negative_prompt' must be text, such as \"blurry\", or left out.")
    try:
        seeds(job.get("seed", 0), 1)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    for key, names in OBJECT_FIELDS.items():  # a refiner needs its "model": a folder or file; a hires pass may have one
        value = job.get(key)
        if value is not None and (not isinstance(value, dict) or not set(value) <= set(names) or
                                  (key == "refiner" and not isinstance(value.get("model"), str)) or
                                  (key == "hires" and not isinstance(value.get("model", ""), str))):
            raise ValueError(f"{where}: '{key}' is a JSON object of {', '.join(names)}, such as "
                             f"{json.dumps(EXAMPLES[key])}.")
    size = (job.get("variation") or {}).get("resize_from")
    if size is not None and not (isinstance(size, list) and len(size) == 2):
        raise ValueError(f"{where}: 'variation.resize_from' is [width, height] in pixels, such as [512, 512].")
    return {"seed": 0, **job}


def call_args(args: dict, models: dict) -> dict:
    """A job's ``generate`` keyword arguments: its JSON objects as latentgen's (``models``: path -> loaded model, for
    a refiner's and a hires pass's ``model``)."""
    kw = {k: v for k, v in args.items() if k != "prompt" and v is not None}
    if "variation" in kw:
        size = kw["variation"].get("resize_from")
        kw["variation"] = Variation(**{**kw["variation"], "resize_from": None if size is None else tuple(size)})
    if "hires" in kw:
        kw["hires"] = Hires(**{**kw["hires"], "model": models.get(kw["hires"].get("model"))})
    if "refiner" in kw:
        kw["refiner"] = Refiner(**{**kw["refiner"], "model": models[kw["refiner"]["model"]]})
    return kw


def image_name(index: int) -> str:
    return f"{index:06d}.png"


def as_jobs(jobs: list) -> list[Job]:
    """``Job`` records; a plain dict (a job given in Python) is checked as a jobs-file line would be."""
    return [j if isinstance(j, Job) else Job(check_job(j, f"job {i}"), f"job {i}") for i, j in enumerate(jobs)]


def manifest_rows(out: Path) -> list[dict]:
    """Every well-formed line of every process's manifest in ``out``, oldest first per file. A line
    cut by a kill (not JSON) is skipped: its image is redrawn."""
    rows = []
    for manifest in sorted(out.glob("manifest-*.jsonl")):
        for line in manifest.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and {"index", "file", "sha256", "job"} <= row.keys():
                rows.append(row)
    return rows


def same_job(stored, args: dict) -> bool:
    """A manifest line's job is ``args``, compared as the JSON text both would be written as."""
    return json.dumps(stored, sort_keys=True) == json.dumps(args, sort_keys=True)


def done_jobs(out: str | Path, jobs: list) -> set[int]:
    """Indices of ``jobs`` with a manifest line (any process's) that holds that job as it is now and
    whose file is there with that sha256. Order does not matter: the file's bytes pick the line."""
    out, jobs = Path(out), as_jobs(jobs)
    sha: dict[int, str | None] = {}  # index -> its file's sha256 now
    done = set()
    for row in manifest_rows(out):
        i = row["index"]
        if not (isinstance(i, int) and 0 <= i < len(jobs) and row["file"] == image_name(i)) or \
                not same_job(row["job"], jobs[i].args):
            continue
        if i not in sha:
            f = out / image_name(i)
            sha[i] = hashlib.sha256(f.read_bytes()).hexdigest() if f.is_file() else None
        if sha[i] == row["sha256"]:
            done.add(i)
    return done


def check_all(pipe, jobs: list[Job], load=None) -> dict:
    """Every job's settings on the model and its LoRA tags (no model call; each tagged LoRA file read
    once), errors prefixed with the job's line. Returns the models the jobs name (refiners, hires passes'), each
    loaded once (path -> model: ``load(path)``, by default on the model's device and dtype) and checked against
    the model."""
    import latentgen

    from . import precision
    from .models import refiner
    from .upscale import hires

    load = load or (lambda path: latentgen.load(path, device=precision.device_of(pipe.unet), dtype=pipe.dtype))

    top, read, models = xl.max_clip_skip(pipe.text_encoder, pipe.xl), set(), {}
    for job in jobs:
        try:
            for path in ((job.args.get(key) or {}).get("model") for key in ("refiner", "hires")):
                if path is not None and path not in models:
                    models[path] = load(path)
            kw = call_args(job.args, models)
            s = pipe.settings(prompt=job.args.get("prompt"), variation=kw.get("variation"),
                              **{k: v for k, v in kw.items() if k in SETTING_KEYS})
            pipe.check_limits(s, 1)
            if "hires" in kw:  # its values, and the size of its second pass
                size = hires.sizes(hires.check(kw["hires"], pipe.vae_scale_factor), s.width, s.height,
                                   pipe.vae_scale_factor)[1]
                pipe.check_limits(replace(s, width=size[0], height=size[1]), 1)
                if kw["hires"].model is not None:
                    hires.check_model(kw["hires"].model, pipe)
            if "refiner" in kw:
                refiner.check(kw["refiner"], pipe)
            if s.clip_skip > top:  # else found only when the text is encoded, after earlier images
                raise ValueError(f"clip_skip={s.clip_skip} is invalid: this model's text encoders take 1 (the last "
                                 f"layer{'s used' if pipe.xl else ''}) to {top}, such as clip_skip=2.")
            if s.prompt_syntax == "a1111":
                pipe.loras.check_tags(job.args.get("prompt", ""), job.args.get("negative_prompt"), read)
                check_parts(prompts.extra_networks(str(job.args.get("prompt", "")))[0], s.cfg)  # AND needs CFG
        except (ValueError, TypeError, FileNotFoundError) as e:
            raise type(e)(f"{job.where}: {e}") from None
    return models


def check_no_user_files(out: Path, indices) -> None:
    """Refuse when ``OUT/NNNNNN.png`` of a job to draw exists and no manifest names it: the user's own file."""
    ours = {row["file"] for row in manifest_rows(out)}
    theirs = [out / image_name(i) for i in indices if image_name(i) not in ours and (out / image_name(i)).exists()]
    if theirs:
        shown = ", ".join(map(str, theirs[:5])) + (f" and {len(theirs) - 5} more" if len(theirs) > 5 else "")
        raise FileExistsError(f"{shown} exist(s) and no manifest in {out} names them, so they are not this "
                              f"batch's images: give another --out, or move them away.")


def open_manifest(path: Path):
    """The manifest for appending; a last line cut by a kill is ended first, so the next line stays whole."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, 2)
            cut = f.read(1) != b"\n"
        if cut:
            with open(path, "a") as f:
                f.write("\n")
    return open(path, "a")


def run(pipe, jobs: list, out: str | Path, *, process: int = 0, processes: int = 1,
        progress: bool = True, load=None) -> dict:
    """Draw this process's share of ``jobs`` (``Job`` records, or dicts) that are not done into
    ``out``; returns figures (images drawn, skipped, seconds, images per second). Every job's
    settings are checked on the model, and ``out`` for files that are not this batch's, before the
    first image. Ctrl-C raises ``BatchInterrupted``; another run drawing into ``out`` as this process, FileExistsError.
    ``load``: path -> model, for the refiners and hires models jobs name (``check_all``)."""
    out, jobs = Path(out), as_jobs(jobs)
    models = check_all(pipe, jobs, load)
    out.mkdir(parents=True, exist_ok=True)
    # a second run drawing here as the same process would draw every image twice: refused, naming the holder
    busy = f"{out} is in use by another latentgen batch (process {process}): wait for it, or give another --out"
    with files.lock(out / f".lock-{process}", busy):
        mine = range(process, len(jobs), processes)
        done = done_jobs(out, jobs)
        todo = [i for i in mine if i not in done]
        check_no_user_files(out, todo)
        t0 = time.perf_counter()
        try:
            with open_manifest(out / f"manifest-{process}.jsonl") as log:
                _draw(pipe, jobs, todo, out, log, progress, models)
        except KeyboardInterrupt:
            written = len(done_jobs(out, jobs)) - len(done)
            raise BatchInterrupted(f"{written} of this run's {len(todo)} images are in {out}, each whole and named in "
                              f"manifest-{process}.jsonl; run the same command again to draw the rest.") from None
    seconds = time.perf_counter() - t0
    return {"drawn": len(todo), "skipped": len(mine) - len(todo), "seconds": round(seconds, 2),
            "images_per_second": round(len(todo) / seconds, 3) if todo and seconds > 0 else None}


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``run``: the images written so far stay, each whole; the message says how many."""


def _draw(pipe, jobs: list, todo: list[int], out: Path, log, progress: bool, models: dict) -> None:
    """Draw jobs ``todo`` into ``out``, each file written atomically after its manifest line."""
    from tqdm import tqdm

    from . import metadata

    for i in tqdm(todo, desc="images", unit="img", disable=not progress):
        args = jobs[i].args
        try:
            image = pipe.generate(args["prompt"], **call_args(args, models))[0]
        except (ValueError, TypeError, NonFiniteError) as e:  # which job, in a file of thousands
            raise_if_interrupted(e)  # a Ctrl-C in disguise: BatchInterrupted says how many images are whole
            raise type(e)(f"{jobs[i].where}: {e}") from e
        # the manifest line comes before the file: a file the manifest does not name is never ours
        with files.atomic_path(out / image_name(i)) as tmp:
            metadata.save_png(image, tmp, image.info.get("parameters"), force=True)
            row = {"index": i, "file": image_name(i), "sha256": hashlib.sha256(tmp.read_bytes()).hexdigest(),
                   "job": args}
            log.write(json.dumps(row) + "\n")
            log.flush()
