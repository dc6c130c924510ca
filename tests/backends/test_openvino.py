"""latentgen.backends.openvino: the U-Net converted to OpenVINO and compiled per input shape gives the torch
module's outputs; an even batch runs as two streams; CFG's halves share the prefix that reads no context; a
bf16 U-Net converts to bf16; calls from several threads take turns."""

import threading

import numpy as np
import pytest
import torch

import latentgen
from conftest import max_diff
from latentgen.backends import openvino as openvino_unet

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def fast(tiny_folder):
    return latentgen.load(tiny_folder, backend="openvino")


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
            assert len(compiled.requests[((tuple(x.shape), tuple(ctx.shape)), False, n_threads)]) == parts
            assert torch.allclose(got, want, atol=1e-4), (batch, (got - want).abs().max())  # halves in order
    finally:
        torch.set_num_threads(threads)


def test_geglu_is_traced_as_two_linears_and_the_unet_is_left_as_it_was(fast):
    from diffusers.models.activations import GEGLU

    kinds = [op.get_type_name() for op in fast.runtime.for_unet(fast.unet).model.get_ordered_ops()]
    gegs = [m for m in fast.unet.modules() if isinstance(m, GEGLU)]
    assert gegs and "VariadicSplit" not in kinds and kinds.count("Gelu") == len(gegs)
    assert not any("forward" in vars(m) or hasattr(m, "proj_halves") for m in gegs)  # swapped for the trace only
    h = torch.randn(2, 5, gegs[0].proj.in_features)
    with torch.no_grad():
        with openvino_unet._traceable(fast.unet):
            two = gegs[0](h)  # the two halves' linears, as traced
            assert gegs[0].proj_halves[0].weight.data_ptr() == gegs[0].proj.weight.data_ptr()  # views, not copies
        assert torch.allclose(two, gegs[0](h), atol=1e-6)


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
        assert len(compiled.requests[((tuple(x.shape), tuple(ctx.shape)), True, 2)]) == 3  # prefix, then 2 halves
        assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
        assert not compiled.shares(torch.cat([x1, x1 + 1e-3]))  # other latents per half
        assert not compiled.shares(torch.cat([x1, x1])[..., :16, :16])  # too small to pay
        assert not compiled.shares(torch.cat([x1, x1, x1]))  # an odd batch has no halves
        torch.set_num_threads(1)  # one part: the prefix on one half, the rest on both (its cut tensors repeated)
        got = compiled(x, t, encoder_hidden_states=ctx).sample
        assert len(compiled.requests[((tuple(x.shape), tuple(ctx.shape)), True, 1)]) == 2
        assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    finally:
        torch.set_num_threads(threads)


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
    assert [x for (x, _), *_ in compiled.requests] == [(1, 4, 32, 32), (2, 4, 16, 16)][-compiled.KEEP:]
    assert all(c == (x[0], 77, 32) for (x, c), *_ in compiled.requests)


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


def test_sdxl_and_its_refiner_run_converted_with_the_added_conditioning(xl_folder, xl_refiner_folder):
    """SDXL's pooled text and size numbers are inputs of the converted U-Net (after the context): the compiled call
    equals the torch module's, and so do the images, the refiner's hand-over included."""
    fast, slow = latentgen.load(xl_folder, backend="openvino"), latentgen.load(xl_folder, backend="torch")
    compiled = fast.runtime.for_unet(fast.unet)
    assert isinstance(compiled, openvino_unet.Compiled)
    g = torch.Generator().manual_seed(2)
    x, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 96, generator=g)
    added = {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.tensor([[64., 64, 0, 0, 64, 64]] * 2)}
    with torch.no_grad():
        want = fast.unet(x, torch.tensor(501), encoder_hidden_states=ctx, added_cond_kwargs=added).sample
    got = compiled(x, torch.tensor(501), encoder_hidden_states=ctx, added_cond_kwargs=added).sample
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    other = compiled(x, torch.tensor(501), encoder_hidden_states=ctx,
                     added_cond_kwargs={**added, "time_ids": added["time_ids"] * 2}).sample
    assert (other - got).abs().max() > 1e-3  # the size numbers reach the converted graph
    kw = dict(seed=3, steps=4, guidance=5.0, negative_prompt="dark", num_images=2)
    assert max_diff(fast.generate("a red circle", **kw), slow.generate("a red circle", **kw)) <= 2
    assert "U-Net on openvino" in repr(fast) and "last call ran torch" not in repr(fast)
    refined = [p.generate("a red circle", seed=3, steps=4, refiner=latentgen.Refiner(
        latentgen.load(xl_refiner_folder, backend=b), 0.5)) for p, b in ((fast, "openvino"), (slow, "torch"))]
    assert max_diff(*refined) <= 2


def test_a_conversion_gives_its_float32_copy_back_before_anything_compiles(tiny_folder, monkeypatch, tmp_path):
    """The float32 twin a bf16 U-Net is traced from (SDXL's: 10 GiB) is dropped and the heap trimmed
    (``memory.give_back``) before the converted U-Net compiles: without it SDXL's first call ran out of 24 GiB."""
    import gc
    import weakref

    pipe = latentgen.load(tiny_folder, backend="torch", dtype="bf16")
    twins = []
    plain = openvino_unet.weights.plain
    monkeypatch.setattr(openvino_unet.weights, "plain", lambda m: twins.append(weakref.ref(t := plain(m))) or t)
    seen = []
    monkeypatch.setattr(openvino_unet.memory, "give_back", lambda: seen.append((gc.collect(), twins[0]() is None)[1]))
    openvino_unet.convert(pipe.unet, tmp_path / "ir")
    assert seen == [True] and (tmp_path / "ir" / "unet.xml").is_file()  # unreachable when the heap is trimmed


def test_compiled_models_that_end_in_any_order_leave_the_main_threads_signal_stack_mapped(tiny_folder, tmp_path,
                                                                                           monkeypatch):
    """OpenVINO's CPU plugin points the thread's alternate signal stack at an mmap of its own and unmaps it when it
    ends. One Core per model let plugins end out of order and left the main thread's stack on unmapped memory: the
    next Ctrl-C (Python's handler runs on that stack) was a SIGSEGV. One Core for the process keeps it mapped."""
    import ctypes
    import os
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("sigaltstack and /proc/self/maps are Linux's")

    class Stack(ctypes.Structure):
        _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

    def stack_is_usable() -> bool:
        st = Stack()
        assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(st)) == 0
        if st.flags & 2 or not st.sp:  # SS_DISABLE, or none: handlers run on the thread's own stack
            return True
        spans = [[int(x, 16) for x in line.split()[0].split("-")] for line in open("/proc/self/maps")]
        return any(lo <= st.sp and st.sp + st.size <= hi for lo, hi in spans)

    monkeypatch.setenv("LATENTGEN_CACHE", str(tmp_path))
    first, second = latentgen.load(tiny_folder, backend="openvino"), latentgen.load(tiny_folder, backend="openvino")
    for p in (first, second):
        p.generate("a cat", steps=1)
    p = latentgen.load(tiny_folder, backend="openvino")
    p.generate("a cat", steps=1, width=32, height=32)
    del first  # the models end out of the order they began in
    p.generate("a cat", steps=1)
    del second, p
    import gc

    gc.collect()
    assert stack_is_usable()
    with pytest.raises(KeyboardInterrupt):  # what the stack is for: a Ctrl-C reaches Python's handler
        os.kill(os.getpid(), signal.SIGINT)
        signal.sigtimedwait([], 1)  # not reached: the handler raises at once
