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


def usual_mode(path: str | Path, folder: bool = False) -> None:
    """Give ``path`` the mode ``open()`` (``mkdir()``) would: 0666 (0777) less the umask. Temporary files are made
    0600 and some writers (safetensors) reset a file to 0600: outputs would be private to their owner."""
    os.chmod(path, (0o777 if folder else 0o666) & ~umask())


def output_target(path: str | Path) -> Path:
    """Where writing ``path`` lands: a symlink is written through (its target is replaced, the link stays);
    anything there but a regular file (a device, a FIFO, a socket, a folder) is refused, never replaced."""
    path = Path(path)
    real = Path(os.path.realpath(path)) if path.is_symlink() else path
    if real.exists() and not real.is_file():
        kind = "a folder" if real.is_dir() else "not a regular file (a device, FIFO or socket)"
        raise FileExistsError(f"{path} is {kind}: latentgen writes regular files only and never replaces anything "
                              f"else; choose another output path.")
    return real


@contextmanager
def atomic_path(path: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; write to it, and when the block ends without an error
    it becomes ``path`` in one rename, with the usual mode (``usual_mode``). ``overwrite=False`` never replaces
    an existing file, even one created meanwhile (FileExistsError). On an error the temporary file is removed.
    A symlink is written through; a path that holds anything but a regular file is refused (``output_target``)."""
    path = output_target(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        usual_mode(tmp)
        output_target(path)  # still no device or folder there (one may have appeared while we worked)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails when path exists: no clobbering, no race
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sha256(path: str | Path) -> str:
    """The file's sha256 (hex), read 16 MiB at a time: the hashes PNG metadata names files by (LoRAs, VAEs)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def safetensors_sha256(path: str | Path) -> str:
    """The sha256 (hex) of a .safetensors file past its header: its tensors' bytes, whatever its metadata says
    (kohya's "addnet" hash; A1111's LoRA hash, civitai's AutoV3)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(8 + int.from_bytes(f.read(8), "little"))
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


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
    try:
        yield tmp
        usual_modes(tmp)  # mkdtemp's 0700, and files libraries wrote 0600, would make the folder private
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


def usual_modes(folder: str | Path) -> None:
    """``usual_mode`` for ``folder`` and everything in it (folders 0777, files 0666, less the umask)."""
    usual_mode(folder, folder=True)
    for root, dirs, names in os.walk(folder):
        for d in dirs:
            usual_mode(Path(root) / d, folder=True)
        for n in names:
            usual_mode(Path(root) / n)


def restore_backup(final: Path) -> None:
    """Put back the newest ``.NAME.xxxx.old`` that ``atomic_folder`` moved aside, when ``final`` is
    missing (a kill between its two renames)."""
    if final.exists():
        return
    backups = sorted(final.parent.glob(f".{glob.escape(final.name)}.*.old"), key=lambda p: p.stat().st_mtime)
    if backups:
        os.replace(backups[-1], final)


@contextmanager
def lock(path: str | Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (the system's ``flock``: a killed holder lets go) while the block runs;
    when another process holds it, FileExistsError: ``busy`` and the holder's pid."""
    import fcntl

    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise FileExistsError(f"{busy} (held by pid {f.read().strip() or 'unknown'}).") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield


def machine() -> str:
    """This machine in a few words, for manifests: CPU, core count, torch version."""
    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
