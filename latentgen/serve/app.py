"""The FastAPI app: A1111's ``/sdapi/v1`` routes, the web page at ``/``, auth and body limits, errors.

    from latentgen.serve import ServeConfig, create_app
    app = create_app(ServeConfig(models_dir="models"))   # loads the first model, starts the worker
    uvicorn.run(app, host="127.0.0.1", port=7860)         # what `latentgen serve` does

Requests are checked (and their images decoded) in the request's own thread; only the sampling goes
through the one worker (``latentgen.serve.jobs``), in order. A request whose client disconnects while it
waits or runs is cancelled, so it never holds the queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import a1111, codec, controlnet_api, extras, live, run, settings, system, workflows
from .catalog import Loras, Models, Styles, embedding_item
from .config import ServeConfig
from .errors import ApiError, Cancelled, body
from .fields import Img2ImgRequest, PngInfoRequest, Txt2ImgRequest
from .gate import Gate
from .jobs import Worker
from .vaes import Vaes

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("latentgen.serve")


class ClientGone(Exception):
    """The client closed the connection before its job finished; nobody reads the answer."""


class Server:
    """The app's state: models, LoRAs, options, the worker, the outputs folder."""

    def __init__(self, config: ServeConfig):
        self.config, self.limits = config, config.limits
        self.models = Models(config.model, config.models_dir, device=config.device, dtype=config.dtype,
                             embeddings=config.embeddings, load_options=config.load_options, warmup=config.warmup)
        self.loras = Loras(config.loras)
        self.controlnets = controlnet_api.ControlNets(config.controlnet_dir)
        self.styles, self.vaes = Styles(config.styles_file), Vaes(config.vae_dir)
        self.outputs = run.Outputs(config.outdir) if config.outdir else None
        self.worker = Worker(self.models, queue_size=self.limits.queue_size, job_timeout=self.limits.job_timeout)
        self.options: dict[str, Any] = {}
        self.set_options(settings.OPTIONS)
        self.previews = live.Previews(config.preview_vae, config.device)

    def set_options(self, changes: dict[str, Any]) -> None:
        """Take options (each already through ``settings.check_option``); the preview interval follows them."""
        self.options.update(changes)
        o = self.options
        self.worker.preview_every = o["show_progress_every_n_steps"] if o["live_previews_enable"] else 0

    def load_first_model(self) -> None:
        try:
            self.worker.submit("load", lambda ctx: ctx.pipeline()).future.result()
        except ApiError as e:  # the command line reports it as any bad argument
            raise ValueError(e.detail) from None

    def plan_args(self) -> dict:
        return dict(limits=self.limits, models=self.models, loras=self.loras, options=dict(self.options),
                    save=self.outputs is not None, controlnets=self.controlnets, upscalers=self.config.upscalers_dir,
                    styles=self.styles, vaes=self.vaes)

    async def run(self, request: Request, kind: str, work, task_id: str | None = None):
        """Queue ``work`` and wait for it; cancel it when the client goes away."""
        job = self.worker.submit(kind, work, task_id=task_id)
        fut = asyncio.wrap_future(job.future)
        try:
            while True:
                done, _ = await asyncio.wait({fut}, timeout=0.25)
                if done:
                    return fut.result()
                if await request.is_disconnected():
                    job.cancel()
                    fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody else will look
                    raise ClientGone()
        except asyncio.CancelledError:
            job.cancel()
            raise

    def preview(self) -> str | None:
        """The running job's live preview, base64 PNG (``latentgen.serve.live``), or None."""
        return self.previews.current(self.worker.progress, self.options["show_progress_type"])


