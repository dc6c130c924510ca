"""What ``latentgen serve`` is told: where it listens, who may use it, what it loads, and its limits.

Every limit is a number here, checked in one place (``RequestLimits``, with ``latentgen.checks``), so the API,
the page and the tests agree on them. Nothing in this module imports torch or FastAPI.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from .. import checks

MiB = 1024 * 1024


@dataclass(frozen=True)
class RequestLimits:
    """Bounds on one request and on the server's backlog; a request over a bound gets a 4xx."""

    max_body: int = 32 * MiB  # bytes of one request body (base64 images included): 413 above
    max_pixels: int = 1024 * 1024  # width * height of an output or an input image: 422 above
    max_steps: int = 150  # sampler steps of one job (A1111's slider maximum)
    max_images: int = 16  # images of one job: batch_size * n_iter
    queue_size: int = 16  # jobs waiting behind the running one: 429 when full
    job_timeout: float = 300.0  # seconds one job may run before it is stopped (504)

    def check(self) -> None:
        for name in ("max_body", "max_pixels", "max_steps", "max_images", "queue_size"):
            checks.whole(f"--{name.replace('_', '-')}", getattr(self, name), 1)
        checks.number("--job-timeout", self.job_timeout, positive=True, fix="use a number of seconds > 0")


@dataclass
class ServeConfig:
    model: str | None = None  # what latentgen.load takes, or a name in models_dir; None: the embedded model
    models_dir: Path | None = None  # diffusers folders and checkpoint files, switchable by name (sd_model_checkpoint)
    loras: list[str] = field(default_factory=list)  # LoRA files, shipped names, or folders of .safetensors
    embeddings: list[str] = field(default_factory=list)  # textual inversions, PATH[:TOKEN], loaded into every model
    host: str = "127.0.0.1"
    port: int = 7860
    api_auth: str | None = None  # "user:password[,user2:password2]" (HTTP Basic, as A1111's --api-auth)
    insecure: bool = False  # allow a non-loopback bind without --api-auth
    outdir: Path | None = None  # save every image here too (atomically, never overwriting)
    device: str | None = None
    dtype: str | None = None
    load_options: dict = field(default_factory=dict)  # more latentgen.load keywords for every model (vae=...)
    limits: RequestLimits = field(default_factory=RequestLimits)
    controlnet_dir: Path | None = None  # ControlNet folders by name, single files by stem (beside the shipped ones)
    upscalers_dir: Path | None = None  # upscaler model files by stem (A1111's models/ESRGAN); None: $LATENTGEN_UPSCALERS
    preview_vae: Path | None = None  # a tiny VAE (TAESD) for live previews, A1111's show_progress_type "TAESD"
    styles_file: Path | None = None  # A1111's styles.csv: prompt styles by name (the requests' styles)
    vae_dir: Path | None = None  # VAE files by file name, A1111's sd_vae (its models/VAE)
    warmup: bool = True  # each model draws one 1-step image as it loads: first-call conversions and compiles happen

    def credentials(self) -> dict[str, str]:
        """{user: password} from ``api_auth``; empty when auth is off."""
        return parse_auth(self.api_auth) if self.api_auth else {}

    def check(self) -> None:
        """Refuse settings that would expose the server or that cannot work, before any model loads."""
        self.limits.check()
        self.credentials()
        if not is_loopback(self.host) and not self.api_auth and not self.insecure:
            raise ValueError(f"--host {self.host} accepts connections from other machines, and without "
                             f"--api-auth anyone who reaches it can use this server: pass --api-auth USER:PASSWORD "
                             f"(HTTP Basic), or --insecure if the network is yours alone.")
        if self.models_dir is not None and not Path(self.models_dir).is_dir():
            raise FileNotFoundError(f"--models-dir {self.models_dir} is not a folder; give a folder of diffusers "
                                    f"model folders (each with model_index.json) or .safetensors/.ckpt checkpoints.")
        from ..text.embeddings import parse_spec  # torch: only once the server is really being set up
        for spec in self.embeddings:
            parse_spec(spec)
        if self.preview_vae is not None:
            from .. import vae as tiny

            if not tiny.resolve(self.preview_vae).exists():
                raise FileNotFoundError(f"--preview-vae {self.preview_vae} does not exist; give a taesd_decoder."
                                        f"safetensors file, an AutoencoderTiny folder, or {tiny.SHIPPED} (the "
                                        f"embedded model's).")
        if self.upscalers_dir is not None and not Path(self.upscalers_dir).is_dir():
            raise FileNotFoundError(f"--upscalers-dir {self.upscalers_dir} is not a folder; give a folder of ESRGAN, "
                                    f"Real-ESRGAN or Compact .pth/.safetensors files (A1111's models/ESRGAN).")
        if self.vae_dir is not None and not Path(self.vae_dir).is_dir():
            raise FileNotFoundError(f"--vae-dir {self.vae_dir} is not a folder; give a folder of VAE files "
                                    f"(.safetensors, .pt), A1111's models/VAE.")
        if self.controlnet_dir is not None and not Path(self.controlnet_dir).is_dir():
            raise FileNotFoundError(f"--controlnet-dir {self.controlnet_dir} is not a folder; give a folder of "
                                    f"ControlNets: diffusers folders (each with config.json) or single files "
                                    f"(control_*.pth, .safetensors).")
        if self.styles_file is not None:
            from ..text import styles

            styles.read(self.styles_file)  # unreadable, or not a styles.csv: said before the server starts
        if self.outdir is not None and not Path(self.outdir).is_dir():
            raise FileNotFoundError(f"--outdir {self.outdir} is not a folder; create it first.")
        checks.whole("--port", self.port, 1, "use 1 to 65535 (7860 is A1111's)")
        checks.choice("--port", self.port, range(1, 65536), "use 1 to 65535 (7860 is A1111's)")


def parse_auth(text: str) -> dict[str, str]:
    """``"user:pass,user2:pass2"`` -> {user: pass}; the password may itself hold ':'."""
    out = {}
    for pair in text.split(","):
        user, sep, password = pair.strip().partition(":")
        if not sep or not user or not password:
            raise ValueError(f"--api-auth {pair.strip()!r} is invalid: use USER:PASSWORD (several: "
                             f"USER:PASSWORD,USER2:PASSWORD2).")
        out[user] = password
    return out


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False
