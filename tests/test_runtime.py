"""latentgen.backends.runtime: the U-Net through OpenVINO. The default is chosen by rule (and overridable); the
compiled U-Net gives torch's images; it is converted once and then read from the disk cache; and it
never stands in for weights it was not converted from (LoRAs, fused or edited weights run on torch)."""

import copy
import gc
import importlib.util
import os
import sys
import threading
import time
import weakref

import numpy as np
import pytest
import torch
from conftest import mask, max_diff, photo

import latentgen
from latentgen.backends import openvino as openvino_unet, runtime

pytestmark = pytest.mark.skipif(not runtime.available(), reason="openvino is a dependency; this platform has no wheel")
CPU = torch.device("cpu")


def test_default_is_openvino_on_cpu_unless_a_dtype_or_the_environment_says_otherwise(monkeypatch):
    monkeypatch.delenv(runtime.ENV, raising=False)
    assert runtime.choose(None, CPU, exact=False)[0] == "openvino"
    assert runtime.choose(None, CPU, exact=True) == ("torch", "fp32 asked for: torch, diffusers' arithmetic exactly")
    assert runtime.choose(None, torch.device("mps"), exact=False) == ("torch", "mps: torch kernels")
    assert runtime.choose("torch", CPU, exact=False) == ("torch", "as asked")
    monkeypatch.setattr(runtime, "available", lambda: False)
    assert runtime.choose(None, CPU, exact=False) == ("torch", "OpenVINO is not installed or does not import")
    with pytest.raises(ValueError, match=r"backend='openvino' \(as asked\) needs the openvino package, and it does "
                                         r"not import: `pip install openvino`"):
        runtime.choose("openvino", CPU, exact=False)
    monkeypatch.undo()
    monkeypatch.setenv(runtime.ENV, "torch")
    assert runtime.choose(None, CPU, exact=False) == ("torch", "$LATENTGEN_BACKEND")


def test_on_cuda_sd_sized_u_nets_compile_small_ones_and_fp32_replay_the_eager_kernels(monkeypatch):
    monkeypatch.delenv(runtime.ENV, raising=False)
    cuda, sd15, small = torch.device("cuda"), {"block_out_channels": [320, 640]}, {"block_out_channels": [64]}
    monkeypatch.setattr(runtime, "compiler_missing", lambda device: "")
    name, why = runtime.choose(None, cuda, exact=False, unet_config=sd15)
    assert name == "compile" and "first call per image size compiles" in why
    assert runtime.choose(None, cuda, exact=False)[0] == "compile"  # no config yet (checked before loading)
    name, why = runtime.choose(None, cuda, exact=False, unet_config=small)
    assert name == "cudagraph" and "a small U-Net, 64 wide" in why
    name, why = runtime.choose(None, cuda, exact=True, unet_config=sd15)
    assert name == "cudagraph" and "fp32 asked for" in why  # the eager kernels, replayed: diffusers' numbers
    assert runtime.choose("cudagraph", cuda, exact=False, unet_config=sd15) == ("cudagraph", "as asked")
    monkeypatch.setenv(runtime.ENV, "cudagraph")
    assert runtime.choose(None, cuda, exact=False, unet_config=sd15) == ("cudagraph", "$LATENTGEN_BACKEND")
    monkeypatch.delenv(runtime.ENV)
    monkeypatch.setattr(runtime, "compiler_missing", lambda device: "Triton is not installed")
    name, why = runtime.choose(None, cuda, exact=False, unet_config=sd15)
    assert name == "cudagraph" and "(Triton is not installed, so torch.compile cannot run)" in why
    monkeypatch.undo()
    if importlib.util.find_spec("triton") is None:  # this machine's CPU torch has none
        assert runtime.compiler_missing(cuda) == "Triton is not installed"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())  # Triton "installed"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (6, 1))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla P40")
    assert runtime.compiler_missing(cuda) == "Tesla P40 is older than Triton supports (compute capability < 7.0)"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    assert runtime.compiler_missing(cuda) == ""
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    assert runtime.compiler_missing(cuda) == "torch.compile does not support this Python"
    monkeypatch.undo()
    assert runtime.choose("compile", cuda, exact=False) == ("compile", "as asked")  # asked for: tried, may fall back


