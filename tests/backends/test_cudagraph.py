"""The CUDA-graph backend's bookkeeping, on the CPU: which module the loop gets, when a graph is recorded
anew, and that anything not on a CUDA device runs the module itself. Recording and replay need a GPU:
``tests/benchmarks/check_cuda.py`` checks them there (replay equal to eager, LoRA and edits, the fp16 VAE
guard); here a stand-in replay runs the recorded module on the recorded buffers."""

import copy
import warnings
from types import SimpleNamespace

import pytest
import torch

import latentgen
from latentgen.backends import cudagraph, runtime


def test_the_graphed_unet_is_kept_per_weight_layout_and_freeu_runs_the_module(tiny_folder):
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
    unet.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    assert rt._graph(unet) is unet  # FreeU's factors are Python numbers a graph would freeze: eager
    unet.disable_freeu()
    assert isinstance(rt._graph(unet), cudagraph.Graphed)
    assert runtime.Runtime("compile")._graph(unet).fn is not unet  # torch.compile's module, recorded on first call


def _fake_records(g, monkeypatch):
    """``g`` records a stand-in graph on the CPU: its replay runs ``Graphed.call`` on the recorded buffers and on
    the module recorded (whose weight tensors a real graph reads by address)."""
    def record(inputs):
        rec = SimpleNamespace(inputs={k: v.clone() for k, v in inputs.items()}, t=torch.zeros(()))
        rec.out = [o.clone() for o in g.call(rec)]
        rec.graph = SimpleNamespace(replay=lambda: [o.copy_(n) for o, n in zip(rec.out, g.call(rec))])
        return rec
    monkeypatch.setattr(g, "record", record)


def test_loras_stay_in_the_graph_folded_into_a_twins_weights_written_in_place(tiny_folder, tmp_path, monkeypatch):
    """A LoRA's graph is recorded once on a twin of the U-Net whose LoRA layers have weights of their own; a scale,
    another LoRA set or a tag's LoRA on the same layers rewrites those weights in place (the same addresses a
    recorded graph reads) and replays the same graph; the module's own weights are never written."""
    from test_runtime import _wide_lora

    pipe = latentgen.load(tiny_folder, backend="torch")
    rt, unet = runtime.Runtime("cudagraph", "as asked"), pipe.unet
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    bare = rt._graph(unet)
    a, b = _wide_lora(pipe, tmp_path / "a.safetensors", 1), _wide_lora(pipe, tmp_path / "b.safetensors", 2)
    pipe.load_lora(a, name="a", scale=0.8)
    g = rt._graph(unet)
    assert g is not bare and g.unet is not unet and g.fn is g.unet
    twin, own = dict(g.unet.named_parameters()), dict(unet.named_parameters())
    folded = {n: p for n, p in twin.items() if not any(p is q for q in own.values())}
    assert folded and all(n.endswith(".weight") and f"{n[:-7]}.base_layer.weight" in own for n in folded)
    plain = {n.replace(".base_layer.", "."): p for n, p in own.items() if ".lora_" not in n}
    assert twin.keys() == plain.keys() and all(twin[n] is p for n, p in plain.items() if n not in folded)  # shared
    addresses = {n: p.data_ptr() for n, p in folded.items()}
    _fake_records(g, monkeypatch)
    gen = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen)

    def replay_equals_eager():
        with torch.no_grad():
            got, want = rt._graph(unet)._replay(x, 500, c).sample, unet(x, 500, encoder_hidden_states=c).sample
        return float((got - want).abs().max()) < 1e-4 * float(want.abs().max())
    assert replay_equals_eager()
    for change in (lambda: pipe.set_lora_scale("a", 0.3), lambda: pipe.load_lora(b, name="b", scale=0.5),
                   lambda: pipe.unload_lora("a"), pipe.fuse_lora, pipe.unfuse_lora):
        change()
        assert rt._graph(unet) is g and replay_equals_eager()  # the same graph, its weights rewritten in place
    assert len(g.graphs) == 1 and {n: p.data_ptr() for n, p in folded.items()} == addresses
    with torch.no_grad():
        out = pipe.generate(f"a cat <lora:{a}:0.6>", seed=1, steps=2)  # a tag's LoRA: parked after the call, same layers
    assert rt._graph(unet) is g and out
    pipe.unload_lora()
    assert rt._graph(unet) is bare  # no LoRA layers: the module's own graph, still held
    assert all(torch.equal(p, before[n]) for n, p in unet.named_parameters())  # never written
    from latentgen.canvas import seamless

    pipe.load_lora(a, name="a")
    with seamless.circular([unet]):  # A1111's Tiling: a graph of its own on the same twin, its LoRA layers wrapping
        wrapped = rt._graph(unet)
        _fake_records(wrapped, monkeypatch)
        assert wrapped is not g and wrapped.unet is g.unet and replay_equals_eager()
    again = rt._graph(unet)  # zero padding again (g itself was let go: KEEP graphs), the twin's LoRA layers too
    _fake_records(again, monkeypatch)
    assert again.unet is wrapped.unet and replay_equals_eager()
    from diffusers.models.attention_processor import AttnProcessor

    unet.set_attn_processor(AttnProcessor())  # the twin's copied attention modules hold the old processors
    other = rt._graph(unet)
    _fake_records(other, monkeypatch)
    assert other.unet is not g.unet and replay_equals_eager()


