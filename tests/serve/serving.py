"""Helpers of the serve tests: a real uvicorn server on 127.0.0.1 at a free port, in a thread of the test
process (``Served``) or as ``latentgen serve`` in a subprocess (``spawn``), and the reference pipeline.

Imported by tests/serve/test_*.py (pytest puts this folder on sys.path, as tests/ for conftest)."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """``create_app(config)`` under uvicorn in a thread; ``url`` is its base address."""

    def __init__(self, config):
        import uvicorn

        from latentgen.serve import create_app

        self.app = create_app(config)
        self.server_state = self.app.state.server
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    limit_concurrency=64))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def spawn(*args: str, env: dict | None = None) -> subprocess.Popen:
    """``latentgen serve ARGS`` in a subprocess; its output goes to a file (``proc.log``), never a pipe
    that could fill up and stall it."""
    log = tempfile.NamedTemporaryFile("w+", prefix="latentgen-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "latentgen.cli", "serve", *args], stdout=log,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    proc.log = log.name
    return proc


def output(proc: subprocess.Popen) -> str:
    with open(proc.log) as f:
        return f.read()


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 90, auth=None) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"latentgen serve exited with {proc.returncode}: {output(proc)}")
        try:
            requests.get(url + "/sdapi/v1/progress", timeout=2, auth=auth)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise RuntimeError(f"latentgen serve did not answer in time: {output(proc)}")


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def max_diff(a: Image.Image, b: Image.Image) -> int:
    assert a.size == b.size, (a.size, b.size)
    return int(np.abs(np.asarray(a.convert("RGB"), np.int16) - np.asarray(b.convert("RGB"), np.int16)).max())


_reference = []


def reference():
    """latentgen's Python API on the embedded model, loaded once per test process (not the server's)."""
    if not _reference:
        import latentgen

        _reference.append(latentgen.load())
    return _reference[0]


def green(size: int = 64) -> Image.Image:
    from latentgen.embedded import shapes

    return Image.new("RGB", (size, size), shapes.PALETTE["green"])


def square_mask(size: int = 64, box=(20, 20, 44, 44)) -> Image.Image:
    m = Image.new("L", (size, size), 0)
    m.paste(255, box)
    return m
