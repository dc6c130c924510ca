"""latentgen.backends.runtime: the U-Net through OpenVINO. The default is chosen by rule (and overridable); the
compiled U-Net gives torch's images; it is converted once and then read from the disk cache; and it
never stands in for weights it was not converted from (LoRAs, fused or edited weights run on torch)."""

import copy
import gc
import weakref

import numpy as np
import pytest
import torch
from conftest import mask, max_diff, photo

import latentgen
from latentgen.backends import choice, runtime
from latentgen.backends import openvino as openvino_unet

pytestmark = pytest.mark.skipif(not choice.available(), reason="openvino is a dependency; this platform has no wheel")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def fast(tiny_folder):
    return latentgen.load(tiny_folder, backend="openvino")


def test_openvino_gives_torch_images_and_says_so(fast, pipe):
    assert "U-Net on openvino (as asked)" in repr(fast) and "U-Net on torch" in repr(pipe)
    kw = dict(seed=3, steps=8, num_images=2, guidance=6.0)
    assert max_diff(fast.generate("a cat", **kw), pipe.generate("a cat", **kw)) <= 1
    assert isinstance(fast.runtime.for_unet(fast.unet), openvino_unet.Compiled)  # it really ran compiled
    kw = dict(seed=5, steps=8, strength=0.6)
    assert max_diff(fast.img2img("a dog", photo(), **kw), pipe.img2img("a dog", photo(), **kw)) <= 1
    kw = dict(seed=7, scheduler="euler_a", steps=3)  # ancestral noise, float timesteps
    assert max_diff(fast.inpaint("a bird", photo(), mask(), **kw), pipe.inpaint("a bird", photo(), mask(), **kw)) <= 1
    # 33x33 latents: the trace's up-block branch does not hold, so that size runs on torch (same image)
    kw = dict(seed=1, steps=4, width=66, height=66)
    assert max_diff(fast.generate("a cat", **kw), pipe.generate("a cat", **kw)) == 0


def test_a1111_workflow_runs_converted(fast, pipe):
    """Prompt editing (the context by step), AND (three U-Net rows per image, not CFG's two), variation seeds and
    the hires fix's second pass (a larger size) on the converted U-Net give torch's images."""
    for prompt, kw in [("a [cat:dog:0.5] on a [red|blue] mat", {}), ("a cat AND a dog :0.5", {}),
                       ("a cat", {"variation": latentgen.Variation(4, 0.5)}),
                       ("a cat", {"hires": latentgen.Hires(scale=1.5, strength=0.5)})]:
        kw = dict(seed=3, num_images=2, guidance=6.0, steps=4, **kw)
        assert max_diff(fast.generate(prompt, **kw), pipe.generate(prompt, **kw)) <= 1, prompt
    assert isinstance(fast.runtime.for_unet(fast.unet), openvino_unet.Compiled)


def test_loras_and_edited_weights_run_converted_with_their_weights_patched_in(tiny_folder, lora_files):
    fast = latentgen.load(tiny_folder, backend="openvino")
    base = fast.runtime.for_unet(fast.unet)
    ref = latentgen.load(tiny_folder, backend="torch")
    for p in (fast, ref):
        p.load_lora(lora_files[0], name="a", scale=0.8)
    lora = fast.runtime.for_unet(fast.unet)
    assert isinstance(lora, openvino_unet.Compiled) and lora is not base and "ran torch" not in repr(fast)
    kw = dict(seed=2, steps=6)
    assert max_diff(fast.generate("a cat", **kw), ref.generate("a cat", **kw)) <= 1  # folded: W + s B A
    assert max_diff(fast.generate("a cat", **kw), pipe_fused(ref, "a cat", 2)) <= 1
    for p in (fast, ref):
        p.set_lora_scale("a", 0.3)
    other = fast.runtime.for_unet(fast.unet)
    assert other is not lora and max_diff(fast.generate("a cat", **kw), ref.generate("a cat", **kw)) <= 1
    for p in (fast, ref):
        p.set_lora_scale("a", 0.8)
    assert fast.runtime.for_unet(fast.unet) is lora  # a state seen before: kept compiled, not patched again
    for p in (fast, ref):
        p.fuse_lora()
    assert fast.runtime.for_unet(fast.unet) is lora  # fused: the same weights
    for p in (fast, ref):
        p.unfuse_lora()
        p.unload_lora()
    assert fast.runtime.for_unet(fast.unet) is base and fast.runtime.conversions <= 1  # never converted again
    w = fast.unet.time_embedding.linear_1.weight
    saved = w.data.clone()
    w.data.add_(0.5)  # a write through .data: nothing torch counts moves, so it is announced
    fast.weights_changed()
    edited = fast.runtime.for_unet(fast.unet)
    assert isinstance(edited, openvino_unet.Compiled) and edited is not base
    with torch.no_grad():
        ref.unet.time_embedding.linear_1.weight.add_(0.5)  # in place through torch: seen without a word
    assert max_diff(fast.generate("a cat", **kw), ref.generate("a cat", **kw)) <= 1
    w.data.copy_(saved)
    fast.weights_changed()
    assert fast.runtime.for_unet(fast.unet) is base
    bias = fast.unet.conv_out.bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias.add_(0.5)  # a bias: the conversion folds it into another constant, so torch runs, exactly
    assert fast.runtime.for_unet(fast.unet) is fast.unet and "a bias or a norm" in repr(fast)
    with torch.no_grad():
        bias.copy_(saved)
    assert fast.runtime.for_unet(fast.unet) is base and "ran torch" not in repr(fast)


