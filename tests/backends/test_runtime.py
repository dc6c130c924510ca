"""latentgen.backends.runtime: the U-Net through OpenVINO. The default is chosen by rule (and overridable); the
compiled U-Net gives torch's images; it is converted once and then read from the disk cache; and it
never stands in for weights it was not converted from (LoRAs, fused or edited weights run on torch)."""

import copy
import gc
import importlib.util
import sys
import weakref

import pytest
import torch
from conftest import mask, max_diff, photo

import latentgen
from latentgen.backends import openvino as openvino_unet
from latentgen.backends import runtime

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


def test_img2img_at_strength_zero_runs_no_step_and_converts_nothing(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTGEN_CACHE", str(tmp_path))  # nothing cached: a U-Net call would convert
    fast = latentgen.load(tiny_folder, backend="openvino")
    fast.img2img("a dog", photo(), strength=0.0, seed=1)
    assert fast.runtime.conversions == 0 and not fast.runtime._compiled
    fast.img2img("a dog", photo(), strength=0.5, seed=1, steps=2)
    assert fast.runtime.conversions == 1
