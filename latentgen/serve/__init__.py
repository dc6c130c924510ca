"""``latentgen serve``: an AUTOMATIC1111-compatible HTTP API (``/sdapi/v1/...``) and a web page, over one
loaded pipeline, with a bounded queue, progress, limits and auth. Needs the ``[serve]`` extra
(FastAPI + uvicorn): ``pip install "latentgen[serve]"``.

    latentgen serve                                  # the embedded model on http://127.0.0.1:7860/
    latentgen serve --models-dir models --lora loras --api-auth me:secret --host 0.0.0.0

Modules, in the order a request meets them: ``config`` (flags and limits), ``gate`` (auth, body size),
``app`` (the FastAPI app and its routes), ``fields`` (A1111's request fields), ``a1111`` (a request ->
a checked ``Task``), ``codec`` (base64 images, masks, infotexts), ``settings`` (samplers, options),
``catalog`` (models and LoRAs by name), ``jobs`` (the bounded queue and its one worker), ``run`` (a task
-> latentgen calls -> A1111's info, and the ``--outdir`` copies), ``errors`` (A1111's error bodies);
``static/``: the page, one HTML, one JS and one CSS file, no build step.
"""

from .config import RequestLimits, ServeConfig

__all__ = ["RequestLimits", "ServeConfig", "create_app"]


def create_app(config: ServeConfig | None = None):
    """The FastAPI app (imports FastAPI only when called); see ``latentgen.serve.app``."""
    from .app import create_app as _create

    return _create(config)