def test_load_decides_the_backend_once_with_the_u_nets_config(tiny_folder, monkeypatch):
    monkeypatch.delenv(runtime.ENV, raising=False)
    calls, requested, default = [], runtime.requested, runtime.default
    monkeypatch.setattr(runtime, "requested", lambda *a: calls.append(("requested", a)) or requested(*a))
    monkeypatch.setattr(runtime, "default", lambda *a: calls.append(("default", a)) or default(*a))
    pipe = latentgen.load(tiny_folder)
    assert [name for name, _ in calls] == ["requested", "default"]  # checked before reading, decided once after
    assert calls[1][1][2]["block_out_channels"] == list(pipe.unet.config.block_out_channels)
    assert pipe.placement.backend == pipe.runtime.backend == "openvino" and pipe.runtime.why == pipe.placement.backend_why
    del calls[:]
    assert latentgen.load(tiny_folder, backend="torch").runtime.backend == "torch"
    assert [name for name, _ in calls] == ["requested"]  # asked for: no rule runs


def test_fp32_asked_for_is_torch_other_dtypes_keep_the_fast_backend(tiny_folder, monkeypatch):
    monkeypatch.delenv(runtime.ENV, raising=False)
    assert latentgen.load(tiny_folder, dtype="fp32").runtime.backend == "torch"
    assert latentgen.load(tiny_folder, dtype="bf16").runtime.backend == "openvino"
    assert latentgen.load(tiny_folder).runtime.backend == "openvino"


def test_bad_backends_are_refused_before_anything_loads(tiny_folder, monkeypatch):
    with pytest.raises(ValueError, match=r"backend='onnx' \(as asked\) is not supported; use one of 'torch', 'openvino'"):
        latentgen.load(tiny_folder / "no-such-folder", backend="onnx")  # the backend is checked first
    with pytest.raises(ValueError, match=r"runs on the CPU, but the model is on cuda; use backend='torch'"):
        latentgen.load(tiny_folder, device="cuda", backend="openvino")
    for name in ("cudagraph", "compile"):
        with pytest.raises(ValueError, match=rf"backend='{name}' \(as asked\) runs on CUDA GPUs, but the model is "
                                             r"on cpu; use backend='torch' or 'openvino'\.$"):
            latentgen.load(tiny_folder, device="cpu", backend=name)
    monkeypatch.setenv(runtime.ENV, "tensorrt")
    with pytest.raises(ValueError, match=r"backend='tensorrt' \(\$LATENTGEN_BACKEND\) is not supported.*"
                                         r"\(or unset \$LATENTGEN_BACKEND\)\.$"):
        latentgen.load(tiny_folder)
    monkeypatch.setenv(runtime.ENV, "cudagraph")  # the fix names the variable the user set, not backend=
    with pytest.raises(ValueError, match=r"backend='cudagraph' \(\$LATENTGEN_BACKEND\) runs on CUDA GPUs.*use "
                                         r"backend='torch' or 'openvino' \(or unset \$LATENTGEN_BACKEND\)\.$"):
        latentgen.load(tiny_folder)


def test_an_openvino_that_does_not_import_counts_as_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # what a broken native library looks like: import fails
    assert runtime.available.__wrapped__() is False


@pytest.fixture(scope="module")
def fast(tiny_folder):
    return latentgen.load(tiny_folder, backend="openvino")


def test_openvino_gives_torch_images_and_says_so(fast, pipe):
    assert "U-Net on openvino (as asked)" in repr(fast) and "U-Net on torch" in repr(pipe)
    kw = dict(seed=3, num_images=2, guidance=6.0)
    assert max_diff(fast.generate("a cat", **kw), pipe.generate("a cat", **kw)) <= 1
    assert isinstance(fast.runtime.for_unet(fast.unet), openvino_unet.Compiled)  # it really ran compiled
    kw = dict(seed=5, strength=0.6)
    assert max_diff(fast.img2img("a dog", photo(), **kw), pipe.img2img("a dog", photo(), **kw)) <= 1
    kw = dict(seed=7, scheduler="euler_a", steps=3)  # ancestral noise, float timesteps
    assert max_diff(fast.inpaint("a bird", photo(), mask(), **kw), pipe.inpaint("a bird", photo(), mask(), **kw)) <= 1
    # 33x33 latents: the trace's up-block branch does not hold, so that size runs on torch (same image)
    assert max_diff(fast.generate("a cat", seed=1, width=66, height=66), pipe.generate("a cat", seed=1, width=66, height=66)) == 0


