"""Writing files and folders atomically: a crash or a kill never leaves a half-written output, and
nothing the user had is replaced unless asked."""

from __future__ import annotations

import functools
import glob
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@functools.cache
def umask() -> int:
    """The process's file-creation mask (read once: ``os.umask`` can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; write to it, and when the block ends without an error
    it becomes ``path`` in one rename. ``overwrite=False`` never replaces an existing file, even one
    created meanwhile (FileExistsError). On an error the temporary file is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~umask())  # mkstemp's 0600 would make outputs private; give what open() gives
    try:
        yield Path(tmp)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails when path exists: no clobbering, no race
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (replacing it)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def copy_file(src: str | Path, dest: str | Path) -> Path:
    """Copy ``src`` to ``dest`` atomically (replacing it)."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dest)


@contextmanager
def atomic_folder(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; when the block succeeds it replaces ``final``
    (the old one is moved aside first and removed last). On an error ``final`` is left as it was.
    The temporary and backup folders have unique hidden names (``.NAME.xxxx.tmp``/``.old``): only
    folders made here are removed, never a user's ``NAME.tmp``. If a kill left ``final`` missing
    with its backup beside it, the backup is put back first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    restore_backup(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~umask())  # mkdtemp's 0700 would make the folder private; give what mkdir() gives
    try:
        yield tmp
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".old"))
            os.replace(final, old)  # onto our own empty folder: one rename
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def restore_backup(final: Path) -> None:
    """Put back the newest ``.NAME.xxxx.old`` that ``atomic_folder`` moved aside, when ``final`` is
    missing (a kill between its two renames)."""
    if final.exists():
        return
    backups = sorted(final.parent.glob(f".{glob.escape(final.name)}.*.old"), key=lambda p: p.stat().st_mtime)
    if backups:
        os.replace(backups[-1], final)


def machine() -> str:
    """This machine in a few words, for manifests: CPU, core count, torch version."""
    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
