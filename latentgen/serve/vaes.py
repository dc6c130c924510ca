"""A1111's ``sd_vae`` over the server: the VAE files of ``--vae-dir`` (its models/VAE) by file name, and the VAE
each job's models draw with (``run.vae_swapped``)."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path

from .catalog import NAME, check_name
from .errors import ApiError


class Vaes:
    """VAE files a request picks by file name with A1111's ``sd_vae`` (``--vae-dir``, A1111's models/VAE):
    ``.safetensors``, ``.pt`` and ``.ckpt`` files, read again on ``refresh`` (``POST /sdapi/v1/refresh-vae``);
    "Automatic" and "None" are the model's own. The worker builds a file's VAE for a model once and keeps the last
    two (``for_model``)."""

    OWN = ("Automatic", "None", "")
    keep = 2

    def __init__(self, folder: Path | None = None):
        self.folder = Path(folder) if folder else None
        self._built: OrderedDict = OrderedDict()  # (model name, file name) -> (weakref to the pipeline, VAE)
        self.refresh()

    def refresh(self) -> None:
        found = sorted(self.folder.iterdir()) if self.folder is not None and self.folder.is_dir() else []
        self.files = {f.name: f for f in found if f.is_file() and f.suffix in (".safetensors", ".pt", ".ckpt")
                      and NAME.match(f.name)}

    def check(self, name, field: str = "sd_vae") -> str | None:
        """A requested VAE: a file's name, or None for the model's own ("Automatic", "None")."""
        if name is None or name in self.OWN:
            return None
        return check_name(f"{field}: VAE", name, list(self.files), ' "Automatic": the model\'s own; the server\'s '
                                                                   '--vae-dir (A1111\'s models/VAE) adds files.')

    def pick(self, given, option) -> str | None:
        """A job's VAE: ``given`` (its ``override_settings``' sd_vae) checked; else the ``sd_vae`` option's file, or
        the model's own when that file left the folder since (A1111 falls back so, with a warning)."""
        if given is not None:
            return self.check(given)
        if option is None or option in self.OWN:
            return None
        if option not in self.files:
            warnings.warn(f"sd_vae {option!r} is gone from --vae-dir: the model's own VAE draws.", RuntimeWarning)
            return None
        return option

    def listing(self) -> list[dict]:  # A1111's GET /sdapi/v1/sd-vae: names only, not where the files lie
        return [{"model_name": n, "filename": n} for n in self.files]

    def forget(self) -> None:
        """The VAEs built for models let go (A1111's unload-checkpoint)."""
        self._built.clear()

    def for_model(self, pipe, name: str):
        """The VAE of file ``name`` for ``pipe`` (the worker thread only), built once per loaded pipeline."""
        import weakref

        from latentgen.models.loading import vae_for

        key = (pipe.name, name)
        held = self._built.get(key)
        if held is None or held[0]() is not pipe:
            if name not in self.files:  # gone since the job was planned (refresh-vae)
                raise ApiError(404, f"sd_vae: VAE {name!r} is gone from --vae-dir; use one of: "
                                    f"{', '.join(self.files) or 'none'}, or \"Automatic\".")
            try:
                held = self._built[key] = (weakref.ref(pipe), vae_for(pipe, self.files[name]))
            except OSError as e:
                raise ApiError(422, f"sd_vae {name!r} could not be read: {e}") from None
            except ValueError as e:
                raise ApiError(422, f"sd_vae {name!r} does not fit model {pipe.name!r}: {e}") from None
            while len(self._built) > self.keep:
                self._built.popitem(last=False)
        self._built.move_to_end(key)
        return held[1]