def pipe_fused(pipe, prompt, seed):
    """``pipe``'s image (6 steps) with its LoRAs fused into the weights (what the converted copy computes),
    then unfused."""
    pipe.fuse_lora()
    try:
        return pipe.generate(prompt, seed=seed, steps=6)
    finally:
        pipe.unfuse_lora()


def test_a_call_reads_the_weights_only_after_a_change(tiny_folder, monkeypatch):
    from latentgen.backends import weights

    fast = latentgen.load(tiny_folder, backend="openvino")
    fast.runtime.for_unet(fast.unet)
    hashed, real = [], weights.tensor_hash
    monkeypatch.setattr(weights, "tensor_hash", lambda t: hashed.append(1) or real(t))
    for _ in range(3):
        fast.runtime.for_unet(fast.unet)
    assert hashed == []  # unchanged: the cheap state is the same, no byte is read
    fast.weights_changed()
    fast.runtime.for_unet(fast.unet)
    fast.runtime.for_unet(fast.unet)
    assert len(hashed) == len(list(fast.unet.parameters()))  # once per change, every tensor
    del hashed[:]
    with torch.no_grad():
        fast.unet.conv_in.weight.mul_(1.0)  # one tensor written in place: that one is read again
    fast.runtime.for_unet(fast.unet)
    assert len(hashed) == 1


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
    assert max_diff(fast.generate("a cat", seed=1, steps=4), pipe.generate("a cat", seed=1, steps=4)) == 0
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


def test_a_conversion_that_would_not_fit_in_ram_is_refused_before_it_starts(tiny_folder, tmp_path, monkeypatch, pipe):
    """SDXL's conversion peaks near 19 GiB: where that much is not free, the process is not left to the OS's OOM
    killer; torch runs, with a warning that names the need and the fix."""
    from latentgen import memory

    monkeypatch.setenv("LATENTGEN_CACHE", str(tmp_path))  # nothing cached: a conversion is needed
    fast = latentgen.load(tiny_folder, backend="openvino")
    need = memory.conversion_bytes(fast.unet)
    assert need == 4 * sum(p.numel() for p in fast.unet.parameters())  # float32: traced as it is
    monkeypatch.setattr(memory, "free_bytes", lambda device: need - 1)
    with pytest.warns(RuntimeWarning, match=r"MemoryError: converting this 0.0B-parameter model needs about .* GiB of "
                                            r"free RAM.*pass backend='torch'"):
        assert fast.runtime.for_unet(fast.unet) is fast.unet
    assert not list(tmp_path.rglob("unet.xml")) and "its conversion to OpenVINO failed" in repr(fast)
    monkeypatch.setattr(memory, "free_bytes", lambda device: need)
    fresh = latentgen.load(tiny_folder, backend="openvino")
    assert fresh.runtime.for_unet(fresh.unet) is not fresh.unet  # enough: converted


def test_a_unet_no_longer_called_is_let_go(tiny_folder):
    fast = latentgen.load(tiny_folder, backend="openvino")
    unets = [copy.deepcopy(fast.unet) for _ in range(3)]  # the same weights: the disk cache serves each
    first = weakref.ref(unets[0])
    for unet in unets:
        assert isinstance(fast.runtime.for_unet(unet), openvino_unet.Compiled)
    del unets, unet
    gc.collect()
    assert len(fast.runtime._compiled) == runtime.Runtime.KEEP and first() is None  # the oldest, and its model


