"""``latentgen serve``: the A1111-compatible HTTP API and the web page (``latentgen.serve``).

    latentgen serve                                   # embedded model, http://127.0.0.1:7860/
    latentgen serve --models-dir models --api-auth me:secret --host 0.0.0.0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import checks
from .args import add_model_args, positive_int


def _positive_float(s: str) -> float:
    """An argparse type: a finite number > 0 (``latentgen.checks.number``)."""
    try:
        return checks.number("value", float(s), positive=True)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).replace("value=", "")) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve.config import MiB, RequestLimits, ServeConfig, is_loopback

    limits = RequestLimits(max_body=int(args.max_body_mb * MiB), max_pixels=args.max_pixels, max_steps=args.max_steps,
                    max_images=args.max_images, queue_size=args.queue_size, job_timeout=args.job_timeout)
    config = ServeConfig(model=args.model, models_dir=args.models_dir, loras=args.lora, embeddings=args.embedding,
                         host=args.host, port=args.port, api_auth=args.api_auth, insecure=args.insecure,
                         outdir=args.outdir, device=args.device, dtype=args.dtype, limits=limits,
                         load_options={"vae": args.vae, "prediction_type": args.prediction_type, "backend": args.backend,
                                       "zero_terminal_snr": args.zero_terminal_snr},
                         preview_vae=args.preview_vae, warmup=not args.no_warmup, controlnet_dir=args.controlnet_dir,
                         upscalers_dir=args.upscalers_dir, styles_file=args.styles_file, vae_dir=args.vae_dir)
    config.check()  # a non-loopback bind without --api-auth stops here, before anything loads
    if not is_loopback(config.host) and not config.api_auth:
        print(f"warning: serving on {config.host} without --api-auth (--insecure): anyone who reaches this "
              f"address can use the server.", file=sys.stderr)
    try:
        import uvicorn

        from ..serve.app import create_app
        from ..serve.gate import http_protocol
    except ImportError as e:
        print(f"error: latentgen serve needs FastAPI and uvicorn ({e.name} is missing): "
              f"pip install 'latentgen[serve]'", file=sys.stderr)
        return 2
    print(f"latentgen serve: loading model {config.model or 'default'} ...", file=sys.stderr, flush=True)
    app = create_app(config)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    auth = " (HTTP Basic auth on)" if config.api_auth else ""
    print(f"latentgen serve: http://{shown}:{args.port}/ (web page), http://{shown}:{args.port}/sdapi/v1/ "
          f"(A1111 API), http://{shown}:{args.port}/docs{auth}; Ctrl+C stops", file=sys.stderr, flush=True)
    # connections are bounded by a deadline for their request head, the work by the queue (see serve.gate)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log,
                http=http_protocol(args.header_timeout), timeout_keep_alive=5)
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("serve", help="HTTP API (AUTOMATIC1111's /sdapi/v1) and a web page",
                       description="Serve a model over AUTOMATIC1111's HTTP API and a small web page. One worker "
                                   "runs jobs in order from a bounded queue. Binds to 127.0.0.1 unless told "
                                   "otherwise; any other address needs --api-auth (or --insecure).")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    s.add_argument("--port", type=int, default=7860, help="port (default: 7860, as A1111)")
    s.add_argument("--api-auth", default=None, metavar="USER:PASSWORD[,USER:PASSWORD]",
                   help="HTTP Basic credentials required for every request, the page included")
    s.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without --api-auth")
    s.add_argument("--models-dir", type=Path, default=None,
                   help="folder of models switchable by name (sd_model_checkpoint): diffusers folders by "
                        "folder name, .safetensors/.ckpt checkpoints by stem; the embedded model is always 'default'")
    s.add_argument("--lora", action="append", default=[], metavar="FILE|FOLDER|NAME",
                   help="LoRAs prompts may name as <lora:NAME:WEIGHT> (a .safetensors file, a folder of them, "
                        "or a shipped one); shipped LoRAs are always available; repeatable")
    s.add_argument("--embedding", action="append", default=[], metavar="PATH[:TOKEN]",
                   help="textual-inversion file loaded into every model it fits, used by TOKEN (default: the file "
                        "name) in prompts; /sdapi/v1/embeddings lists it; repeatable")
    s.add_argument("--upscalers-dir", type=Path, default=None, metavar="FOLDER",
                   help="upscaler model files (ESRGAN, Real-ESRGAN, Compact .pth/.safetensors, as A1111's "
                        "models/ESRGAN), by stem in hr_upscaler and the Extras; default $LATENTGEN_UPSCALERS; "
                        "/sdapi/v1/upscalers lists them")
    s.add_argument("--controlnet-dir", type=Path, default=None, metavar="FOLDER",
                   help="ControlNets: diffusers folders (by folder name) and single files such as "
                        "control_v11p_sd15_canny.pth (by stem), picked by name in alwayson_scripts.controlnet units "
                        "(beside the shipped ones); /controlnet/model_list lists them")
    s.add_argument("--preview-vae", type=Path, default=None, metavar="FILE|FOLDER",
                   help="a tiny VAE (taesd_decoder.safetensors, an AutoencoderTiny folder, or default-tiny-vae: the "
                        "embedded model's) for live previews: option show_progress_type 'TAESD'")
    s.add_argument("--vae-dir", type=Path, default=None, metavar="FOLDER",
                   help="VAE files (.safetensors, .pt; A1111's models/VAE) that requests pick by file name with "
                        "sd_vae (options or override_settings); /sdapi/v1/sd-vae lists them")
    s.add_argument("--styles-file", type=Path, default=None, metavar="CSV",
                   help="A1111's styles.csv (name, prompt, negative_prompt): prompt styles by name in the requests' "
                        "styles; /sdapi/v1/prompt-styles lists them; read again when the file changes")
    s.add_argument("--outdir", type=Path, default=None,
                   help="also save every image here (OUTDIR/txt2img-images/00000-SEED.png), never overwriting")
    s.add_argument("--no-warmup", action="store_true",
                   help="skip the 1-step image each model draws as it loads (it moves OpenVINO's conversion or "
                        "torch.compile's compile, up to a minute, out of the first request)")
    s.add_argument("--queue-size", type=positive_int, default=16, help="jobs that may wait; more get 429 (default 16)")
    s.add_argument("--job-timeout", type=_positive_float, default=300.0, help="seconds one job may run (default 300)")
    s.add_argument("--header-timeout", type=_positive_float, default=10.0,
                   help="seconds a connection has to send a request's headers, at first and between requests, "
                        "before it is closed: idle and slow connections cannot crowd out real ones (default 10)")
    s.add_argument("--max-steps", type=positive_int, default=150, help="most sampler steps per job (default 150)")
    s.add_argument("--max-images", type=positive_int, default=16, help="most images per request (default 16)")
    s.add_argument("--max-pixels", type=positive_int, default=1024 * 1024,
                   help="most pixels of an image in or out (default 1048576 = 1024x1024)")
    s.add_argument("--max-body-mb", type=_positive_float, default=32.0, help="largest request body in MiB (default 32)")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.add_argument("--access-log", action="store_true", help="log every request")
    add_model_args(s)
    s.set_defaults(func=cmd_serve)
