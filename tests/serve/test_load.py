"""latentgen serve under load and faults: ``latentgen serve`` in a subprocess (its own memory, measured),
HTTP Basic auth on, driven on 127.0.0.1 only.

* 20 concurrent clients for a bounded time: every request completes with its own correct image or
  gets a 429; none is lost or answered with another's image; the server's RSS stays flat. The
  figures (requests, completed, rejected, p50/p95 latency, RSS) are printed (``pytest -s``).
* interrupt mid-job frees the worker; a client that disconnects (while its job waits or runs) does
  not hold the queue.
* malformed JSON, bad base64, a 20000x20000 PNG, a negative size, an unknown sampler, a path as a
  model or LoRA name, an oversized body: each a 4xx with a clear message, and the server keeps serving.
* auth: a non-loopback bind without --api-auth refuses to start; with it, no or wrong credentials get 401.
"""

import base64
import json
import os
import socket
import statistics
import struct
import subprocess
import threading
import time
import zlib

import pytest
import requests

pytest.importorskip("fastapi", reason="latentgen serve needs the [serve] extra: pip install 'latentgen[serve]'")
webuiapi = pytest.importorskip("webuiapi", reason="the A1111 client: pip install webuiapi (in the [dev] extra)")
psutil = pytest.importorskip("psutil")

from serving import decode, free_port, green, max_diff, reference, spawn, wait_ready  # noqa: E402

from latentgen.serve.config import ServeConfig, is_loopback  # noqa: E402

AUTH = ("load", "s3cret:with:colons")
SECONDS = float(os.environ.get("LATENTGEN_LOAD_SECONDS", "20"))
CLIENTS = 20
COLORS = ["red", "green", "blue", "yellow", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = spawn("--port", str(port), "--api-auth", ":".join(AUTH), "--queue-size", "4", "--max-body-mb", "4",
                 "--log-level", "warning")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, auth=AUTH)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        os.unlink(proc.log)


def post(url, path, body, **kw):
    return requests.post(url + "/sdapi/v1/" + path, json=body, auth=AUTH, timeout=kw.pop("timeout", 120), **kw)


def progress(url):
    return requests.get(url + "/sdapi/v1/progress?skip_current_image=true", auth=AUTH, timeout=10).json()


