"""The CUDA-graph backend's bookkeeping, on the CPU: which module the loop gets, when a graph is recorded
anew, and that anything not on a CUDA device runs the module itself. Recording and replay need a GPU:
``tests/benchmarks/check_cuda.py`` checks them there (replay equal to eager, LoRA and edits, the fp16 VAE
guard)."""

import copy
import warnings
from types import SimpleNamespace

import pytest
import torch

import latentgen
from latentgen.backends import cudagraph, runtime


def test_the_graphed_unet_is_kept_per_weight_layout_and_a_lora_runs_the_module(tiny_folder, lora_files):
    pipe = latentgen.load(tiny_folder, backend="torch")
    rt, unet = runtime.Runtime("cudagraph", "as asked"), pipe.unet
    g = rt._graph(unet)
    assert isinstance(g, cudagraph.Graphed) and g.unet is unet and g.fn is unet
    assert rt._graph(unet) is g  # same parameters, same places: the same graphs
    with torch.no_grad():
        unet.conv_out.bias.add_(1.0)  # in place: a replay reads the new values, nothing to record again
    assert rt._graph(unet) is g
    unet.to(torch.float64)  # new storage (and dtype): the graphs' addresses are stale
    moved = rt._graph(unet)
    assert moved is not g and isinstance(moved, cudagraph.Graphed)
    unet.to(torch.float32)
    pipe.load_lora(lora_files[0], name="a", scale=0.5)
    assert rt._graph(unet) is unet  # peft's scales are Python numbers a graph would freeze: eager
    pipe.unload_lora()
    assert isinstance(rt._graph(unet), cudagraph.Graphed)
    assert runtime.Runtime("compile")._graph(unet).fn is not unet  # torch.compile's module, recorded on first call


def test_off_cuda_the_backend_is_the_module_itself(tiny_folder):
    pipe = latentgen.load(tiny_folder, backend="torch")
    rt = runtime.Runtime("cudagraph", "as asked")
    assert rt.for_unet(pipe.unet) is pipe.unet  # a CPU U-Net: nothing to record
    g = cudagraph.Graphed(copy.deepcopy(pipe.unet))
    x, c = torch.randn(2, 4, 8, 8), torch.randn(2, 77, pipe.unet.config.cross_attention_dim)
    with torch.no_grad():
        want = pipe.unet(x, torch.tensor(500), encoder_hidden_states=c).sample
        assert torch.equal(g(x, torch.tensor(500), encoder_hidden_states=c).sample, want)
    assert g.recorded == 0 and not g.graphs


def _replay_warns(g, unet, message: str):
    """One ``Graphed._replay`` on the CPU: it warns with ``message`` and gives the module's own output."""
    x, c, t = torch.randn(2, 4, 8, 8), torch.randn(2, 77, unet.config.cross_attention_dim), torch.tensor(500.0)
    with pytest.warns(RuntimeWarning, match=message):
        out = g._replay(x, t, c).sample
    with torch.no_grad():
        assert torch.equal(out, unet(x, t, encoder_hidden_states=c).sample)
    return x, t, c


def test_a_compile_that_fails_records_the_eager_kernels_instead_with_a_warning(tiny_folder, monkeypatch):
    pipe = latentgen.load(tiny_folder, backend="torch")
    g = cudagraph.Graphed(pipe.unet, compile=True)
    assert g.fn is not pipe.unet  # torch.compile's wrapper (it compiles on its first call)
    g.fn = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no Triton here"))  # what a failed compile raises

    def record(x, context):  # ``Graphed.record`` without a GPU: one call of ``fn``, a replay that does nothing
        out = g.fn(x, torch.tensor(500.0), encoder_hidden_states=context).sample
        return SimpleNamespace(x=x.clone(), t=torch.zeros(()), context=context.clone(), out=out,
                               graph=SimpleNamespace(replay=lambda: None))

    monkeypatch.setattr(g, "record", record)
    x, t, c = _replay_warns(g, pipe.unet, r"torch.compile could not build the U-Net \(RuntimeError: no Triton here\); "
                                          r"its eager kernels are recorded as a CUDA graph instead")
    assert g.fn is pipe.unet and not g.failed and len(g.graphs) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: the next call replays without a word
        g._replay(x, t, c)


def test_a_graph_that_cannot_be_recorded_runs_the_module_with_a_warning(tiny_folder, monkeypatch):
    pipe = latentgen.load(tiny_folder, backend="torch")
    g = cudagraph.Graphed(pipe.unet)
    monkeypatch.setattr(g, "record", lambda x, c: (_ for _ in ()).throw(RuntimeError("operation not permitted")))
    _replay_warns(g, pipe.unet, r"could not be recorded as a CUDA graph \(RuntimeError: operation not permitted\); "
                                r"it runs eagerly")
    assert g.failed.startswith("RuntimeError")


def test_a_compile_refused_at_once_is_said_and_shown_in_the_repr(tiny_folder, monkeypatch):
    pipe = latentgen.load(tiny_folder, backend="torch")
    rt = runtime.Runtime("compile", "as asked")
    refused = RuntimeError("Python 3.99 unsupported")  # as Dynamo refuses a Python it does not support, at once
    monkeypatch.setattr(torch, "compile", lambda *a, **k: (_ for _ in ()).throw(refused))
    with pytest.warns(RuntimeWarning, match=r"torch.compile could not build the U-Net \(RuntimeError: Python 3\.99"):
        g = rt._graph(pipe.unet)
    assert g.fn is pipe.unet and g.uncompiled.startswith("RuntimeError")
    assert "torch.compile failed (RuntimeError: Python 3.99 unsupported), the eager kernels are graphed" in repr(rt)