def test_compiled_call_matches_the_torch_unet(fast):
    compiled = fast.runtime.for_unet(fast.unet)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 32, 32, generator=g), torch.randn(2, 77, 32, generator=g)
    for t in (torch.tensor(981), torch.tensor(17.5)):
        with torch.no_grad():
            want = fast.unet(x, t, encoder_hidden_states=ctx).sample
        got = compiled(x, t, encoder_hidden_states=ctx).sample
        assert got.shape == want.shape and got.dtype == want.dtype
        assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_an_even_batch_runs_as_two_streams_an_odd_one_or_one_thread_as_one(fast):
    compiled, threads = fast.runtime.for_unet(fast.unet), torch.get_num_threads()
    g, t = torch.Generator().manual_seed(1), torch.tensor(500)
    try:
        for n_threads, batch, parts in ((2, 2, 2), (2, 4, 2), (2, 3, 1), (1, 2, 1)):
            torch.set_num_threads(n_threads)
            compiled.requests.clear()
            x, ctx = torch.randn(batch, 4, 32, 32, generator=g), torch.randn(batch, 77, 32, generator=g)
            got = compiled(x, t, encoder_hidden_states=ctx).sample
            with torch.no_grad():
                want = fast.unet(x, t, encoder_hidden_states=ctx).sample
            assert len(compiled.requests[(tuple(x.shape), tuple(ctx.shape), False, n_threads)]) == parts
            assert torch.allclose(got, want, atol=1e-4), (batch, (got - want).abs().max())  # halves in order
    finally:
        torch.set_num_threads(threads)


def test_geglu_is_traced_as_two_linears_and_the_unet_is_left_as_it_was(fast):
    from diffusers.models.activations import GEGLU

    kinds = [op.get_type_name() for op in fast.runtime.for_unet(fast.unet).model.get_ordered_ops()]
    gegs = [m for m in fast.unet.modules() if isinstance(m, GEGLU)]
    assert gegs and "VariadicSplit" not in kinds and kinds.count("Gelu") == len(gegs)
    assert not any("forward" in vars(m) for m in gegs)  # swapped for the trace only
    h = torch.randn(2, 5, gegs[0].proj.in_features)
    with torch.no_grad():
        assert torch.allclose(openvino_unet._geglu_as_two_linears(gegs[0], h), gegs[0](h), atol=1e-6)


def test_cfg_halves_run_the_prefix_that_reads_no_context_once(fast):
    compiled, threads = fast.runtime.for_unet(fast.unet), torch.get_num_threads()
    g, t = torch.Generator().manual_seed(2), torch.tensor(700)
    x1 = torch.randn(1, 4, 32, 32, generator=g)
    x, ctx = torch.cat([x1, x1]), torch.randn(2, 77, 32, generator=g)  # what the CFG loop passes
    with torch.no_grad():
        want = fast.unet(x, t, encoder_hidden_states=ctx).sample
    try:
        torch.set_num_threads(2)
        compiled.requests.clear()
        got = compiled(x, t, encoder_hidden_states=ctx).sample
        assert len(compiled.requests[(tuple(x.shape), tuple(ctx.shape), True, 2)]) == 3  # prefix, then 2 halves
        assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
        assert not compiled.shares(torch.cat([x1, x1 + 1e-3]))  # other latents per half
        assert not compiled.shares(torch.cat([x1, x1])[..., :16, :16])  # too small to pay
        assert not compiled.shares(torch.cat([x1, x1, x1]))  # an odd batch has no halves
        torch.set_num_threads(1)  # one part: the prefix on one half, the rest on both (its cut tensors repeated)
        got = compiled(x, t, encoder_hidden_states=ctx).sample
        assert len(compiled.requests[(tuple(x.shape), tuple(ctx.shape), True, 1)]) == 2
        assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    finally:
        torch.set_num_threads(threads)


def test_the_split_graph_gives_the_whole_one_and_its_prefix_reads_no_context(fast):
    import openvino

    model = fast.runtime.for_unet(fast.unet).model
    before = len(model.get_ordered_ops())
    shapes = {0: [1, 4, 32, 32], 1: [], 2: [1, 77, 32]}
    prefix, rest = openvino_unet.split(model, shapes)
    assert len(model.get_ordered_ops()) == before and model.get_parameters()[0].get_partial_shape().is_dynamic
    assert [p.get_partial_shape().to_shape() for p in prefix.get_parameters()] == [[1, 4, 32, 32], []]  # x, t
    assert len(rest.get_parameters()) == len(prefix.outputs) + 1 > 2  # the cut tensors, then the context
    whole = model.clone()
    whole.reshape(shapes)
    core, f32 = openvino.Core(), {"INFERENCE_PRECISION_HINT": "f32"}  # else bf16 on CPUs that have it
    g = np.random.default_rng(0)
    x, t = g.standard_normal((1, 4, 32, 32), np.float32), np.asarray(300.0, np.float32)
    for _ in range(2):
        ctx = g.standard_normal((1, 77, 32), np.float32)
        cut = list(core.compile_model(prefix, "CPU", f32)([x, t]).values())
        got = core.compile_model(rest, "CPU", f32)([*cut, ctx])[0]
        want = core.compile_model(whole, "CPU", f32)([x, t, ctx])[0]
        assert np.allclose(got, want, atol=1e-5), np.abs(got - want).max()


