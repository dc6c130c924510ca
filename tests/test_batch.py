"""latentgen.batch: jobs stream to disk, a killed run resumes without half files, processes share
the work and give the same bytes as one process."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from latentgen import batch, metadata
from latentgen.cli import batch as cli_batch

JOBS = [{"prompt": "a red circle on a blue background", "seed": 3, "steps": 4},
        {"prompt": "a white square on a black background", "seed": 0, "steps": 4, "guidance": 3.0},
        {"prompt": "a green triangle on a yellow background", "seed": 7, "steps": 4, "scheduler": "ddim"},
        {"prompt": "a blue circle on a red background", "seed": 1, "steps": 4, "negative_prompt": "green"}]


@pytest.fixture(scope="module")
def embedded():
    import latentgen

    return latentgen.load()


@pytest.fixture(scope="module")
def reference(embedded, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    figures = batch.run(embedded, JOBS, out, progress=False)
    assert figures["drawn"] == 4 and figures["skipped"] == 0
    return out


def _visible(folder):  # the batch's files, not its hidden lock (.lock-N)
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _pixels(path):
    return np.asarray(Image.open(path).convert("RGB"))


def test_each_image_is_its_job_drawn_alone_with_its_settings(embedded, reference):
    for i, job in enumerate(JOBS):
        alone = embedded.generate(job["prompt"], **{k: v for k, v in job.items() if k != "prompt"})[0]
        assert np.array_equal(_pixels(reference / batch.image_name(i)), np.asarray(alone))
        assert metadata.read_parameters(reference / batch.image_name(i)) == alone.info["parameters"]
    rows = [json.loads(ln) for ln in (reference / "manifest-0.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2, 3] and rows[2]["job"] == JOBS[2]
    assert batch.done_jobs(reference, JOBS) == {0, 1, 2, 3}


def test_a_killed_run_leaves_no_half_file_and_resumes(embedded, reference, tmp_path, monkeypatch):
    real, calls = metadata.save_png, []

    def die_on_third(image, path, *a, **k):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real(image, path, *a, **k)

    monkeypatch.setattr(metadata, "save_png", die_on_third)
    with pytest.raises(batch.BatchInterrupted, match=r"2 of this run's 4 images are in .*run the same command again"):
        batch.run(embedded, JOBS, tmp_path, progress=False)
    monkeypatch.setattr(metadata, "save_png", real)
    assert _visible(tmp_path) == ["000000.png", "000001.png", "manifest-0.jsonl"]
    again = batch.run(embedded, JOBS, tmp_path, progress=False)
    assert again["drawn"] == 2 and again["skipped"] == 2
    for i in range(4):
        assert (tmp_path / batch.image_name(i)).read_bytes() == (reference / batch.image_name(i)).read_bytes()
    assert batch.run(embedded, JOBS, tmp_path, progress=False)["drawn"] == 0


def test_a_damaged_image_is_redrawn(embedded, reference, tmp_path):
    batch.run(embedded, JOBS[:2], tmp_path, progress=False)
    (tmp_path / "000001.png").write_bytes(b"not a png")
    assert batch.done_jobs(tmp_path, JOBS[:2]) == {0}
    assert batch.run(embedded, JOBS[:2], tmp_path, progress=False)["drawn"] == 1
    assert (tmp_path / "000001.png").read_bytes() == (reference / "000001.png").read_bytes()


def test_two_shares_make_the_same_files(embedded, reference, tmp_path):
    for p in (1, 0):
        batch.run(embedded, JOBS, tmp_path, process=p, processes=2, progress=False)
    assert sorted(json.loads(ln)["index"] for ln in (tmp_path / "manifest-1.jsonl").read_text().splitlines()) == [1, 3]
    for i in range(4):
        assert (tmp_path / batch.image_name(i)).read_bytes() == (reference / batch.image_name(i)).read_bytes()


@pytest.mark.slow
def test_accelerate_launch_two_processes_equals_one(reference, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(j) + "\n" for j in JOBS))
    # --multi_gpu without CUDA: 2 CPU processes in a gloo group, as finetune-lora's test. Each gets
    # the reference's thread count (the launcher would set 1): float sums depend on the thread count
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    threads = str(__import__("torch").get_num_threads())
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                        "--num_cpu_threads_per_process", threads,
                        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                        "-m", "latentgen.cli", "batch", str(jobs), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    figures = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert sorted(f["process"] for f in figures) == [0, 1] and sum(f["drawn"] for f in figures) == 4
    for i in range(4):
        assert (tmp_path / "out" / batch.image_name(i)).read_bytes() == (reference / batch.image_name(i)).read_bytes()


@pytest.mark.parametrize("line, message", [
    ('{"prompt": "x", "sede": 1}', "unknown key"),
    ("{not json", r"jobs.jsonl:2 is not JSON"),
    ('{"seed": 1}', "'prompt' must be text"),
    ('{"prompt": "x", "seed": -1}', "seed=-1 is invalid"),
    ('["x", 1]', "a job is a JSON object"),
    ('{"prompt": "x", "seed": 18446744073709551616}', "jobs.jsonl:2: seed=18446744073709551616 is invalid"),
    ('{"prompt": "x", "seed": 1.5}', "jobs.jsonl:2: seed=1.5 is invalid"),
    ('{"prompt": "x", "negative_prompt": 5}', "jobs.jsonl:2: 'negative_prompt' must be text"),
    ('{"prompt": "x", "hires": 2}', r"jobs.jsonl:2: 'hires' is a JSON object of scale, width, height, upscaler"),
    ('{"prompt": "x", "hires": {"scael": 2}}', r"'hires' is a JSON object of .* such as \{\"scale\": 2"),
    ('{"prompt": "x", "variation": {"subseed": 2}}', r"'variation' is a JSON object of seed, strength, resize_from"),
    ('{"prompt": "x", "variation": {"resize_from": 512}}', r"'variation.resize_from' is \[width, height\] in pixels"),
    ('{"prompt": "x", "refiner": {"switch_at": 0.5}}', r"'refiner' is a JSON object of model, switch_at, hires_pass, such"),
    ('{"prompt": "x", "hires": {"model": 3}}', r"'hires' is a JSON object of .*, model, such as"),
])
def test_bad_jobs_name_the_line(tmp_path, line, message):
    f = tmp_path / "jobs.jsonl"
    f.write_text('{"prompt": "ok", "seed": 0}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        batch.read_jobs(f)


def test_cli_checks_jobs_before_loading_a_model(tmp_path):
    f = tmp_path / "jobs.jsonl"
    f.write_text('{"prompt": "x", "steps": 2, "colour": "red"}\n')
    r = subprocess.run([sys.executable, "-m", "latentgen.cli", "batch", str(f), "--out", str(tmp_path / "o"),
                        "--model", str(tmp_path / "no-such-model")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown key(s) ['colour']" in r.stderr
    r = subprocess.run([sys.executable, "-m", "latentgen.cli", "batch", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--prompts" in r.stderr


def _rows(out):
    return [json.loads(ln) for p in sorted(out.glob("manifest-*.jsonl")) for ln in p.read_text().splitlines()]


def test_an_edited_job_is_redrawn_and_the_newest_line_wins(embedded, reference, tmp_path):
    batch.run(embedded, JOBS[:2], tmp_path, progress=False)
    edited = [JOBS[0], {**JOBS[1], "seed": 5}, JOBS[2]]  # job 1 changed in the jobs file, job 2 added
    assert batch.done_jobs(tmp_path, edited) == {0}
    figures = batch.run(embedded, edited, tmp_path, progress=False)
    assert figures["drawn"] == 2 and figures["skipped"] == 1
    alone = embedded.generate(edited[1]["prompt"], **{k: v for k, v in edited[1].items() if k != "prompt"})[0]
    assert np.array_equal(_pixels(tmp_path / "000001.png"), np.asarray(alone))
    assert (tmp_path / "000002.png").read_bytes() == (reference / "000002.png").read_bytes()
    assert batch.done_jobs(tmp_path, edited) == {0, 1, 2} and batch.done_jobs(tmp_path, JOBS[:2]) == {0}
    assert [r["job"]["seed"] for r in _rows(tmp_path) if r["index"] == 1] == [0, 5]  # the old line stays, unmatched


def test_a_manifest_line_cut_by_a_kill_does_not_swallow_the_next(embedded, tmp_path):
    batch.run(embedded, JOBS[:1], tmp_path, progress=False)
    manifest = tmp_path / "manifest-0.jsonl"
    manifest.write_text(manifest.read_text().rstrip("\n")[:-10])  # the only line, cut: no newline at the end
    (tmp_path / "000000.png").unlink()
    assert batch.run(embedded, JOBS[:1], tmp_path, progress=False)["drawn"] == 1
    lines = manifest.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["index"] == 0
    assert batch.done_jobs(tmp_path, JOBS[:1]) == {0}


def test_a_file_no_manifest_names_is_refused_before_drawing(embedded, tmp_path, monkeypatch):
    (tmp_path / "000001.png").write_bytes(b"the user's own picture")
    monkeypatch.setattr(embedded, "generate", lambda *a, **k: pytest.fail("drew before refusing"))
    with pytest.raises(FileExistsError, match=r"000001\.png.*another --out"):
        batch.run(embedded, JOBS[:2], tmp_path, progress=False)
    assert (tmp_path / "000001.png").read_bytes() == b"the user's own picture"
    assert _visible(tmp_path) == ["000001.png"]


@pytest.mark.parametrize("job, message", [
    ({"steps": "4"}, r"jobs\.jsonl:2: steps='4' is invalid"),
    ({"width": 65}, r"jobs\.jsonl:2: width=65 is invalid"),
    ({"scheduler": "nosuch"}, r"jobs\.jsonl:2: .*nosuch"),
    ({"prompt_syntax": "x"}, r"jobs\.jsonl:2: prompt_syntax='x' is invalid"),
    ({"clip_skip": 50}, r"jobs\.jsonl:2: clip_skip=50 is invalid: this model's text encoders take 1 \(the last "
                        r"layer\) to \d+"),
    ({"prompt": "x <lora:nosuch:0.5>"}, r"jobs\.jsonl:2: prompt tag <lora:nosuch>: LoRA file 'nosuch' does not "
                                        r"exist; pass the path of a \.safetensors file or the name of a shipped LoRA"),
    ({"prompt": "x <hypernet:h>"}, r"jobs\.jsonl:2: prompt 'x <hypernet:h>' has a tag that is not <lora:\.\.\.>"),
    ({"prompt": "x <lora:purple:a>"}, r"jobs\.jsonl:2: prompt tag '<lora:purple:a>' has weight 'a', not a finite number"),
    ({"negative_prompt": "<lora:purple>"}, r"jobs\.jsonl:2: negative_prompt '<lora:purple>' has a <lora:\.\.\.> tag"),
    ({"prompt": "x <lora:purple:inf>"}, r"jobs\.jsonl:2: prompt tag '<lora:purple:inf>' has weight 'inf', not a finite number"),
    ({"prompt": "x <lora:purple>", "prompt_syntax": "plain"}, None),  # plain text: no tags to check
    ({"prompt": "a circle AND a square", "guidance": 1}, r"jobs\.jsonl:2: prompt 'a circle AND a square' uses "
                                                          r"A1111's AND or a part weight.*use guidance > 1"),
    ({"prompt": "a [red:yellow:0.5] circle", "negative_prompt": "[a|b]"}, None),  # prompt editing: drawn
    ({"prompt": "a [red:yellow:0.5] circle", "prompt_syntax": "plain"}, None),  # plain text: drawn as written
    ({"variation": {"seed": 3, "strength": 1.5}}, r"jobs\.jsonl:2: .*strength=1\.5 is invalid"),
    ({"hires": {"scale": 2, "strength": 2}}, r"jobs\.jsonl:2: hires\.strength=2 is invalid"),
    ({"hires": {"upscaler": "nosuch"}}, r"jobs\.jsonl:2: .*nosuch"),
    ({"hires": {"scale": 8, "width": 4096, "height": 4096}}, r"jobs\.jsonl:2: .*4096"),  # the second pass's size
    ({"refiner": {"model": "no/such/refiner"}}, r"jobs\.jsonl:2: .*no/such/refiner"),
    ({"variation": {"seed": 3, "strength": 0.5}, "hires": {"scale": 1.5, "strength": 0.4, "steps": 2}}, None),
    ({"tiling": "yes"}, r"jobs\.jsonl:2: tiling must be True or False, got 'yes'"),
    ({"tiling": True}, None),
])
def test_every_setting_is_checked_with_its_line_before_drawing(embedded, tmp_path, monkeypatch, job, message):
    f = tmp_path / "jobs.jsonl"
    f.write_text('{"prompt": "ok", "seed": 0}\n' + json.dumps({"prompt": "x", **job}) + "\n")
    monkeypatch.setattr(embedded, "generate", lambda *a, **k: pytest.fail("drew before refusing"))
    if message is None:
        batch.check_all(embedded, batch.read_jobs(f))
        return
    with pytest.raises((ValueError, TypeError, FileNotFoundError), match=message):
        batch.run(embedded, batch.read_jobs(f), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_files_with_a_byte_order_mark_read_as_text(tmp_path):
    jobs, prompts = tmp_path / "jobs.jsonl", tmp_path / "p.txt"
    jobs.write_text('{"prompt": "x", "seed": 2}\n', encoding="utf-8-sig")
    prompts.write_text("a red circle\n", encoding="utf-8-sig")
    assert [j.args for j in batch.read_jobs(jobs)] == [{"prompt": "x", "seed": 2}]
    assert [j.args for j in cli_batch.prompt_jobs(prompts, "0")] == [{"prompt": "a red circle", "seed": 0}]


def test_cli_refuses_seeds_with_a_jobs_file(tmp_path):
    f = tmp_path / "jobs.jsonl"
    f.write_text('{"prompt": "x", "seed": 1}\n')
    r = subprocess.run([sys.executable, "-m", "latentgen.cli", "batch", str(f), "--seeds", "0-9", "--out",
                        str(tmp_path / "o"), "--model", str(tmp_path / "no-such-model")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--seeds goes with --prompts only" in r.stderr


def test_an_error_while_drawing_names_the_job(embedded, tmp_path, monkeypatch):
    from latentgen.guard import NonFiniteError

    def broken(*a, **k):
        raise NonFiniteError("the U-Net produced NaN")

    monkeypatch.setattr(embedded, "generate", broken)
    f = tmp_path / "jobs.jsonl"
    f.write_text('{"prompt": "ok", "seed": 0}\n')
    with pytest.raises(NonFiniteError, match=r"jobs\.jsonl:1: the U-Net produced NaN"):
        batch.run(embedded, batch.read_jobs(f), tmp_path / "out", progress=False)


def test_tagged_loras_are_read_once_before_drawing_and_one_of_another_model_is_refused(embedded, tmp_path,
                                                                                       lora_files, monkeypatch):
    from latentgen.lora import formats as lora

    reads = []
    real = lora.read
    monkeypatch.setattr(lora, "read", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    jobs = [{"prompt": f"circle {i} <lora:purple:0.{i}>", "seed": i} for i in range(1, 4)]
    batch.check_all(embedded, batch.as_jobs(jobs))  # a shipped LoRA of this model: fine
    assert reads == ["purple"]  # three jobs, one read
    other = str(lora_files[0]).replace("\\", "/")  # made for the tiny test model, not the embedded one
    f = tmp_path / "jobs.jsonl"
    f.write_text(json.dumps({"prompt": "ok", "seed": 0}) + "\n"
                 + json.dumps({"prompt": f"x <lora:{other}>", "seed": 1}))
    monkeypatch.setattr(embedded, "generate", lambda *a, **k: pytest.fail("drew before refusing"))
    with pytest.raises(ValueError, match=rf"jobs\.jsonl:2: prompt tag <lora:{re.escape(other)}>: a\.safetensors was "
                                         r"made for another architecture"):
        batch.run(embedded, batch.read_jobs(f), tmp_path / "out", progress=False)


def test_a_second_run_on_the_same_folder_is_refused_naming_the_holder(embedded, tmp_path, monkeypatch):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom latentgen import files\n"
                               f"with files.lock({str(tmp_path / '.lock-0')!r}, 'busy'):\n"
                               "    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(embedded, "generate", lambda *a, **k: pytest.fail("drew while another run held the folder"))
        with pytest.raises(FileExistsError, match=rf"in use by another latentgen batch \(process 0\).*pid {holder.pid}"):
            batch.run(embedded, JOBS, tmp_path, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert not list(tmp_path.glob("manifest-*"))  # nothing drawn, no manifest begun
    monkeypatch.undo()
    assert batch.run(embedded, JOBS[:1], tmp_path, progress=False)["drawn"] == 1  # a killed holder lets go


def test_ctrl_c_ends_the_command_with_one_line_and_exit_130(tmp_path):
    import signal
    import time

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({**JOBS[0], "seed": s, "steps": 20}) + "\n" for s in range(400)))
    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, "-m", "latentgen.cli", "batch", str(jobs), "--out", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # SIGABRT then prints every thread's stack
    deadline = time.monotonic() + 120
    while not list(out.glob("*.png")) and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    try:
        _, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # still running a minute after Ctrl-C: show where it is
        p.send_signal(signal.SIGABRT)
        pytest.fail("latentgen batch went on after Ctrl-C; its threads:\n" + p.communicate()[1][-6000:])
    assert p.returncode == 130 and "Traceback" not in err, err
    line = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(line) == 1 and re.search(r"interrupted; \d+ of this run's 400 images are in .*manifest-0.jsonl", line[0])
    assert all(Image.open(f).size == (64, 64) for f in out.glob("*.png"))  # every file written is whole


def test_an_sdxl_jobs_clip_skip_is_bounded_by_both_encoders_before_drawing(xl_folder, tmp_path):
    """SDXL reads the penultimate layer at clip_skip 1: the bound is one less than its shallower encoder's layers,
    found with the job's line before the first image, and the largest allowed value draws."""
    import latentgen
    from latentgen.text import xl

    pipe = latentgen.load(xl_folder)
    top = xl.max_clip_skip(pipe.text_encoder, pipe.xl)
    assert top == min(pipe.text_encoder.config.num_hidden_layers, pipe.xl.text_encoder_2.config.num_hidden_layers) - 1
    f = tmp_path / "jobs.jsonl"
    f.write_text(json.dumps({"prompt": "ok", "clip_skip": top, "steps": 1}) + "\n" +
                 json.dumps({"prompt": "x", "clip_skip": top + 1}) + "\n")
    with pytest.raises(ValueError, match=rf"jobs\.jsonl:2: clip_skip={top + 1} is invalid: this model's text encoders "
                                         rf"take 1 \(the last layers used\) to {top}"):
        batch.check_all(pipe, batch.read_jobs(f))
    assert pipe.generate("ok", clip_skip=top, steps=1)[0].size == (64, 64)
    with pytest.raises(ValueError, match=f"clip_skip={top + 1}"):
        pipe.generate("ok", clip_skip=top + 1, steps=1)  # what the check spares the run from, mid-batch


