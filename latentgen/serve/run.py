"""Running a checked plan (``latentgen.serve.a1111.Task``) in the worker: the LoRAs its prompt names,
the latentgen calls (one per A1111 batch), the images, A1111's ``info`` (``Processed.js()``), and the
``--outdir`` copies. An interrupt keeps what is done, as A1111 does."""

from __future__ import annotations

import re
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path

from PIL import Image

from latentgen import metadata

from .a1111 import check_pixels
from .errors import ApiError, Interrupted


@contextmanager
def loras_loaded(pipe, files: dict[str, Path]):
    """Load the LoRAs a prompt's tags name, at scale 0, for one job; the pipeline's tag handling sets each
    one's weight while it samples. They are unloaded after, however the job ends."""
    added = []
    try:
        for name, path in files.items():
            if name not in pipe.loras.loaded:
                pipe.load_lora(path, name=name, scale=0.0)
                added.append(name)
        yield
    finally:
        for name in reversed(added):
            pipe.unload_lora(name)


def _call(pipe, plan, seed: int, n: int, **common):
    """The latentgen call for ``n`` images from ``seed`` (txt2img, img2img, inpaint or outpaint, as the plan says);
    image i of the request starts from init image i % len(init_images), with variation seed subseed + i."""
    if plan.variation is not None:
        common["variation"] = replace(plan.variation, seed=plan.variation.seed + seed - plan.seed)
    if plan.mode == "txt2img":
        return pipe.generate(plan.prompt, seed=seed, num_images=n, hires=plan.hires, **common)
    init = plan.init_images[(seed - plan.seed) % len(plan.init_images)]
    if plan.script and "outpaint" in plan.script:  # Poor man's outpainting: the picture grows on its sides
        o = plan.script
        return pipe.outpaint(plan.prompt, init, **o["outpaint"], fill=o["fill"], mask_blur=o["mask_blur"],
                             strength=plan.strength, seed=seed, num_images=n, **common)
    if plan.mask is None:
        return pipe.img2img(plan.prompt, init, strength=plan.strength, seed=seed, num_images=n,
                            resize_mode=plan.resize_mode, **common)
    return pipe.inpaint(plan.prompt, init, plan.mask, strength=plan.strength, seed=seed, num_images=n, fill=plan.fill,
                        mask_blur=plan.mask_blur, only_masked=plan.only_masked, padding=plan.padding, **common)


def _cell_args(plan, common: dict) -> tuple[str, dict]:
    """(prompt, call arguments) of a script's cells (the X/Y/Z plot's, the prompt matrix's): with prompt styles, the
    unstyled prompts and the styler, so each cell is styled after its own change to the prompt, as A1111's. On
    img2img: the first init image's img2img call (inpainting with a mask), as A1111's scripts draw it."""
    from .img2img_scripts import picture_call

    given, prompt = dict(common), plan.prompt
    given.update({"hires": plan.hires} if plan.mode == "txt2img" else picture_call(plan))
    if plan.variation is not None:
        given["variation"] = plan.variation
    if "style" in plan.script:
        (prompt, given["negative_prompt"]), given["style"] = plan.script["unstyled"], plan.script["style"]
    return prompt, given


def _plot(pipe, plan, common: dict, callback) -> list[Image.Image]:
    """A1111's X/Y/Z plot: the grid (with the first cell's parameters), then the cells when asked for."""
    from latentgen.plot.xyz import plot

    prompt, given = _cell_args(plan, common)
    p = plot(pipe, prompt, plan.script["grid"], seed=plan.seed, callback=callback,
             models=plan.script.get("models"), styles=plan.script.get("styles"),
             vaes=plan.script.get("vaes"), **given)
    p.grid.info["parameters"] = p.cells[0].info.get("parameters", "")
    return [p.grid] + (p.cells if plan.script["lone"] else [])


def _matrix(pipe, plan, common: dict, callback) -> tuple[list[Image.Image], list[str]]:
    """A1111's Prompt matrix: the grid (with the first cell's parameters), then every cell; and the cells' prompts."""
    from latentgen.plot.matrix import matrix

    prompt, given = _cell_args(plan, common)
    p = matrix(pipe, prompt, seed=plan.seed, callback=callback, **plan.script["matrix"], **given)
    p.grid.info["parameters"] = p.cells[0].info.get("parameters", "")
    return [p.grid] + p.cells, [label[0] for label in p.labels]


