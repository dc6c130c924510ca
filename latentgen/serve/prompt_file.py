"""A1111's "Prompts from file or textbox" script: one job per line of ``prompt_txt`` (a prompt, or A1111's line
options: ``latentgen.text.lines``), each line the request with that line's fields, planned and checked as a request
of its own before anything is drawn, then drawn in order in one job. ``script_args``: [checkbox_iterate ("Iterate
seed every line"), checkbox_iterate_batch ("Use same random seed for all lines"), prompt_position ("start" or "end":
where a line's prompt goes beside the request's), prompt_txt, make_combined (one grid of every image first)]; A1111
before 1.6 sent [checkbox_iterate, checkbox_iterate_batch, prompt_txt], and there a line's prompt replaced the
request's. Facts from A1111's ``scripts/prompts_from_file.py`` and ``modules/images.py`` (``image_grid``)."""

from __future__ import annotations

import math
import random
from dataclasses import replace

from .errors import ApiError

NAME = "prompts from file or textbox"
CONCATENATED = ("all_prompts", "all_negative_prompts", "all_seeds", "all_subseeds", "infotexts")


def named(req) -> bool:
    return (req.script_name or "").strip().lower() == NAME


def _args(req) -> tuple[bool, bool, str, str, bool]:
    args = list(req.script_args)
    legacy = len(args) == 3 and args[2] not in ("start", "end")  # A1111 1.0-1.5: no prompt_position
    if legacy:
        args = [args[0], args[1], "start", args[2]]
    iterate, same, position, text, combined = (args + [False, False, "start", "", False][len(args):])[:5]
    if position not in ("start", "end"):
        raise ApiError(422, f"script_args[2] (prompt_position) {position!r} of {NAME!r}: send 'start' or 'end'.")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(422, f"script_args[3] (prompt_txt) of {NAME!r} holds no lines: send the prompts, one a line.")
    return bool(iterate), bool(same), "replace" if legacy else position, text, bool(combined)  # legacy: replaced


def _beside(own: str | None, line: str | None, position: str) -> str | None:
    """A line's prompt with the request's, as A1111 puts them (the line's alone when the request has none)."""
    if not line or not own or position == "replace":
        return line or own
    return f"{line} {own}" if position == "start" else f"{own} {line}"


def _update(req, f: dict, position: str, seed: int) -> dict:
    """The request fields of a line's fields ``f``."""
    known = set(type(req).model_fields)
    update = {k: v for k, v in f.items() if k in known and k not in ("prompt", "negative_prompt", "styles")}
    update.update(prompt=_beside(req.prompt, f.get("prompt"), position) or "", seed=f.get("seed", seed),
                  negative_prompt=_beside(req.negative_prompt, f.get("negative_prompt"), position),
                  script_name=None, script_args=[])
    if f.get("styles"):
        update["styles"] = [s.strip() for s in f["styles"].split(",") if s.strip()]
    if f.get("sd_model"):  # a model of the catalog for this line (A1111's override_settings)
        update["override_settings"] = {**(req.override_settings or {}), "sd_model_checkpoint": f["sd_model"]}
    if f.get("do_not_save_samples"):
        update["save_images"] = False
    return update


def plan(req, plan_fn, *, limits, **kw):
    """The request's job: one plan per line (``plan_fn``: ``a1111.plan_txt2img`` or ``plan_img2img``), each checked
    as its own request (a line's error is a 422 naming the line), within ``--max-images`` in all."""
    from latentgen.text.lines import read

    iterate, same, position, text, combined = _args(req)
    try:
        lines = read(text, f"{NAME!r} line")
    except ValueError as e:
        raise ApiError(422, str(e)) from None
    seed, plans = req.seed, []
    if (iterate or same) and seed in (None, -1):  # one random seed, shared (and iterated) by the lines
        seed = random.randrange(4294967294)
    for n, f in lines:
        try:
            plans.append(plan_fn(req.model_copy(update=_update(req, f, position, seed)), limits=limits, **kw))
        except ApiError as e:
            raise ApiError(e.status, f"{NAME!r} line {n}: {e.detail}") from None
        if iterate:
            seed += req.batch_size * req.n_iter
    if sum(p.count for p in plans) > limits.max_images:
        raise ApiError(422, f"the {len(plans)} lines of {NAME!r} make {sum(p.count for p in plans)} images; at most "
                            f"{limits.max_images} (--max-images): send fewer lines, or several requests.")
    return replace(plans[0], script={"lines": plans, "combined": combined, "text": text},
                   parameters=req.model_dump())


def execute(plan, ctx, run_one) -> tuple[list, dict]:
    """Each line's plan drawn by ``run_one`` (``run.execute``) in order; their images and A1111's info, concatenated
    (an interrupt ends the job with what is done); with make_combined, a grid of every image first."""
    images, info = [], None
    for sub in plan.script["lines"]:
        if info is not None and ctx.job.interrupted.is_set():
            break
        got, part = run_one(sub)
        images += got
        info = part if info is None else {**info, **{k: info[k] + part[k] for k in CONCATENATED},
                                          **({"interrupted": True} if part.get("interrupted") else {})}
    if plan.script["combined"] and len(images) > 1:  # A1111's default rows: sqrt(n), rounded
        from latentgen.plot.draw import annotated

        rows = min(round(math.sqrt(len(images))), len(images))
        grid = annotated(images, [""] * -(-len(images) // rows), [""] * rows, pad=0)
        grid.info["parameters"] = "\n".join(info["infotexts"])
        images = [grid] + images
        info = {**info, "all_prompts": [plan.script["text"]] + info["all_prompts"], "index_of_first_image": 1,
                "infotexts": [grid.info["parameters"]] + info["infotexts"]}
    return images, info