def test_every_added_condition_reaches_the_module_and_a_failed_graph_is_said(tiny_folder, monkeypatch):
    pipe = latentgen.load(tiny_folder, backend="torch")
    seen = []
    g = cudagraph.Graphed(lambda x, t, encoder_hidden_states, **k: seen.append(k) or SimpleNamespace(sample=x))
    g.run({"x": torch.zeros(1), "context": torch.zeros(1), "image_embeds": torch.ones(1)}, 1)
    assert set(seen[0]["added_cond_kwargs"]) == {"image_embeds"}
    rt = runtime.Runtime("cudagraph", "as asked")
    monkeypatch.setattr(runtime.precision, "device_of", lambda m: torch.device("cuda"))
    found = rt.for_unet(pipe.unet)
    found.failed = "RuntimeError: operation not permitted"
    assert rt.for_unet(pipe.unet) is found and "its CUDA graph could not be recorded (RuntimeError" in repr(rt)


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

    def record(inputs):  # ``Graphed.record`` without a GPU: one call of ``fn``, a replay that does nothing
        out = g.fn(inputs["x"], torch.tensor(500.0), encoder_hidden_states=inputs["context"]).sample
        return SimpleNamespace(inputs={k: v.clone() for k, v in inputs.items()}, t=torch.zeros(()), out=[out],
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
    monkeypatch.setattr(g, "record", lambda inputs: (_ for _ in ()).throw(RuntimeError("operation not permitted")))
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


def test_sdxls_added_conditioning_has_buffers_of_its_own_that_every_replay_refills(xl_folder, monkeypatch):
    """SDXL's pooled text and size numbers enter a graph as x and the context do: a buffer each, filled before every
    replay, and part of the graph's key. Off CUDA (and after a failed recording) the module runs with them. The
    replay here re-runs ``Graphed.call`` on the buffers, which is what a recorded graph reads."""
    pipe = latentgen.load(xl_folder, backend="torch")
    unet = pipe.unet
    g = cudagraph.Graphed(unet)
    gen = torch.Generator().manual_seed(0)
    width = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    x, c = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen)
    added = {"text_embeds": torch.randn(2, width, generator=gen), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    other = {**added, "time_ids": torch.tensor([[128.0, 128, 0, 0, 64, 64]] * 2)}
    with torch.no_grad():
        want = [unet(x, 500, encoder_hidden_states=c, added_cond_kwargs=a).sample for a in (added, other)]
        assert torch.equal(g(x, 500, c, added_cond_kwargs=added).sample, want[0])  # off CUDA: the module itself
    assert not torch.equal(want[0], want[1])  # the size numbers matter
    _fake_records(g, monkeypatch)
    with torch.no_grad():
        got = [g._replay(x, 500, c, a).sample for a in (added, other, added)]
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and torch.equal(got[2], want[0])
    assert len(g.graphs) == 1 and set(g.graphs[next(iter(g.graphs))].inputs) == {"x", "context", "text_embeds",
                                                                               "time_ids"}
    with torch.no_grad():
        g._replay(x[:1], 500, c[:1], {k: v[:1] for k, v in added.items()})  # other shapes: another graph
    assert len(g.graphs) == 2 and not g.failed


def test_a_controlnet_is_graphed_and_its_residuals_enter_the_unets_graph_as_inputs(tiny_folder, controlnets,
                                                                                    monkeypatch):
    """ControlNets on CUDA: the ControlNet's calls replay from graphs of their own (``GraphedControlNet``: x, the
    context and the hint in buffers, its residuals out), and the U-Net's graph takes the residuals as inputs (buffers
    refilled before every replay; a call without them is another graph)."""
    from diffusers import ControlNetModel

    from latentgen.backends import control_graph

    pipe = latentgen.load(tiny_folder, backend="torch")
    net = ControlNetModel.from_pretrained(controlnets[0])
    gen = torch.Generator().manual_seed(0)
    x, c = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 77, pipe.unet.config.cross_attention_dim, generator=gen)
    hint = torch.rand(2, 3, 16, 16, generator=gen)
    gc = cudagraph.GraphedControlNet(net)
    _fake_records(gc, monkeypatch)
    with torch.no_grad():
        want_down, want_mid = control_graph.run_torch(net, x, 500, c, hint)
        down, mid = gc(x, 500, c, hint)  # off CUDA: the module itself
        assert all(torch.equal(a, b) for a, b in zip(down + [mid], want_down + [want_mid]))
        got = gc.replay({"x": x, "context": c, "hint": hint}, 500)  # the stand-in graph
        assert all(torch.equal(a, b) for a, b in zip(got, want_down + [want_mid])) and len(gc.graphs) == 1
    g = cudagraph.Graphed(pipe.unet)
    _fake_records(g, monkeypatch)
    with torch.no_grad():
        for scale in (1.0, 0.5):  # other residual values: the same graph, its buffers refilled
            res = dict(down_block_additional_residuals=[d * scale for d in down], mid_block_additional_residual=mid * scale)
            want = pipe.unet(x, 500, encoder_hidden_states=c, **res).sample
            out = g._replay(x, 500, c, None, res["down_block_additional_residuals"], res["mid_block_additional_residual"])
            assert torch.equal(out.sample, want)
        assert len(g.graphs) == 1 and sum(k.startswith("down.") for k in next(iter(g.graphs.values())).inputs) == len(down)
        assert torch.equal(g._replay(x, 500, c).sample, pipe.unet(x, 500, encoder_hidden_states=c).sample)
    assert len(g.graphs) == 2  # without residuals: a graph of its own
    rt = runtime.Runtime("cudagraph", "as asked")
    monkeypatch.setattr(runtime.precision, "device_of", lambda m: torch.device("cuda"))  # where it would be
    found = rt.for_controlnet(net)
    assert isinstance(found, cudagraph.GraphedControlNet) and found.unet is net and rt.for_controlnet(net) is found
    assert isinstance(rt.for_unet(pipe.unet, residuals=True), cudagraph.Graphed)  # no longer eager with a ControlNet
