"""A1111's img2img scripts that are more than one img2img call, run in the worker from a checked plan
(``workflows`` checks their ``script_args``): "SD upscale" (``latentgen.upscale.sd_upscale``) and "Loopback"
(``latentgen.canvas.loopback``). Each returns the job's images and their seeds, as A1111's scripts return them."""

from __future__ import annotations

from PIL import Image


def run(pipe, plan, common: dict, callback) -> tuple[list[Image.Image], list[int]]:
    """The images and seeds of the plan's script; ``common``: the job's call arguments (steps, guidance, size, ...)."""
    return (sd_upscale if "sd_upscale" in plan.script else loopback)(pipe, plan, common, callback)


def picture_call(plan) -> dict:
    """The img2img arguments of the plan's first init image (``inpaint``'s with its mask), as A1111's scripts draw
    it: the picture, the strength, and the resize mode or the mask's options."""
    if plan.mask is None:
        return dict(image=plan.init_images[0], strength=plan.strength, resize_mode=plan.resize_mode)
    return dict(image=plan.init_images[0], mask=plan.mask, strength=plan.strength, fill=plan.fill,
                mask_blur=plan.mask_blur, only_masked=plan.only_masked, padding=plan.padding)


def sd_upscale(pipe, plan, common: dict, callback) -> tuple[list[Image.Image], list[int]]:
    """A1111's SD upscale: n_iter pictures, each the first init image upscaled, then redrawn in tiles of the request's
    size; and their seeds."""
    from latentgen.upscale.sd_upscale import sd_upscale as upscaled

    options = dict(plan.script["sd_upscale"])
    images = upscaled(pipe, plan.prompt, options.pop("image"), **options, seed=plan.seed, num_images=plan.n_iter,
                      batch=plan.batch_size, strength=plan.strength, callback=callback, variation=plan.variation,
                      **common)
    return images, [plan.seed + n for n in range(len(images))]


def loopback(pipe, plan, common: dict, callback) -> tuple[list[Image.Image], list[int]]:
    """A1111's Loopback: with one picture every loop's, else each picture's last; a grid of them first when there are
    more than one (A1111's return_grid); and their seeds."""
    from latentgen.canvas.loopback import loopback as looped
    from latentgen.plot.draw import annotated

    o = plan.script["loopback"]
    pictures = looped(pipe, plan.prompt, **picture_call(plan), **o, seed=plan.seed, num_images=plan.n_iter,
                      callback=callback, variation=plan.variation, **common)
    loops = o["loops"]
    kept = [(p, plan.seed + n * loops + i) for n, each in enumerate(pictures) for i, p in enumerate(each)
            if plan.n_iter == 1 or i == loops - 1]
    images, seeds = [p for p, _ in kept], [s for _, s in kept]
    if len(images) > 1:
        grid = annotated(images, [""] * len(images), [""], pad=0)
        grid.info["parameters"] = images[0].info.get("parameters", "")
        images, seeds = [grid] + images, [seeds[0]] + seeds
    return images, seeds