def test_variation_hires_and_refiner_jobs_draw_what_generate_draws(embedded, xl_folder, xl_refiner_folder, tmp_path,
                                                                   monkeypatch):
    """Jobs carry ``variation``, ``hires`` and ``refiner`` as JSON objects of their fields; each image equals the
    ``generate`` call with latentgen's objects, and a refiner named by several jobs is loaded once."""
    import latentgen

    job = {"prompt": "a red circle", "seed": 3, "steps": 4, "variation": {"seed": 9, "strength": 0.4,
           "resize_from": [48, 48]}, "hires": {"scale": 1.5, "strength": 0.5, "steps": 2}, "tiling": True}
    batch.run(embedded, [job], tmp_path / "a", progress=False)
    want = embedded.generate("a red circle", seed=3, steps=4, hires=latentgen.Hires(scale=1.5, strength=0.5, steps=2),
                             variation=latentgen.Variation(seed=9, strength=0.4, resize_from=(48, 48)), tiling=True)[0]
    got = Image.open(tmp_path / "a" / "000000.png")
    assert got.size == (96, 96) and np.array_equal(np.asarray(got), np.asarray(want))
    assert all(f in got.info["parameters"] for f in ("Variation seed: 9", "Hires upscale: 1.5", "Tiling: True"))

    base = latentgen.load(xl_folder)
    jobs = [{"prompt": "a cat", "seed": s, "steps": 4, "refiner": {"model": str(xl_refiner_folder), "switch_at": 0.5}}
            for s in (1, 2)]
    loads, load = [], latentgen.load
    monkeypatch.setattr(latentgen, "load", lambda *a, **k: loads.append((a, k)) or load(*a, **k))
    refiners = batch.check_all(base, batch.as_jobs(jobs))
    assert len(loads) == 1 and loads[0][1]["dtype"] == base.dtype  # one load for both jobs, in the model's dtype
    assert list(refiners) == [str(xl_refiner_folder)]
    monkeypatch.undo()
    batch.run(base, jobs, tmp_path / "r", progress=False)
    want = base.generate("a cat", seed=2, steps=4, refiner=latentgen.Refiner(latentgen.load(xl_refiner_folder), 0.5))[0]
    got = Image.open(tmp_path / "r" / "000001.png")
    assert np.array_equal(np.asarray(got), np.asarray(want)) and "Refiner switch at: 0.5" in got.info["parameters"]
    plain = base.generate("a cat", seed=2, steps=4)[0]
    assert not np.array_equal(np.asarray(got), np.asarray(plain))  # the refiner drew the end