def test_converted_once_then_read_from_the_cache(tiny_folder, fast):
    fast.generate("a cat", seed=0)
    folders = list(runtime.cache_dir().iterdir())
    assert all(not f.name.startswith(".tmp-") for f in folders)  # no half-written conversion left
    assert (runtime.cache_dir() / runtime.weights_hash(fast.unet) / "unet.xml").is_file()
    again = latentgen.load(tiny_folder, backend="openvino")
    assert max_diff(again.generate("a cat", seed=0), fast.generate("a cat", seed=0)) == 0
    assert again.runtime.conversions == 0 and isinstance(again.runtime.for_unet(again.unet), openvino_unet.Compiled)


def test_weights_that_differ_run_on_torch_exactly(tiny_folder, pipe, lora_files):
    fast = latentgen.load(tiny_folder, backend="openvino")
    compiled = fast.runtime.for_unet(fast.unet)
    ref = latentgen.load(tiny_folder, backend="torch")
    for p in (fast, ref):
        p.load_lora(lora_files[0], name="a", scale=0.8)
    assert fast.runtime.for_unet(fast.unet) is fast.unet  # a LoRA is injected: torch, not the compiled base
    assert max_diff(fast.generate("a cat", seed=2), ref.generate("a cat", seed=2)) == 0
    for p in (fast, ref):
        p.fuse_lora()  # written through .data, announced by the LoRA calls
    assert fast.runtime.for_unet(fast.unet) is fast.unet
    for p in (fast, ref):
        p.unfuse_lora()
    assert fast.runtime.for_unet(fast.unet) is fast.unet  # still injected
    for p in (fast, ref):
        p.unload_lora()
    assert fast.runtime.for_unet(fast.unet) is compiled  # the original weights again: compiled, not re-converted
    weight = fast.unet.conv_out.bias
    saved = weight.data.clone()
    weight.data.add_(0.5)  # a write through .data: nothing torch counts moves, so it is announced
    fast.weights_changed()
    assert fast.runtime.for_unet(fast.unet) is fast.unet and "its weights differ" in repr(fast)
    weight.data.copy_(saved)
    fast.weights_changed()
    assert fast.runtime.for_unet(fast.unet) is compiled
    first = weight.data.view(-1)[:1]
    first.copy_(torch.nextafter(first, first + 1))  # one element, one ulp
    fast.weights_changed()
    assert fast.runtime.for_unet(fast.unet) is fast.unet
    weight.data.copy_(saved)
    fast.weights_changed()
    assert fast.runtime.for_unet(fast.unet) is compiled
    w = fast.unet.time_embedding.linear_1.weight
    with torch.no_grad():
        w.mul_(2)  # in place through torch, not announced: its version counter moves, and the bytes decide
    assert fast.runtime.for_unet(fast.unet) is fast.unet
    assert fast.runtime.for_unet(fast.unet) is fast.unet  # and remember it
    with torch.no_grad():
        w.div_(2)
    assert fast.runtime.for_unet(fast.unet) is compiled  # the converted bytes again
    assert fast.runtime.for_unet(fast.unet) is compiled and "the last call ran torch" not in repr(fast)
    with torch.no_grad():
        fast.unet.conv_in.weight.mul_(1.5)  # edited in place
    assert fast.runtime.for_unet(fast.unet) is fast.unet
    assert fast.runtime.conversions <= 1


def test_a_call_checks_the_weights_bytes_only_after_a_change(tiny_folder, monkeypatch):
    fast = latentgen.load(tiny_folder, backend="openvino")
    fast.runtime.for_unet(fast.unet)
    hashes, real = [], runtime.weights_hash
    monkeypatch.setattr(runtime, "weights_hash", lambda m: hashes.append(1) or real(m))
    for _ in range(3):
        fast.runtime.for_unet(fast.unet)
    assert hashes == []  # unchanged: the cheap state is the same, no byte is read
    fast.weights_changed()
    fast.runtime.for_unet(fast.unet)
    fast.runtime.for_unet(fast.unet)
    assert hashes == [1]  # once per change