def test_img2img_at_strength_zero_runs_no_step_and_converts_nothing(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTGEN_CACHE", str(tmp_path))  # nothing cached: a U-Net call would convert
    fast = latentgen.load(tiny_folder, backend="openvino")
    fast.img2img("a dog", photo(), strength=0.0, seed=1)
    assert fast.runtime.conversions == 0 and not fast.runtime._compiled
    fast.img2img("a dog", photo(), strength=0.5, seed=1, steps=2)
    assert fast.runtime.conversions == 1


def _wide_lora(pipe, path, seed=0, rank=4):
    """A random kohya LoRA on attention, the GEGLU projections (traced as two halves) and the 3x3 convolutions."""
    from latentgen.lora import formats
    from latentgen.lora import names as lora_names

    g = torch.Generator().manual_seed(seed)
    lora = formats.Lora()
    convs = set(lora_names.conv_targets(pipe.unet))
    for name, mod in lora_names.module_names(pipe.unet, "unet").items():
        if name.endswith(tuple("." + t for t in (*lora_names.UNET_TARGETS, "ff.net.0.proj", "ff.net.2"))) or name in convs:
            w = mod.weight
            lora.modules.setdefault("unet", {})[name] = (
                torch.randn(rank, *w.shape[1:], generator=g) * 0.3,
                torch.randn(w.shape[0], rank, *([1, 1] if w.dim() == 4 else []), generator=g) * 0.3, 2.0)
    return formats.save(lora, path, "kohya")


@pytest.mark.parametrize("dtype, tolerance", [("fp32", 1), ("bf16", None)])
def test_tag_loras_on_every_kind_of_layer_run_converted_and_leave_no_trace(tiny_folder, tmp_path, dtype, tolerance):
    fast = latentgen.load(tiny_folder, backend="openvino", dtype=dtype)
    ref = latentgen.load(tiny_folder, backend="torch", dtype=dtype)
    a, b = _wide_lora(fast, tmp_path / "a.safetensors", 1), _wide_lora(fast, tmp_path / "b.safetensors", 2)
    bare = fast.generate("a cat", seed=3, steps=6)
    base = fast.runtime.for_unet(fast.unet)
    tags = f"a cat <lora:{a}:0.8> <lora:{b}:0.5>"
    used = []
    real = openvino_unet.Compiled.__call__
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(openvino_unet.Compiled, "__call__", lambda self, *a, **k: used.append(self) or real(self, *a, **k))
        got = fast.generate(tags, seed=3, steps=6)
    assert used and all(c is not base for c in used) and "ran torch" not in repr(fast)  # converted, patched
    want = ref.generate(tags, seed=3, steps=6)
    if tolerance is not None:
        assert max_diff(got, want) <= tolerance
    else:  # bf16's rounding of folded weights against torch's unfolded sums: small, not another picture
        assert np.abs(np.asarray(got[0], float) - np.asarray(want[0], float)).mean() < 4
    assert max_diff(got, bare) > 20  # the LoRAs were there
    assert fast.runtime.for_unet(fast.unet) is base and max_diff(fast.generate("a cat", seed=3, steps=6), bare) == 0
    from latentgen.backends import weights
    from latentgen.lora import formats

    assert fast.loras.loaded == {} and weights.lora_layers(fast.unet) == {} and sorted(fast.loras.parked) == ["a", "b"]
    reads, real = [], formats.read
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(formats, "read", lambda *a, **k: reads.append(a) or real(*a, **k))
        again = fast.generate(tags, seed=3, steps=6)  # the parked LoRAs, active again: no file read, no injection
    assert reads == [] and max_diff(again, got) == 0
    fast.unload_lora()
    assert fast.loras.parked == {} and not any("lora" in n for n, _ in fast.unet.named_parameters())


def test_a_lora_on_the_convolutions_under_tiling_runs_converted_with_the_tiling_graph(tiny_folder, tmp_path):
    """A1111's Tiling is another conversion (each held, neither read again); a LoRA on the 3x3 convolutions folds
    into it as into the plain one (its own convolutions wrap around too) and gives torch's pictures."""
    fast = latentgen.load(tiny_folder, backend="openvino")
    ref = latentgen.load(tiny_folder, backend="torch")
    tags = f"a cat <lora:{_wide_lora(fast, tmp_path / 'a.safetensors', 1)}:0.8>"
    for prompt, tiling in [(tags, True), ("a cat", True), (tags, False), (tags, True)]:
        got = fast.generate(prompt, seed=3, steps=6, tiling=tiling)
        assert max_diff(got, ref.generate(prompt, seed=3, steps=6, tiling=tiling)) <= 1, (prompt, tiling)
        assert "ran torch" not in repr(fast)
    assert len(fast.runtime._compiled) == 2  # both graphs held (converted here, or read from the disk cache)


def test_a_ctrl_c_during_the_conversion_stops_the_call_instead_of_falling_back(tiny_folder, tmp_path, monkeypatch):
    """OpenVINO's converter catches a KeyboardInterrupt raised in its Python callbacks and raises its own error
    that names it: that is the user's Ctrl-C, not a reason to draw on torch."""
    from latentgen.backends import raise_if_interrupted

    monkeypatch.setenv("LATENTGEN_CACHE", str(tmp_path))
    fast = latentgen.load(tiny_folder, backend="openvino")

    def convert(*args):  # the message OpenVINO 2026.4 gives, as seen when Ctrl-C hits ts_decoder
        raise RuntimeError("Check 'false' failed at src/frontends/pytorch/src/frontend.cpp:\n"
                           "KeyboardInterrupt: <EMPTY MESSAGE>\n\nAt:\n  .../ts_decoder.py(543): input_is_none")

    monkeypatch.setattr(runtime, "convert", convert)
    with pytest.raises(KeyboardInterrupt):
        fast.generate("a cat", steps=1)
    wrapped = OSError("Unable to load weights")
    wrapped.__context__ = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):  # one chained as the context (or the cause) counts too
        raise_if_interrupted(wrapped)
    raise_if_interrupted(RuntimeError("no rule"))  # any other failure is no interruption: the caller falls back
