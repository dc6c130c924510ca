"""A1111's routes about the server itself, which its clients (webuiapi, UIs that list what a server has) call
when they start: what there is not (face restorers, hypernetworks: empty lists), the Real-ESRGAN-family model
files, memory, the command-line flags, skipping the running call, captions (refused: no captioning model), and unloading or reloading the current model. Shapes as A1111's
``modules/api/models.py``; what latentgen does not have is reported empty, never invented."""

from __future__ import annotations

import os

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from .config import is_loopback
from .errors import ApiError


def memory() -> dict:
    """A1111's ``GET /sdapi/v1/memory``: this process's RAM (``used``: its resident size, ``total`` the machine's,
    in bytes, as A1111 computes them) and CUDA's figures (``{"error": "unavailable"}`` without a GPU)."""
    import psutil
    import torch

    try:
        used, total = psutil.Process(os.getpid()).memory_info().rss, psutil.virtual_memory().total
        ram = {"free": total - used, "used": used, "total": total}
    except (OSError, psutil.Error) as e:
        ram = {"error": str(e)}
    if not torch.cuda.is_available():
        return {"ram": ram, "cuda": {"error": "unavailable"}}
    try:
        free, whole = torch.cuda.mem_get_info()
        s = torch.cuda.memory_stats()
    except RuntimeError as e:
        return {"ram": ram, "cuda": {"error": str(e)}}

    def pair(name: str) -> dict:
        return {"current": s.get(f"{name}.all.current", 0), "peak": s.get(f"{name}.all.peak", 0)}

    cuda = {"system": {"free": free, "used": whole - free, "total": whole}, "active": pair("active_bytes"),
            "allocated": pair("allocated_bytes"), "reserved": pair("reserved_bytes"),
            "inactive": pair("inactive_split_bytes"),
            "events": {"retries": s.get("num_alloc_retries", 0), "oom": s.get("num_ooms", 0)}}
    return {"ram": ram, "cuda": cuda}


def cmd_flags(config) -> dict:
    """A1111's ``GET /sdapi/v1/cmd-flags``, for the flags that have a meaning here (credentials are never sent)."""
    return {"api": True, "nowebui": False, "listen": not is_loopback(config.host), "port": config.port,
            "api_auth": None, "ckpt_dir": None, "lora_dir": None, "no_half": str(config.dtype) in ("fp32", "float32", "torch.float32"),
            "no_half_vae": False, "medvram": False, "lowvram": False, "skip_torch_cuda_test": True}


def unload(ctx, vaes=None) -> None:
    """The worker's models out of memory, the VAEs built for them (``catalog.Vaes``) and the progress's reference
    to the last one too."""
    import gc

    import torch

    ctx.worker.models.unload()
    if vaes is not None:
        vaes.forget()
    ctx.worker.progress.pipe = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def add_routes(app, server) -> None:
    from . import extras

    @app.get("/sdapi/v1/face-restorers")
    def face_restorers():
        return []  # no face restoration (restore_faces is refused with a 422)

    @app.get("/sdapi/v1/hypernetworks")
    def hypernetworks():
        return []  # hypernetworks are not read; LoRAs are (<lora:NAME:WEIGHT>)

    @app.get("/sdapi/v1/realesrgan-models")
    async def realesrgan_models():  # the model files of --upscalers-dir (ESRGAN, Real-ESRGAN, Compact)
        listed = await run_in_threadpool(extras.listed, server.config.upscalers_dir)
        return [{"name": u["name"], "path": u["model_path"], "scale": u["scale"]} for u in listed if u["model_path"]]

    @app.post("/sdapi/v1/skip")
    def skip():  # the running call ends at its next step, with its picture so far; the job goes on with the next
        server.worker.skip()
        return {}

    @app.post("/sdapi/v1/interrogate")
    def interrogate():  # A1111's captions come from BLIP and DeepDanbooru networks, which latentgen does not carry
        raise ApiError(422, "interrogate: latentgen has no captioning model (A1111's BLIP 'clip' or 'deepdanbooru'); "
                            "write the picture's description as the prompt, or read a latentgen PNG's parameters "
                            "with POST /sdapi/v1/png-info.")

    app.get("/sdapi/v1/memory")(memory)
    app.get("/sdapi/v1/cmd-flags")(lambda: cmd_flags(server.config))

    @app.post("/sdapi/v1/unload-checkpoint")
    async def unload_checkpoint(request: Request):
        """Every model out of memory (between jobs); the next job, or reload-checkpoint, loads the current one."""
        await server.run(request, "unload", lambda ctx: unload(ctx, server.vaes))
        return {}

    @app.post("/sdapi/v1/reload-checkpoint")
    async def reload_checkpoint(request: Request):
        await server.run(request, "reload", lambda ctx: ctx.pipeline())
        return {}