# -- errors as A1111 shapes them --------------------------------------------------------------------------
def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request, e: ApiError):
        return JSONResponse(body("HTTPException", e.detail, f"{e.status}: {e.detail}"), e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, e: StarletteHTTPException):
        return JSONResponse(body("HTTPException", e.detail, f"{e.status_code}: {e.detail}"), e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, e: RequestValidationError):
        items = [{"loc": [str(x) for x in err.get("loc", ())], "msg": str(err.get("msg", "")),
                  "type": str(err.get("type", ""))} for err in e.errors()]  # the inputs are not echoed
        text = "; ".join(f"{'.'.join(i['loc'])}: {i['msg']}" for i in items)
        if any(i["type"] in ("json_invalid", "model_attributes_type", "dict_type") for i in items):
            text += " (the body must be one JSON object, sent with Content-Type: application/json)"
        return JSONResponse(body("RequestValidationError", items, text), 422)

    @app.exception_handler(ValueError)
    @app.exception_handler(TypeError)
    @app.exception_handler(FileNotFoundError)
    async def bad_value(_request, e: Exception):  # latentgen's own argument checks, raised in the worker
        return JSONResponse(body(type(e).__name__, str(e)), 422)

    @app.exception_handler(ClientGone)
    async def client_gone(_request, _e):
        return Response(status_code=499)  # nobody is there to read it

    @app.exception_handler(Cancelled)
    async def cancelled(_request, _e):
        return JSONResponse(body("HTTPException", "the server is shutting down"), 503)

    @app.exception_handler(Exception)
    async def internal(request, e: Exception):
        log.error("API error: %s %s: %s", request.method, request.url.path, e, exc_info=e)
        return JSONResponse(body(type(e).__name__, "internal error: the server's log has the details",
                                 f"{type(e).__name__}: {str(e)[:300]}"), 500)


# -- the app ----------------------------------------------------------------------------------------------
def create_app(config: ServeConfig | None = None) -> FastAPI:
    """The app over ``config``; its first model is loaded (in the worker) before this returns."""
    config = config or ServeConfig()
    config.check()  # before any model loads
    server = Server(config)
    server.load_first_model()

    @asynccontextmanager
    async def lifespan(_app):
        yield
        server.worker.stop()

    import latentgen

    app = FastAPI(title="latentgen", version=latentgen.__version__, lifespan=lifespan,
                  description="AUTOMATIC1111-compatible API over latentgen (/sdapi/v1/...), and a web page at /.")
    app.state.server = server
    app.add_middleware(Gate, credentials=config.credentials(), max_body=config.limits.max_body)
    _error_handlers(app)
    _routes(app, server)
    _task_routes(app, server)
    _list_routes(app, server)
    extras.add_routes(app, server)
    controlnet_api.add_routes(app, server)
    system.add_routes(app, server)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _routes(app: FastAPI, server: Server) -> None:
    """The jobs: txt2img, img2img, and switching the model (options); progress and interrupt."""
    limits, models, worker = server.limits, server.models, server.worker

    async def generate(request: Request, plan_fn, req) -> dict:
        plan = await run_in_threadpool(plan_fn, req, **server.plan_args())  # images decoded here
        kept = {} if req.override_settings_restore_afterwards else dict(req.override_settings or {})
        if "show_progress_type" in kept:  # the overrides stay options after the job (A1111's): checked before it
            server.previews.check_option(kept["show_progress_type"], models.loaded())
        images, info = await server.run(request, plan.mode, lambda ctx: run.execute(
            plan, ctx, limits=limits, outputs=server.outputs, vaes=server.vaes), task_id=req.force_task_id)
        server.set_options({k: v for k, v in kept.items() if k in server.options})  # the model: plan.switch
        encoded = await run_in_threadpool(lambda: [codec.encode_png(im) for im in images]) if plan.send_images else []
        return {"images": encoded, "parameters": plan.parameters, "info": json.dumps(info)}

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(req: Txt2ImgRequest, request: Request):
        return await generate(request, a1111.plan_txt2img, req)

    @app.post("/sdapi/v1/img2img")
    async def img2img(req: Img2ImgRequest, request: Request):
        return await generate(request, a1111.plan_img2img, req)

    @app.get("/sdapi/v1/progress")
    def progress(skip_current_image: bool = False):
        p = worker.progress
        fraction, eta = p.fraction()
        state = {**p.state(), "queued": worker.waiting()}  # "queued": latentgen's addition
        text = f"Step {p.sampling_step}/{p.sampling_steps}" if p.job_count and p.sampling_steps else None
        return {"progress": fraction, "eta_relative": eta, "state": state, "textinfo": text,
                "current_image": None if skip_current_image else server.preview()}

    @app.post("/sdapi/v1/interrupt")
    def interrupt():
        worker.interrupt()
        return {}

    @app.get("/sdapi/v1/options")
    def get_options():
        return {"sd_model_checkpoint": models.current, **server.options}

    @app.post("/sdapi/v1/options")
    async def set_options(req: dict[str, Any], request: Request):
        for key, value in req.items():
            settings.check_option(key, value)
        if "show_progress_type" in req:
            server.previews.check_option(req["show_progress_type"], models.loaded())
        server.vaes.check(req.get("sd_vae"))  # a file of --vae-dir, or the model's own
        name = req.get("sd_model_checkpoint")
        if name is not None:
            name = models.check(name)
            if name != models.current:  # loaded in the worker, between jobs
                await server.run(request, "options", lambda ctx: ctx.pipeline(name, switch=True))
        server.set_options({k: v for k, v in req.items() if k != "sd_model_checkpoint"})
        return None