def execute(plan, ctx, *, limits, outputs=None, vaes=None) -> tuple[list[Image.Image], dict]:
    """Run ``plan`` on its model; returns the images and A1111's info dict. Interrupted: what is done. ``vaes``: the
    ``catalog.Vaes`` that ``plan.vae`` names a file of."""
    if plan.script and "lines" in plan.script:  # A1111's "Prompts from file or textbox": each line's plan in turn
        from .prompt_file import execute as lines

        return lines(plan, ctx, partial(execute, ctx=ctx, limits=limits, outputs=outputs, vaes=vaes))
    held = [plan.model, plan.hires_model, plan.refiner and plan.refiner[0]]
    ctx.worker.models.hold(held)
    pipe = ctx.pipeline(plan.model, switch=plan.switch)
    second = pipe
    if plan.hires_model is not None:  # A1111's hr_checkpoint_name: a second model of the catalog, held beside this one
        ctx.check("before the hires model loaded", interrupt=False)
        second = ctx.worker.models.get(plan.hires_model)
        plan = replace(plan, hires=replace(plan.hires, model=None if second is pipe else second))
    if plan.script and "grid" in plan.script:  # the X/Y/Z plot's Checkpoint name cells: their models, one at a time
        plan = replace(plan, script={**plan.script, "models": partial(_cell_model, ctx, plan, vaes, held),
                                     "vaes": vaes and vaes.for_model})  # its VAE cells: files of --vae-dir by name
    drawing = {id(m): m for m in (pipe, second)}.values()  # the job's models
    with ExitStack() as stack:
        for m in drawing:  # the prompt's LoRAs, by name, on each
            stack.enter_context(loras_loaded(m, plan.loras))
        stack.enter_context(vae_swapped(drawing, vaes, plan.vae))
        return _execute(plan, ctx, pipe, limits=limits, outputs=outputs)


@contextmanager
def _cell_model(ctx, plan, vaes, held: list, name: str):
    """The model of an X/Y/Z plot's "Checkpoint name" cells while they draw: held beside the job's own models (the
    one before is let go), with the prompt's LoRAs and the job's ``sd_vae``."""
    ctx.check("before the plot's model loaded", interrupt=False)
    ctx.worker.models.hold([*held, name])
    m = ctx.worker.models.get(name)
    with loras_loaded(m, plan.loras), vae_swapped([m], vaes, plan.vae):
        yield m


@contextmanager
def vae_swapped(pipes, vaes, name: str | None):
    """A1111's ``sd_vae``: each of the job's decoding models draws with the VAE of file ``name`` (``catalog.Vaes``)
    while the job runs, and with its own again after, however the job ends (None: its own throughout)."""
    own = [(p, p.vae) for p in pipes]
    try:
        for p, _ in own if name is not None else []:
            p.vae = vaes.for_model(p, name)
        yield
    finally:
        for p, vae in own:
            p.vae = vae


def _execute(plan, ctx, pipe, *, limits, outputs) -> tuple[list[Image.Image], dict]:
    """``execute`` with the prompt's LoRAs loaded. What the request leaves out comes from the model's defaults,
    or from a LoRA whose header recommends a sampler, steps and guidance (an LCM-LoRA named by a tag)."""
    d, rec = pipe.defaults, _recommended(pipe, plan)
    sampler = plan.sampler or (rec.sampler if rec else None)
    steps = plan.steps or (rec.steps if rec else d.steps)
    cfg = plan.cfg if plan.cfg is not None else rec.guidance if rec else d.guidance
    width, height = plan.width or d.width, plan.height or d.height
    if steps > limits.max_steps:
        raise ApiError(422, f"the model's default steps={steps} is above --max-steps {limits.max_steps}: send steps.")
    check_pixels(width, height, limits)
    if plan.hires is not None:
        from .workflows import check_final

        check_final(plan.hires, width, height, limits)
    common = dict(steps=steps, guidance=cfg, negative_prompt=plan.negative, scheduler=sampler,
                  clip_skip=plan.clip_skip, tiling=plan.tiling, **({"control": plan.control} if plan.control else {}))
    if plan.refiner is not None:  # A1111's refiner_checkpoint: a second model of the catalog, held beside this one
        import latentgen

        common["refiner"] = latentgen.Refiner(ctx.worker.models.get(plan.refiner[0]), *plan.refiner[1:])
    if plan.mode == "txt2img" or (plan.mask is None and "outpaint" not in (plan.script or {})):  # width x height
        common.update(width=width, height=height)
    if plan.mode != "txt2img":
        common.update(max_pixels=limits.max_pixels)
    if plan.mode == "txt2img" or len(plan.init_images) == 1:  # A1111's batches: n_iter calls of batch_size
        calls = [(plan.seed + it * plan.batch_size, plan.batch_size) for it in range(plan.n_iter)]
    else:
        calls = [(plan.seed + i, 1) for i in range(plan.count)]
    images, seeds = [], []  # seeds: each image's, as drawn (a call stopped by a skip returns fewer than n)
    if plan.script and "grid" in plan.script:  # the X/Y/Z plot: one call per cell, the grid first
        calls = []
        images = _plot(pipe, plan, common, ctx.callback(0, 1))
        seeds = [plan.seed + i for i in range(len(images))]
    if plan.script and "matrix" in plan.script:  # the prompt matrix: one call per cell, the grid first
        calls, (images, prompts) = [], _matrix(pipe, plan, common, ctx.callback(0, 1))
        seeds = [plan.seed + (i if plan.script["matrix"]["different_seeds"] else 0) for i in range(len(prompts))]
    if plan.script and {"sd_upscale", "loopback"} & set(plan.script):  # A1111's SD upscale, Loopback
        from .img2img_scripts import run

        calls, (images, seeds) = [], run(pipe, plan, common, ctx.callback(0, 1))
    for i, (seed, n) in enumerate(calls):
        try:
            ctx.check(f"before call {i + 1}/{len(calls)}")
        except Interrupted:
            break
        got = _call(pipe, plan, seed, n, callback=ctx.callback(i, len(calls)), **common)  # stopped: what it has
        images, seeds = images + got, seeds + [seed + j for j in range(len(got))]
    interrupted = ctx.job.interrupted.is_set()
    if outputs is not None and plan.save:
        outputs.save(images, plan.mode, seeds if "matrix" not in (plan.script or {}) else [plan.seed] + seeds)
    info = _info(plan, pipe, images, dict(width=width, height=height, cfg_scale=cfg, steps=steps),
                 ctx.worker.progress.job_timestamp, sampler,
                 seeds if calls or {"matrix", "sd_upscale", "loopback"} & set(plan.script or {}) else None)
    if "matrix" in (plan.script or {}):  # A1111's: the cells' prompts and seeds, the grid first among the images
        side = "all_negative_prompts" if plan.script["matrix"]["negative"] else "all_prompts"
        info.update({side: prompts, "index_of_first_image": 1})
    if interrupted:
        info["interrupted"] = True  # latentgen's addition: the images made before POST /sdapi/v1/interrupt
    return images, info