def test_an_unwritable_cache_converts_for_the_process_with_a_warning(tiny_folder, tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LATENTGEN_CACHE", str(blocker))
    fast = latentgen.load(tiny_folder, backend="openvino")
    import openvino

    traces, convert_model = [], openvino.convert_model
    monkeypatch.setattr(openvino, "convert_model", lambda *a, **k: traces.append(1) or convert_model(*a, **k))
    with pytest.warns(RuntimeWarning, match=r"cannot write the OpenVINO cache in .*file/openvino.*Set \$LATENTGEN_CACHE"):
        compiled = fast.runtime.for_unet(fast.unet)
    assert isinstance(compiled, openvino_unet.Compiled) and fast.runtime.conversions == 1
    assert len(traces) == 1  # the cache folder is tried before the trace, not after


def test_conversion_of_a_bf16_unet_runs_in_bf16(tiny_folder):
    fast = latentgen.load(tiny_folder, backend="openvino", dtype="bf16")
    ref = latentgen.load(tiny_folder, backend="torch", dtype="fp32")
    compiled = fast.runtime.for_unet(fast.unet)
    assert compiled.precision == "bf16" and "bfloat16" in repr(fast)
    a, b = fast.generate("a cat", seed=4)[0], ref.generate("a cat", seed=4)[0]
    err = np.abs(np.asarray(a, float) - np.asarray(b, float))
    assert err.mean() < 8, err.mean()  # bf16 rounding of random weights, not another picture


def test_one_compiled_model_per_input_shape_the_latest_kept(fast):
    compiled = fast.runtime.for_unet(fast.unet)
    compiled.requests.clear()
    fast.generate("a cat", seed=0)  # CFG: latents (2, 4, 32, 32)
    fast.generate("a cat", seed=0, guidance=1)  # no CFG: (1, 4, 32, 32)
    fast.generate("a cat", seed=0, width=32, height=32)  # (2, 4, 16, 16)
    assert [x for x, *_ in compiled.requests] == [(1, 4, 32, 32), (2, 4, 16, 16)][-compiled.KEEP:]
    assert all(c == (x[0], 77, 32) for x, c, *_ in compiled.requests)


def test_the_cache_is_bounded_least_recently_used_first_and_listed(tiny_folder, tmp_path, monkeypatch, capsys):
    from latentgen.backends import cache
    from latentgen.cli import main

    monkeypatch.setenv("LATENTGEN_CACHE", str(tmp_path))
    first = latentgen.load(tiny_folder, backend="openvino")
    first.runtime.for_unet(first.unet)
    (old := tmp_path / "openvino" / ".tmp-killed").mkdir()  # a conversion killed two hours ago
    (new := tmp_path / "openvino" / ".tmp-running").mkdir()
    os.utime(old, (time.time() - 7200,) * 2)
    [a] = cache.entries()
    os.utime(a.folder / "unet.xml", (a.last_used - 100,) * 2)
    latentgen.load(tiny_folder, backend="openvino").runtime.for_unet(first.unet)  # a hit: marked as used now
    assert cache.entries()[0].last_used > a.last_used - 100
    second = latentgen.load(tiny_folder, backend="openvino")
    with torch.no_grad():
        second.unet.conv_out.bias.add_(1.0)  # other weights: another entry
    monkeypatch.setenv(cache.LIMIT_ENV, "0")  # keep only the newest
    second.runtime.for_unet(second.unet)
    [b] = cache.entries()
    assert b.folder.name == runtime.weights_hash(second.unet) != a.folder.name
    assert not old.exists() and new.exists()
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert b.folder.name[:16] in out and "1 converted U-Net(s)" in out and "limit 0 GB" in out
    assert main(["cache", "--clear"]) == 0 and cache.entries() == []
    monkeypatch.setenv(cache.LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match=r"\$LATENTGEN_CACHE_GB='lots' is not a size; set it to a number of GB"):
        latentgen.load(tiny_folder, backend="openvino")


def test_a_change_of_torch_threads_between_calls_recompiles_for_them(fast):
    compiled, threads = fast.runtime.for_unet(fast.unet), torch.get_num_threads()
    g, t = torch.Generator().manual_seed(3), torch.tensor(400)
    x, ctx = torch.randn(2, 4, 32, 32, generator=g), torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        want = fast.unet(x, t, encoder_hidden_states=ctx).sample
    try:
        for n in (2, 1, 2):  # two streams, then one request on one thread, then two again
            torch.set_num_threads(n)
            got = compiled(x, t, encoder_hidden_states=ctx).sample
            assert torch.allclose(got, want, atol=1e-4), (n, (got - want).abs().max())
    finally:
        torch.set_num_threads(threads)


def test_calls_from_several_threads_take_turns_and_each_gets_its_own_output(fast):
    compiled = fast.runtime.for_unet(fast.unet)
    g, t = torch.Generator().manual_seed(4), torch.tensor(600)
    xs = [torch.randn(2, 4, 32, 32, generator=g) for _ in range(4)]
    ctx = torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        want = [fast.unet(x, t, encoder_hidden_states=ctx).sample for x in xs]
    got, errors = {}, []

    def work(i):
        try:
            for _ in range(3):
                got.setdefault(i, []).append(compiled(xs[i], t, encoder_hidden_states=ctx).sample)
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    for i in range(4):
        assert all(torch.allclose(out, want[i], atol=1e-4) for out in got[i]), i


def test_a_failed_conversion_or_freeu_runs_torch_and_says_why(tiny_folder, tmp_path, monkeypatch, pipe):
    monkeypatch.setenv("LATENTGEN_CACHE", str(tmp_path))  # nothing cached: a conversion is needed
    fast = latentgen.load(tiny_folder, backend="openvino")
    fast.unet.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    assert fast.runtime.for_unet(fast.unet) is fast.unet and "FreeU is on" in repr(fast)  # no FFT in OpenVINO
    fast.unet.disable_freeu()
    calls = []

    def convert(*args):
        calls.append(args)
        raise RuntimeError("no rule")

    monkeypatch.setattr(runtime, "convert", convert)
    with pytest.warns(RuntimeWarning, match=r"could not be converted to OpenVINO \(RuntimeError: no rule\); it runs on "
                                            r"torch"):
        assert fast.runtime.for_unet(fast.unet) is fast.unet
    assert fast.runtime.for_unet(fast.unet) is fast.unet and len(calls) == 1  # tried once, not at every call
    assert "its conversion to OpenVINO failed" in repr(fast)
    assert max_diff(fast.generate("a cat", seed=1), pipe.generate("a cat", seed=1)) == 0
    monkeypatch.undo()
    monkeypatch.setenv("LATENTGEN_CACHE", str(tmp_path))
    fast = latentgen.load(tiny_folder, backend="openvino")
    compiled = fast.runtime.for_unet(fast.unet)
    fast.unet.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)  # after the conversion: not in the compiled graph
    assert fast.runtime.for_unet(fast.unet) is fast.unet
    fast.unet.disable_freeu()
    assert fast.runtime.for_unet(fast.unet) is compiled
    graphed = runtime.Runtime("cudagraph")  # its rule, without a GPU: FreeU's factors would be frozen in a graph
    fast.unet.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    assert graphed._graph(fast.unet) is fast.unet
    fast.unet.disable_freeu()
    assert graphed._graph(fast.unet) is not fast.unet


