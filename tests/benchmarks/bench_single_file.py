"""Benchmark: an SD 1.5-sized single file, offline. Builds the ``sd15`` preset (random weights) as a
diffusers folder, exports it to one fp16 ``.safetensors`` file (~2 GB, the size shared SD 1.5 files
have), loads that file, and checks it against the folder: every tensor equal to the folder's rounded
to fp16, the key set diffusers reads as SD 1.x, and a small image close to the folder's. Prints the
seconds and the peak RSS above the baseline of each phase.

    python tests/benchmarks/bench_single_file.py --work /tmp/bench-sd15       # ~9 GB of disk, CPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import psutil  # noqa: E402  (comes with accelerate)
import torch  # noqa: E402


def _anon() -> int:
    """Anonymous resident bytes (RssAnon): memory the process owns, without mapped file pages."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))


class Phase:
    """Seconds and peak memory of a block, MiB above the entry baseline, sampled every 10 ms (a 1 ms
    sampling thread slowed the timed work of bench_txt2img.py by 2-5%): RSS (with the pages of
    memory-mapped weight files) and anonymous RSS (without them)."""

    results: dict = {}

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.proc, self.stop = psutil.Process(), threading.Event()
        self.base = self.peak = self.proc.memory_info().rss
        self.anon_base = self.anon_peak = _anon()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        self.t0 = time.perf_counter()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self.anon_peak = max(self.anon_peak, _anon())
            time.sleep(0.01)

    def __exit__(self, *exc):
        seconds = time.perf_counter() - self.t0
        self.stop.set()
        self.thread.join()
        Phase.results[self.name] = {"seconds": round(seconds, 1),
                                    "peak_rss_mib": round((self.peak - self.base) / 2**20),
                                    "peak_anon_mib": round((self.anon_peak - self.anon_base) / 2**20)}
        print(self.name, Phase.results[self.name], flush=True)


def build_folder(folder: Path) -> None:
    from diffusers import StableDiffusionPipeline

    from latentgen.models import loading

    c = loading.load_components("sd15", device="cpu", dtype="fp32")
    StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                            scheduler=c.scheduler, safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(folder)


def check(single, ref, path: Path) -> dict:
    """The single file's model against the folder's: tensors, diffusers' reading of the keys, an image."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type
    from safetensors import safe_open

    same = all(torch.equal(a, b.half().float()) for m, n in ((single.unet, ref.unet), (single.vae, ref.vae),
                                                             (single.text_encoder, ref.text_encoder))
               for a, b in zip(m.state_dict().values(), n.state_dict().values()))
    kw = dict(seed=0, steps=2, width=64, height=64, scheduler="ddim")
    diff = np.abs(np.asarray(single.generate("a cat", **kw)[0], np.int16) -
                  np.asarray(ref.generate("a cat", **kw)[0], np.int16)).max()
    with safe_open(str(path), framework="pt") as f:
        meta = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    return {"tensors_equal_to_fp16_of_folder": same, "diffusers_reads_as": infer_diffusers_model_type(meta),
            "tensors": len(meta), "image_max_diff_vs_fp32_folder": int(diff)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/bench-sd15", help="scratch folder (~9 GB), removed at the end")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    folder, out = work / "sd15", work / "sd15.safetensors"
    import latentgen
    from latentgen.models import export as ldm_export

    try:
        with Phase("build folder (random sd15, fp32)"):
            build_folder(folder)
        with Phase("export to one fp16 file"):
            ldm_export.export(folder, out, dtype="fp16", force=True)
        with Phase("load the single file (fp32 on CPU)"):
            single = latentgen.load(out, device="cpu", dtype="fp32")
        with Phase("load the folder (fp32 on CPU) and read every weight, for comparison"):
            ref = latentgen.load(folder, device="cpu", dtype="fp32")  # diffusers maps the files lazily:
            for m in (ref.unet, ref.vae, ref.text_encoder):  # reading every weight makes the figures comparable
                sum(float(t.sum()) for t in m.state_dict().values())
        report = {"file_mib": round(out.stat().st_size / 2**20), "phases": Phase.results, **check(single, ref, out),
                  "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"}
        print(json.dumps(report, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