def _recommended(pipe, plan):
    """The sampler, steps and guidance recommended by the LoRAs the job runs (``LoraAdapters.recommended``)."""
    from latentgen.text.prompts import lora_tags

    return pipe.loras.recommended(tags=lora_tags(plan.prompt) if plan.loras else ())


def _info(plan, pipe, images, resolved: dict, timestamp: str, sampler: str | None, drawn=None) -> dict:
    """A1111's ``info`` (``modules/processing.py``: ``Processed.js()``), for latentgen's images. ``drawn``: the
    images' seeds, as drawn (a skip leaves some of the job's out: image i's seed is ``all_seeds[i]`` still)."""
    from latentgen.schedulers import SAMPLERS, label

    key, v = sampler or pipe.defaults.scheduler, plan.variation
    seeds = drawn or [plan.seed + i for i in range(plan.count)]
    negative, n, vae = plan.negative or "", len(seeds), getattr(pipe.vae, "infotext", {})
    return {
        "prompt": plan.prompt, "all_prompts": [plan.prompt] * n, "negative_prompt": negative,
        "all_negative_prompts": [negative] * n, "seed": plan.seed, "all_seeds": seeds,
        "subseed": plan.subseed, "all_subseeds": [plan.subseed + s - plan.seed for s in seeds], "subseed_strength": v.strength if v else 0,
        **resolved, "sampler_name": SAMPLERS[key].label if key in SAMPLERS else label(pipe.scheduler),
        "batch_size": plan.batch_size, "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": pipe.name, "sd_model_hash": None, "sd_vae_name": vae.get("VAE", plan.vae),
        "sd_vae_hash": vae.get("VAE hash"),  # of the VAE file drawing (sd_vae, or the model's --vae)
        "seed_resize_from_w": v.resize_from[0] if v and v.resize_from else -1,
        "seed_resize_from_h": v.resize_from[1] if v and v.resize_from else -1,
        "denoising_strength": plan.strength if plan.mode == "img2img" else None,
        "extra_generation_params": {}, "index_of_first_image": 0,
        "infotexts": [im.info.get("parameters", "") for im in images], "styles": plan.parameters.get("styles") or [], "job_timestamp": timestamp,
        "clip_skip": plan.clip_skip,
        "is_using_inpainting_conditioning": plan.mask is not None
        and pipe.unet.config.in_channels != pipe.vae.config.latent_channels,
    }


_NUMBERED = re.compile(r"^(\d{5,})-")


class Outputs:
    """``--outdir``: every image the server makes is also saved there, as A1111 saves its samples:
    ``OUTDIR/txt2img-images/00012-1234.png`` (a running number, then the seed), PNG with its parameters
    (``latentgen.metadata.save_png``: atomic, never over an existing file). When a name is taken, even by
    another process meanwhile, the next number is used. Names come from numbers and seeds only, so no
    request can choose where a file goes. Written from the worker thread only: one writer."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.next: dict[str, int] = {}  # mode -> the next running number

    def save(self, images: list[Image.Image], mode: str, seeds: list[int]) -> list[Path]:
        sub = self.folder / f"{mode}-images"
        sub.mkdir(exist_ok=True)
        if mode not in self.next:
            self.next[mode] = 1 + max((int(m.group(1)) for p in sub.glob("*.png") if (m := _NUMBERED.match(p.name))),
                                      default=-1)
        paths = []
        for image, seed in zip(images, seeds):
            for _ in range(10_000):
                path = sub / f"{self.next[mode]:05d}-{seed}.png"
                self.next[mode] += 1
                try:
                    paths.append(metadata.save_png(image, path, image.info.get("parameters"), force=False))
                    break
                except FileExistsError:
                    continue
        return paths