def test_a_hires_jobs_model_draws_its_second_pass(embedded, tiny_folder, tiny_other, folder9, tmp_path, monkeypatch):
    """``hires.model`` (A1111's hr_checkpoint_name) is a folder or file, loaded once for every job that names it; the
    image equals generate's with Hires(model=...); a model of another latent space is refused before drawing."""
    import latentgen

    pipe = latentgen.load(tiny_folder)
    jobs = [{"prompt": "a cat", "seed": s, "steps": 3, "width": 32, "height": 32,
             "hires": {"scale": 1.5, "model": str(tiny_other)}} for s in (1, 2)]
    loads, load = [], latentgen.load
    monkeypatch.setattr(latentgen, "load", lambda *a, **k: loads.append(a) or load(*a, **k))
    batch.run(pipe, jobs, tmp_path / "h", progress=False)
    assert loads == [(str(tiny_other),)]
    monkeypatch.undo()
    want = pipe.generate("a cat", seed=2, steps=3, width=32, height=32,
                         hires=latentgen.Hires(scale=1.5, model=latentgen.load(tiny_other)))[0]
    got = Image.open(tmp_path / "h" / "000001.png")
    assert np.array_equal(np.asarray(got), np.asarray(want)) and "Hires checkpoint: " in got.info["parameters"]
    with pytest.raises(ValueError, match=r"job 0: hires.model .* works in another latent space"):
        batch.run(embedded, jobs[:1], tmp_path / "e", progress=False)
    inpainting = [jobs[0], {**jobs[1], "hires": {"model": str(folder9)}}]  # the second job's: refused before the first
    with pytest.raises(ValueError, match=r"job 1: hires.model .* is an inpainting model"):
        batch.run(pipe, inpainting, tmp_path / "i", progress=False)
    assert not (tmp_path / "e" / "000000.png").exists() and not (tmp_path / "i" / "000000.png").exists()
