"""Live previews for ``/sdapi/v1/progress`` and ``/internal/progress``: the running job's first image at its latest
preview step (every ``show_progress_every_n_steps``), drawn as ``show_progress_type`` says (``latentgen.vae.preview``:
"Approx cheap", the default, a linear map; "TAESD", the tiny VAE given with ``--preview-vae`` or the model's own
when it is tiny; "Full", the model's VAE), once per step however often clients ask."""

from __future__ import annotations

import threading
from pathlib import Path

from ..canvas import seamless
from ..vae import preview, tiny
from . import codec
from .errors import ApiError


class Previews:
    def __init__(self, preview_vae: Path | None = None, device=None):
        self.vae = None if preview_vae is None else tiny.load(preview_vae, device=device)  # for "TAESD"
        self._last: tuple[int, str | None] = (-1, None)  # (step_id, base64 PNG)
        self._lock = threading.Lock()

    def current(self, progress, show_progress_type: str) -> str | None:
        """The preview of ``progress`` (a ``jobs.Progress``) as base64 PNG, or None between jobs."""
        latents, pipe, step = progress.latents, progress.pipe, progress.step_id
        if latents is None or pipe is None:
            return None
        with self._lock:
            if self._last[0] != step:
                self._last = (step, codec.encode_png(self.draw(pipe, latents, preview.method(show_progress_type))))
            return self._last[1]

    def draw(self, pipe, latents, how: str):
        """One picture of latents (1, C, h, w); "tiny" with neither tiny VAE (the model changed) draws "cheap". While
        a tiling job runs (its model's VAE pads circularly), ``--preview-vae`` pads circularly too: no seams."""
        if how == "tiny" and not tiny.is_loaded(pipe.vae):
            if self.vae is None:
                how = "cheap"
            else:
                with seamless.circular([self.vae] if seamless.wraps(pipe.vae) else []):
                    return pipe.decode(latents, vae=self.vae)[0]
        return pipe.preview(latents, how)[0]

    def check_option(self, show_progress_type, pipe) -> None:
        """"TAESD" needs a tiny VAE: ``--preview-vae``, or the current model's own VAE being tiny."""
        if preview.method(show_progress_type) == "tiny" and self.vae is None and not (
                pipe is not None and tiny.is_loaded(pipe.vae)):
            raise ApiError(422, "show_progress_type 'TAESD' needs a tiny VAE: start the server with --preview-vae "
                                "taesd_decoder.safetensors (--preview-vae default-tiny-vae for the embedded model), "
                                "or load the model with --vae taesd_decoder.safetensors.")