@pytest.mark.slow  # a bounded soak: LATENTGEN_LOAD_SECONDS (20) of load, then the queue drains
def test_twenty_clients_every_request_completes_or_gets_429(server):
    url, proc = server
    assert post(url, "txt2img", {"prompt": "a red circle", "steps": 2}).status_code == 200  # warm: steady state
    rss = psutil.Process(proc.pid).memory_info().rss
    results, lock, deadline = [], threading.Lock(), time.monotonic() + SECONDS
    rss_samples = []

    def client(k):
        s = requests.Session()
        s.auth = AUTH
        i = 0
        while time.monotonic() < deadline:
            seed = k * 1_000_000 + i
            prompt = f"a {COLORS[k % 7]} {SHAPES[i % 3]} on a {COLORS[(k + 3) % 7]} background"
            t = time.monotonic()
            try:
                r = s.post(url + "/sdapi/v1/txt2img", json={"prompt": prompt, "seed": seed, "steps": 2, "width": 64,
                                                            "height": 64, "sampler_name": "Euler a"}, timeout=180)
                status, data = r.status_code, (r.json() if r.status_code in (200, 429) else r.text)
            except requests.RequestException as e:  # would be a lost request
                status, data = "lost", str(e)
            with lock:
                results.append((k, seed, prompt, status, time.monotonic() - t, data))
            if status == 429:  # a well-behaved client waits as told (Retry-After: 1)
                time.sleep(float(r.headers.get("Retry-After", 1)))
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        rss_samples.append(psutil.Process(proc.pid).memory_info().rss)
        time.sleep(0.5)
    for t in threads:
        t.join()

    done = [r for r in results if r[3] == 200]
    rejected = [r for r in results if r[3] == 429]
    other = [r[3:4] + (str(r[5])[:200],) for r in results if r[3] not in (200, 429)]
    assert not other, other  # nothing lost, nothing failed
    assert len(done) + len(rejected) == len(results) and done and rejected
    for k, seed, prompt, _, _, data in done:  # each answer is its own request's
        info = json.loads(data["info"])
        assert (info["seed"], info["prompt"], len(data["images"])) == (seed, prompt, 1)
        assert decode(data["images"][0]).info["parameters"].startswith(prompt + "\nSteps: 2, Sampler: Euler a")
    for k, seed, prompt, _, _, data in done[:: max(1, len(done) // 4)]:  # and the right pixels
        want = reference().generate(prompt, seed=seed, steps=2, scheduler="euler_a")[0]
        assert max_diff(decode(data["images"][0]), want) <= 1
    latency = sorted(r[4] for r in done)
    warm = rss_samples[len(rss_samples) // 4]  # after the first quarter: threads and caches warmed up
    end = psutil.Process(proc.pid).memory_info().rss
    figures = {"seconds": SECONDS, "clients": CLIENTS, "requests": len(results), "completed": len(done),
               "rejected_429": len(rejected), "lost_or_failed": len(other),
               "p50_s": round(statistics.median(latency), 3), "p95_s": round(latency[int(0.95 * (len(latency) - 1))], 3),
               "rss_start_mb": rss >> 20, "rss_warm_mb": warm >> 20, "rss_end_mb": end >> 20,
               "rss_max_mb": max(rss_samples) >> 20}
    print("\nload figures:", json.dumps(figures))
    assert end - warm < 64 * 2**20, figures  # flat: no growth with the number of requests
    assert progress(url)["state"]["queued"] == 0 and post(url, "txt2img", {"steps": 1}).status_code == 200


def test_interrupt_mid_job_frees_the_worker(server):
    url, _ = server
    answer = {}
    t = threading.Thread(target=lambda: answer.update(r=post(url, "txt2img", {"prompt": "a red circle", "steps": 150,
                                                                              "seed": 5})))
    t.start()
    deadline = time.monotonic() + 60
    while not progress(url)["state"]["sampling_step"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert requests.post(url + "/sdapi/v1/interrupt", auth=AUTH, timeout=10).json() == {}
    t.join(timeout=60)
    r = answer["r"]
    info = json.loads(r.json()["info"])
    assert r.status_code == 200 and info["interrupted"] is True
    assert len(r.json()["images"]) == 1  # A1111's: the picture so far, from the last step's clean estimate
    assert post(url, "txt2img", {"prompt": "a red circle", "steps": 1}).status_code == 200


def _raw_post(url, body: dict) -> socket.socket:
    """A request sent by a client that will hang up without reading the answer."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    auth = base64.b64encode(":".join(AUTH).encode()).decode()
    s = socket.create_connection((host, int(port)))
    s.sendall(f"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
              f"Authorization: Basic {auth}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def test_a_client_that_disconnects_does_not_hold_the_queue(server):
    url, _ = server
    seen, stop = [], threading.Event()  # (sampling_steps, sampling_step) of the running jobs, all along

    def watch():
        while not stop.is_set():
            st = progress(url)["state"]
            seen.append((st["sampling_steps"], st["sampling_step"]))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        # running: the job stops at its next step once the server sees its client gone
        s = _raw_post(url, {"prompt": "a red circle", "steps": 150})
        _wait(url, lambda p: p["state"]["sampling_step"] >= 1)
        s.close()
        assert _wait(url, lambda p: p["state"]["job_count"] == 0), "the abandoned job kept running"
        # waiting: a job whose client left is skipped; the one behind it runs
        answer = {}
        first = threading.Thread(target=lambda: answer.update(r=post(url, "txt2img", {"prompt": "x", "steps": 12})))
        first.start()
        _wait(url, lambda p: p["state"]["sampling_step"] >= 1)
        s = _raw_post(url, {"prompt": "a red circle", "steps": 149})
        _wait(url, lambda p: p["state"]["queued"] == 1, 10)
        s.close()
        after = post(url, "txt2img", {"prompt": "a blue square", "steps": 1})
        first.join(timeout=120)
    finally:
        stop.set()
        watcher.join()
    assert answer["r"].status_code == 200 and after.status_code == 200
    assert max((step for n, step in seen if n == 150), default=0) < 75  # stopped, not run to the end
    assert max((step for n, step in seen if n == 149), default=0) < 75  # skipped (or stopped at once)
    assert progress(url)["state"]["queued"] == 0


def _wait(url, until, seconds=60) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if until(progress(url)):
            return True
        time.sleep(0.05)
    return False


def _huge_png(width=20000, height=20000) -> bytes:
    """A real, valid 1-bit PNG of width x height (about 50 KB compressed, 400 MP when decoded)."""
    row = b"\x00" + bytes((width + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.mark.parametrize("case, body, status, words", [
    ("malformed JSON", b'{"prompt": "a cat",', 422, "JSON"),
    ("not an object", b'["a cat"]', 422, "JSON object"),
    ("bad base64", {"init_images": ["@@not base64@@"]}, 422, "not valid base64"),
    ("not an image", {"init_images": [base64.b64encode(b"hello, not a png").decode()]}, 422, "not an image"),
    ("20000x20000 PNG", {"init_images": [base64.b64encode(_huge_png()).decode()]}, 422, "400000000 pixels"),
    ("a URL to fetch", {"init_images": ["http://127.0.0.1:1/x.png"]}, 422, "downloads nothing"),
    ("negative size", {"width": -64, "height": 64}, 422, "width=-64"),
    ("size not a multiple of 8", {"width": 70, "height": 64, "steps": 1}, 422, "multiple of 8"),
    ("too many pixels", {"width": 4096, "height": 4096}, 422, "--max-pixels"),
    ("too many steps", {"steps": 100000}, 422, "--max-steps"),
    ("too many images", {"batch_size": 8, "n_iter": 8}, 422, "--max-images"),
    ("unknown sampler", {"sampler_name": "Euler z"}, 404, "Sampler not found"),
    ("path as model name", {"override_settings": {"sd_model_checkpoint": "../../x"}}, 422, "never by path"),
    ("path as LoRA name", {"prompt": "a cat <lora:../../etc/passwd:1>"}, 422, "never by path"),
    ("a string for steps", {"steps": "many"}, 422, "steps"),
    ("A1111 AND without CFG", {"prompt": "a circle AND a square", "cfg_scale": 1}, 422, "use guidance > 1"),
    ("absurd CFG scale", {"cfg_scale": 1e30, "steps": 1}, 422, "guidance=1e+30"),
    ("oversized body", {"prompt": "x" * (5 << 20)}, 413, "--max-body-mb"),
])
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(server, case, body, status, words):
    url, _ = server
    path = "img2img" if isinstance(body, dict) and "init_images" in body else "txt2img"
    if isinstance(body, bytes):
        r = requests.post(url + "/sdapi/v1/" + path, data=body, auth=AUTH, timeout=60,
                          headers={"Content-Type": "application/json"})
    else:
        r = post(url, path, body, timeout=60)
    assert r.status_code == status, (case, r.text[:500])
    data = r.json()
    assert set(data) >= {"error", "detail"} and words in str(data["detail"]) + data.get("errors", ""), (case, data)
    assert "Traceback" not in r.text and 'File "' not in r.text
    assert requests.get(url + "/sdapi/v1/progress", auth=AUTH, timeout=10).status_code == 200


def test_after_the_bad_requests_the_worker_still_draws(server):
    url, _ = server
    r = post(url, "txt2img", {"prompt": "a red circle on a blue background", "steps": 2, "seed": 9})
    assert r.status_code == 200 and json.loads(r.json()["info"])["all_seeds"] == [9]


def test_options_and_lists_refuse_paths_too(server):
    url, _ = server
    r = requests.post(url + "/sdapi/v1/options", json={"sd_model_checkpoint": "../../x"}, auth=AUTH, timeout=10)
    assert r.status_code == 422 and "never by path" in r.json()["detail"]
    r = requests.post(url + "/sdapi/v1/options", json={"outdir_samples": "/tmp/elsewhere"}, auth=AUTH, timeout=10)
    assert r.status_code == 422 and "--outdir" in r.json()["detail"]
    r = requests.get(url + "/sdapi/v1/nothing-here", auth=AUTH, timeout=10)
    assert r.status_code == 404 and r.json()["error"] == "HTTPException"


def test_auth_on_every_path(server):
    url, _ = server
    for path in ("/", "/sdapi/v1/progress", "/sdapi/v1/sd-models", "/static/app.js", "/docs"):
        r = requests.get(url + path, timeout=10)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic"), path
        assert r.json()["detail"] == "Incorrect username or password"
        assert requests.get(url + path, auth=("load", "wrong"), timeout=10).status_code == 401
        assert requests.get(url + path, auth=("other", AUTH[1]), timeout=10).status_code == 401
        assert requests.get(url + path, auth=AUTH, timeout=10).status_code == 200
    assert requests.post(url + "/sdapi/v1/txt2img", json={"steps": 1}, timeout=10).status_code == 401
    with pytest.raises(RuntimeError):
        webuiapi.WebUIApi(port=int(url.rsplit(":", 1)[1])).txt2img(prompt="x", steps=1, width=64, height=64)
    api = webuiapi.WebUIApi(port=int(url.rsplit(":", 1)[1]), username=AUTH[0], password=AUTH[1])
    r = api.img2img(images=[green()], prompt="a red circle on a green background", steps=2, width=64, height=64,
                    denoising_strength=0.5, seed=1)
    assert r.info["seed"] == 1 and r.images[0].size == (64, 64)
    assert r.images[0].info["parameters"] == r.info["infotexts"][0]  # the PNG kept its parameters


def test_a_non_loopback_bind_needs_api_auth(capsys):
    from latentgen.cli import main

    assert main(["serve", "--host", "0.0.0.0", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert "--api-auth" in err and "--insecure" in err and "loading model" not in err, err  # before anything loads
    ServeConfig(host="0.0.0.0", api_auth="a:b").check()
    ServeConfig(host="0.0.0.0", insecure=True).check()
    with pytest.raises(ValueError, match="USER:PASSWORD"):
        ServeConfig(api_auth="nopassword").check()
    assert main(["serve", "--upscalers-dir", "/nowhere/esrgan", "--port", str(free_port())]) == 2
    assert "--upscalers-dir /nowhere/esrgan is not a folder" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("127.8.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")


def test_idle_and_slow_header_connections_do_not_lock_out_real_requests(server):
    """200 connections that send nothing or half a request head, held open while 20 real requests arrive at once:
    every real one is answered (200, or 429 from the full queue), none 503; the server then closes the idle ones
    itself (--header-timeout, 10 s by default), before any credentials were asked of them."""
    from concurrent.futures import ThreadPoolExecutor

    url, _ = server
    port = int(url.rsplit(":", 1)[1])
    idle = []
    try:
        for i in range(200):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:  # slowloris: a request head that never ends
                s.sendall(b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            idle.append(s)
        with ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(lambda i: post(url, "txt2img", {"prompt": "a red circle", "steps": 1, "seed": i,
                                                                   "width": 64, "height": 64}).status_code, range(20)))
        assert set(codes) <= {200, 429} and codes.count(200) >= 4, codes  # the queue holds 4 beside the one running
        closed = 0
        for s in idle:
            s.settimeout(20)
            try:
                closed += s.recv(1) == b""  # the server hung up: no answer, no 503, no 401 to parse
            except (ConnectionResetError, TimeoutError):
                closed += 1
        assert closed == 200
    finally:
        for s in idle:
            s.close()
    assert post(url, "txt2img", {"prompt": "a blue square", "steps": 1}).status_code == 200
