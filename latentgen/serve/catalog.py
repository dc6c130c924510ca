"""Models and LoRAs by name. A request names them; it never gives a path. The names come from what the
server was started with (``--model``, ``--models-dir``, ``--lora``) and from the LoRAs latentgen ships,
so no request can make the server read a file outside them.

``Models`` loads pipelines in the worker thread only (``get``, ``switch``) and keeps two in memory: the current
model and the last one a job asked for through ``override_settings``; more while the models one job draws with
(its model, ``hr_checkpoint_name``, ``refiner_checkpoint``: ``hold``) are more, so a next job naming them again
loads none of them again.
"""

from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from functools import cached_property
from pathlib import Path

from .errors import ApiError

DEFAULT = "default"  # the embedded model's name
CHECKPOINTS = (".safetensors", ".ckpt")  # single-file models, where latentgen.load reads them
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_+\-. ]{0,127}$")


def check_name(kind: str, name, known, hint: str = "") -> str:
    """``name`` when it is one of ``known``: a path-like name gets a 422, an unknown one a 404."""
    if not isinstance(name, str) or not NAME.match(name) or ".." in name:
        raise ApiError(422, f"{kind} {name!r} is not a name: {kind}s are picked by name, never by path; "
                            f"use one of: {', '.join(known) or 'none'}.{hint}")
    if name not in known:
        raise ApiError(404, f"{kind} {name!r} not found; use one of: {', '.join(known) or 'none'}.{hint}")
    return name


class Models:
    """Switchable models: the embedded one as ``"default"``, the diffusers folders in ``models_dir`` by
    folder name and its checkpoint files by stem, and ``--model`` itself when it is none of these. The
    folder is read at start and again on ``refresh()`` (A1111's ``POST /sdapi/v1/refresh-checkpoints``)."""

    keep = 2  # pipelines held in memory at once, but for those of the last job (``hold``)
    held: frozenset = frozenset()  # the models the running (or last) job draws with: never evicted for another

    def __init__(self, first: str | None = None, models_dir: Path | None = None, *, device=None, dtype=None,
                 embeddings: list[str] | None = None, load_options: dict | None = None, warmup: bool = False):
        self.models_dir = Path(models_dir) if models_dir else None
        self.warmup = warmup  # draw one 1-step image as each model loads (see ``_load``)
        self.device, self.dtype = device, dtype
        from latentgen.text.embeddings import parse_spec

        self.embeddings = [parse_spec(spec) for spec in embeddings or []]  # (path, token or None)
        self.load_options = {k: v for k, v in (load_options or {}).items() if v is not None}
        self.skipped: dict[str, dict[str, dict]] = {}  # model -> embeddings that do not fit it (A1111's "skipped")
        self.extra: dict[str, str] = {}  # --model when it lies outside models_dir
        self._loaded: OrderedDict[str, object] = OrderedDict()
        self.current = first or DEFAULT
        if self.current in self.refresh():
            return
        same = [n for n, src in self.sources.items() if src and Path(src).resolve() == Path(first).resolve()]
        if same:  # --model given as a path inside the models folder
            self.current = same[0]
        else:  # a folder or file elsewhere, or a preset name such as "tiny-random"
            self.current = Path(first).name or str(first)
            self.extra[self.current] = self.sources[self.current] = str(first)

    def refresh(self) -> dict[str, str | None]:
        """Read the models folder again: {name: what latentgen.load takes}."""
        out: dict[str, str | None] = {DEFAULT: None}
        if self.models_dir is not None and self.models_dir.is_dir():
            entries = sorted(self.models_dir.iterdir())
            for d in entries:  # diffusers folders by folder name
                if d.is_dir() and (d / "model_index.json").is_file() and NAME.match(d.name):
                    out[d.name] = str(d)
            for f in entries:  # single-file checkpoints (A1111's models/Stable-diffusion) by stem
                if f.is_file() and f.suffix in CHECKPOINTS and NAME.match(f.stem) and f.stem not in out:
                    out[f.stem] = str(f)
        self.sources = {**out, **self.extra}
        return self.sources

    def names(self) -> list[str]:
        return list(self.sources)

    def check(self, name) -> str:
        """A requested model name (A1111's ``sd_model_checkpoint``), checked; A1111 titles may end in
        ``.safetensors`` or `` [hash]``, which are dropped."""
        if isinstance(name, str):
            name = re.sub(r"\s*\[[0-9a-f]{6,}\]$", "", name).removesuffix(".safetensors")
        return check_name("model", name, self.names())

    # -- the worker thread only ---------------------------------------------------------------------
    def get(self, name: str | None = None):
        """The pipeline of model ``name`` (default: the current one), loading it if needed."""
        name = name or self.current
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return self._loaded[name]
        if name not in self.sources:
            raise ApiError(404, f"model {name!r} is gone from the models folder; use one of: {', '.join(self.sources)}.")
        pipe = self._load(name, self.sources[name])
        self._loaded[name] = pipe
        while len(self._loaded) > self.keep:
            old = next((n for n in self._loaded if n not in (name, self.current, *self.held)), None)
            if old is None:  # all held by the job: kept until another job holds others
                break
            del self._loaded[old]
        return pipe

    def unload(self) -> None:
        """Every pipeline out of memory (A1111's unload-checkpoint; the worker thread only): the next ``get`` loads."""
        self._loaded.clear()

    def hold(self, names) -> None:
        """The models a job draws with (None: the current one): loading one of them never evicts another."""
        self.held = frozenset(n for n in names if n)

    def _load(self, name: str, source: str | None):
        import latentgen
        from latentgen.text.embeddings import read

        try:
            pipe = latentgen.load(source, device=self.device, dtype=self.dtype, **self.load_options)
        except (OSError, ValueError) as e:
            raise ApiError(500, f"model {name!r} could not be loaded: {e}") from None
        pipe.name = name
        self.skipped[name] = {}
        for path, token in self.embeddings:
            try:
                pipe.load_embedding(path, token or None)
            except ValueError as e:  # made for another text encoder: listed as skipped, as A1111 does
                vectors, _ = read(path)
                self.skipped[name][token or Path(path).stem] = {**embedding_item(vectors.shape[1], len(vectors)),
                                                                "reason": str(e)}
        if self.warmup:  # the backend's first-call work (OpenVINO's conversion, torch.compile's minute) happens
            try:  # now, for the shape of a usual request: default size, CFG, one prompt chunk
                pipe.generate("", seed=0, steps=1)
            except Exception as e:  # noqa: BLE001  (a request meets it again, and reports it as errors are)
                warnings.warn(f"model {name!r}: the warm-up image failed ({type(e).__name__}: {e}); requests "
                              f"will report the error if it persists.", RuntimeWarning)
        return pipe

    def switch(self, name: str):
        """Make ``name`` the current model (loading it first, so a failure leaves the old one current)."""
        pipe = self.get(name)
        self.current = name
        return pipe

    def loaded(self, name: str | None = None):
        """The pipeline of ``name`` (default: current) if it is in memory, else None; any thread may ask."""
        return self._loaded.get(name or self.current)