def _task_routes(app: FastAPI, server: Server) -> None:
    """A1111's per-task progress: a job sent with ``force_task_id``, polled by that id."""

    @app.post("/internal/progress")
    def task_progress(req: dict[str, Any]):
        """A1111's progress of one task (its ``force_task_id``), as its web page polls it."""
        active, queued, completed = server.worker.task(str(req.get("id_task")))
        if not active:
            return {"active": False, "queued": queued, "completed": completed, "progress": None, "eta": None,
                    "live_preview": None, "id_live_preview": -1, "textinfo": "In queue..." if queued else "Waiting..."}
        (fraction, eta), p = server.worker.progress.fraction(), server.worker.progress
        text, step_id = f"Step {p.sampling_step}/{p.sampling_steps}" if p.sampling_steps else None, p.step_id
        preview = server.preview() if req.get("live_preview", True) else None  # decoded: the job may end meanwhile
        return {"active": True, "queued": False, "completed": False, "progress": fraction, "eta": eta,
                "live_preview": f"data:image/png;base64,{preview}" if preview else None, "id_live_preview": step_id,
                "textinfo": text}


def _list_routes(app: FastAPI, server: Server) -> None:
    """What there is: samplers, schedulers, models, LoRAs, embeddings, scripts; png-info; the page."""
    models = server.models

    app.get("/sdapi/v1/samplers")(settings.sampler_list)
    app.get("/sdapi/v1/schedulers")(lambda: settings.SCHEDULERS)

    @app.get("/sdapi/v1/sd-models")
    def sd_models():
        return [{"title": n, "model_name": n, "hash": None, "sha256": None, "filename": n, "config": None}
                for n in models.names()]

    @app.post("/sdapi/v1/refresh-checkpoints")
    def refresh_checkpoints():
        models.refresh()  # the models folder, read again
        return None

    @app.get("/sdapi/v1/loras")
    def get_loras():
        return server.loras.listing

    @app.post("/sdapi/v1/refresh-loras")
    def refresh_loras():
        server.loras = Loras(server.config.loras)  # the --lora folders, read again
        return None

    app.get("/sdapi/v1/sd-vae")(server.vaes.listing)  # the VAE files of --vae-dir, for sd_vae
    app.post("/sdapi/v1/refresh-vae")(server.vaes.refresh)

    @app.get("/sdapi/v1/embeddings")
    def embeddings():
        pipe = models.loaded()
        width = 0 if pipe is None else sum(int(m.get_input_embeddings().weight.shape[1]) for m in  # SDXL: both
                                           (pipe.text_encoder, *(pipe.xl.encoders() if pipe.xl else [])))
        loaded = {} if pipe is None else {t: embedding_item(width, len(e.ids)) for t, e in pipe.embeddings.loaded.items()}
        return {"loaded": loaded, "skipped": models.skipped.get(models.current, {})}

    @app.get("/sdapi/v1/prompt-styles")
    def prompt_styles():
        return server.styles.items()

    @app.get("/sdapi/v1/scripts")
    def scripts():
        return workflows.SCRIPTS

    @app.post("/sdapi/v1/png-info")
    def png_info(req: PngInfoRequest):
        return codec.png_info(codec.decode_image(req.image.strip(), "image", server.limits.max_pixels))

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})
