"""The disk cache of converted U-Nets (``latentgen.backends.runtime``): one folder per set of weights, named by
their hash, holding OpenVINO IR (``unet.xml`` + ``unet.bin``: ~1.7 GB for SD 1.5, ~17 MB for the
embedded model). Every checkpoint a user runs adds one, so the cache is bounded: after each conversion
the least recently used folders are removed until it holds at most ``$LATENTGEN_CACHE_GB`` (default
``DEFAULT_GB``); the folder just written is always kept. ``latentgen cache`` lists it, ``--clear``
empties it. Conversions killed mid-write leave ``.tmp-*`` folders, removed once they are an hour old.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

LIMIT_ENV = "LATENTGEN_CACHE_GB"
DEFAULT_GB = 20.0
STALE_SECONDS = 3600  # a .tmp-* folder this old belongs to no running conversion


def cache_dir() -> Path:
    """Where converted U-Nets are kept: ``$LATENTGEN_CACHE/openvino`` or ``~/.cache/latentgen/openvino``."""
    root = os.environ.get("LATENTGEN_CACHE") or Path.home() / ".cache" / "latentgen"
    return Path(root) / "openvino"


def limit_bytes() -> int:
    """``$LATENTGEN_CACHE_GB`` (a number of GB, 0 keeps only the newest entry, inf no limit) in bytes."""
    text = os.environ.get(LIMIT_ENV, "")
    try:
        gb = float(text) if text else DEFAULT_GB
    except ValueError:
        gb = -1.0
    if not gb >= 0:  # also NaN
        raise ValueError(f"${LIMIT_ENV}={text!r} is not a size; set it to a number of GB such as 20, or unset it.")
    return int(min(gb, 2.0**33) * 2**30)  # 8 billion GB stands for inf: no disk holds more


@dataclass(frozen=True)
class Entry:
    folder: Path
    bytes: int
    last_used: float  # seconds since the epoch: the mtime of unet.xml, touched at each load


def entries() -> list[Entry]:
    """The converted U-Nets in the cache, least recently used first."""
    found = []
    for xml in cache_dir().glob("*/unet.xml"):
        try:
            size = sum(f.stat().st_size for f in xml.parent.iterdir() if f.is_file())
            found.append(Entry(xml.parent, size, xml.stat().st_mtime))
        except OSError:  # removed meanwhile by another process
            continue
    return sorted(found, key=lambda e: e.last_used)


def touch(folder: Path) -> None:
    """Mark ``folder`` as just used (a read-only cache is used all the same)."""
    try:
        os.utime(folder / "unet.xml")
    except OSError:
        pass


def _remove_stale() -> list[Path]:
    """Remove the ``.tmp-*`` folders older than ``STALE_SECONDS`` (conversions killed mid-write)."""
    removed = []
    for tmp in cache_dir().glob(".tmp-*"):
        try:
            if time.time() - tmp.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
                removed.append(tmp)
        except OSError:
            continue
    return removed


def prune(keep: Path, limit: int | None = None) -> list[Path]:
    """Remove the least recently used entries (never ``keep``) until the cache holds at most ``limit``
    bytes (default ``limit_bytes()``), and stale ``.tmp-*`` folders; returns the folders removed."""
    limit = limit_bytes() if limit is None else limit
    removed = _remove_stale()
    found = entries()
    total = sum(e.bytes for e in found)
    for e in found:
        if total <= limit:
            break
        if e.folder.resolve() == keep.resolve():
            continue
        shutil.rmtree(e.folder, ignore_errors=True)
        removed.append(e.folder)
        total -= e.bytes
    return removed


def clear() -> int:
    """Remove every entry (and stale temporary folder); returns the bytes freed."""
    freed = 0
    for e in entries():
        shutil.rmtree(e.folder, ignore_errors=True)
        freed += e.bytes
    _remove_stale()
    return freed
