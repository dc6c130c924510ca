"""Drawing the cells of a plot (``latentgen.plot.xyz``, ``latentgen.plot.matrix``): each cell is one call of a
pipeline (``generate``, or ``img2img`` / ``inpaint`` when it starts from a picture), on the model its "Checkpoint
name" value names, decoding with the VAE its "VAE" value names; the calls of one model together, one model open at a
time, as A1111 orders its checkpoint axis. A ``latentgen.Stop`` from the callback ends the drawing."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

from PIL import Image

from ..request import Watch

OWN_VAE = ("Automatic", "None")  # VAE axis values that mean the VAE the model draws with


def opened(value, pipe, models=None):
    """A context giving the pipeline of a "Checkpoint name" value: ``pipe`` for None, a loaded pipeline as it is, a
    name through ``models`` (a context manager per name: the server holds the model while its cells draw) or
    ``latentgen.load`` on ``pipe``'s device and dtype."""
    if value is None or not isinstance(value, str):
        return nullcontext(pipe if value is None else value)
    if models is not None:
        return models(value)
    import latentgen

    from ..precision import device_of

    return nullcontext(latentgen.load(value, device=device_of(pipe.unet), dtype=pipe.dtype))


def vae_built(vaes=None):
    """(pipeline, VAE axis value) -> the VAE it names for that pipeline, each built once: by ``vaes`` (the server's
    files by name), or from the file at that path (``latentgen.models.loading.vae_for``)."""
    import weakref

    built = {}  # (id of the pipeline, value) -> (a weak reference to the pipeline, its VAE): models come and go

    def get(pipe, value):
        held = built.get((id(pipe), value))
        if held is None or held[0]() is not pipe:
            from ..models.loading import vae_for

            held = built[id(pipe), value] = (weakref.ref(pipe), vaes(pipe, value) if vaes else vae_for(pipe, value))
        return held[1]
    return get


@contextmanager
def vae_swapped(pipe, value, vae_of):
    """``pipe`` drawing with the VAE of the VAE axis's ``value`` while a cell draws (its own for ``OWN_VAE``)."""
    own = pipe.vae
    try:
        if value is not None and value not in OWN_VAE:
            pipe.vae = vae_of(pipe, value)
        yield
    finally:
        pipe.vae = own


def draw(pipe, calls: list[dict], models=None, vae_of=None) -> list[Image.Image]:
    """Each call's image, the calls of one model together (each model opened once, one at a time, as A1111 orders
    its checkpoint axis), in the calls' order; ``vae_of``: a ``vae_built`` for the VAE axis. A ``latentgen.Stop``
    from the callback ends the plot: the cell it stopped keeps its picture so far, the cells not drawn are black
    (as A1111's interrupt leaves them)."""
    groups: dict = {}
    for i, c in enumerate(calls):
        m = c.get("model")
        groups.setdefault(m if m is None or isinstance(m, str) else id(m), []).append(i)
    images, watch, vae_of = [None] * len(calls), Watch(calls[0].get("callback")), vae_of or vae_built()
    for indices in groups.values():
        if watch.stopped:
            break
        with opened(calls[indices[0]].get("model"), pipe, models) as m:
            for i in indices:
                given = {k: v for k, v in calls[i].items() if k not in ("model", "vae")}
                with vae_swapped(m, calls[i].get("vae"), vae_of):
                    images[i] = method(m, given)(**{**given, "callback": watch.callback})[0]
                if watch.stopped:
                    break
    size = next(im.size for im in images if im is not None)
    return [Image.new("RGB", size) if im is None else im for im in images]


def method(pipe, call: dict):
    """The pipeline's call a cell makes: ``generate``, or from a picture (``image``) ``img2img``, ``inpaint`` with a
    ``mask``."""
    if "image" not in call:
        return pipe.generate
    return pipe.inpaint if "mask" in call else pipe.img2img