def test_a_unet_no_longer_called_is_let_go(tiny_folder):
    fast = latentgen.load(tiny_folder, backend="openvino")
    unets = [copy.deepcopy(fast.unet) for _ in range(3)]  # the same weights: the disk cache serves each
    first = weakref.ref(unets[0])
    for unet in unets:
        assert isinstance(fast.runtime.for_unet(unet), openvino_unet.Compiled)
    del unets, unet
    gc.collect()
    assert len(fast.runtime._compiled) == runtime.Runtime.KEEP and first() is None  # the oldest, and its model


def test_an_infinite_cache_limit_means_no_limit(monkeypatch):
    from latentgen.backends import cache

    monkeypatch.setenv(cache.LIMIT_ENV, "inf")
    assert cache.limit_bytes() >= 2**60


def test_img2img_at_strength_zero_runs_no_step_and_converts_nothing(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTGEN_CACHE", str(tmp_path))  # nothing cached: a U-Net call would convert
    fast = latentgen.load(tiny_folder, backend="openvino")
    fast.img2img("a dog", photo(), strength=0.0, seed=1)
    assert fast.runtime.conversions == 0 and not fast.runtime._compiled
    fast.img2img("a dog", photo(), strength=0.5, seed=1, steps=2)
    assert fast.runtime.conversions == 1