def embedding_item(width: int, vectors: int) -> dict:
    """An item of A1111's ``GET /sdapi/v1/embeddings``."""
    return {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": width, "vectors": vectors}


class Loras:
    """LoRAs that prompts may name with ``<lora:NAME:WEIGHT>``: latentgen's shipped ones (``purple``) and
    those given with ``--lora`` (files, or folders of ``.safetensors`` files)."""

    def __init__(self, specs: list[str] | None = None):
        from latentgen.lora.formats import shipped_loras

        shipped = shipped_loras()
        self.files: dict[str, Path] = dict(shipped)
        for spec in specs or []:
            p = Path(spec)
            if p.is_dir():
                given = sorted(p.glob("*.safetensors"))
            elif p.is_file() and p.suffix == ".safetensors":
                given = [p]
            elif spec in self.files:  # a shipped LoRA's name, or one already named
                continue
            else:
                raise FileNotFoundError(f"--lora {spec}: no .safetensors file or folder there, and no shipped "
                                        f"LoRA of that name ({', '.join(shipped) or 'none'}).")
            # named as LoraAdapters names files by default: the stem, dots as underscores
            self.files.update({f.stem.replace(".", "_"): f.resolve() for f in given})
        self.files = {n: f for n, f in self.files.items() if NAME.match(n)}

    def names(self) -> list[str]:
        return list(self.files)

    def check(self, name) -> Path:
        return self.files[check_name("LoRA", name, self.names(),
                                     " Prompts name LoRAs as <lora:NAME:WEIGHT>; the server's --lora adds more.")]

    @cached_property
    def listing(self) -> list[dict]:
        """A1111's ``GET /sdapi/v1/loras`` items, the headers read once (``POST /sdapi/v1/refresh-loras``
        makes a new ``Loras``); ``path`` is the file's name only, not where it lies."""
        return [{"name": n, "alias": n, "path": f.name, "metadata": _header(f)} for n, f in self.files.items()]


def _header(path: Path) -> dict:
    """The safetensors header's metadata (training notes), read without loading any tensor."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception:  # noqa: BLE001 - safetensors raises several types for a bad file: no notes then
        return {}
    return {k: v for k, v in meta.items() if isinstance(v, str) and len(v) < 4096}


class Styles:
    """A1111's prompt styles from ``--styles-file`` (``latentgen.text.styles``), read again when the file changes (its
    time stamp, size or inode). A read that fails, or that the file changed under, keeps the last good table (A1111
    saves the file in place: it may be read half written); ``ServeConfig.check`` read it once before the start."""

    def __init__(self, path: Path | None):
        self.path, self._seen, self._table = path, None, {}

    def _stamp(self):
        s = self.path.stat()
        return s.st_mtime_ns, s.st_size, s.st_ino

    def table(self) -> dict:
        from latentgen.text import styles

        if self.path is None:
            return {}
        try:
            stamp = self._stamp()
            if stamp != self._seen:
                table = styles.read(self.path)
                if self._stamp() == stamp:  # not written while it was read
                    self._table, self._seen = table, stamp
        except (OSError, ValueError) as e:
            warnings.warn(f"--styles-file {self.path}: {e}; the styles read before are kept.", RuntimeWarning)
        return self._table

    def items(self) -> list[dict]:  # GET /sdapi/v1/prompt-styles, as A1111 lists them
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in self.table().values()]
