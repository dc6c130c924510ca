"""latentgen.backends.halves: the U-Net's graph cut where CFG's halves part gives the whole graph's output, and its
prefix reads no context; a U-Net with a ControlNet's residual inputs cuts with them on the context's side."""

import numpy as np
import pytest

import latentgen
from latentgen.backends import choice, halves

pytestmark = pytest.mark.skipif(not choice.available(), reason="openvino is a dependency; this platform has no wheel")


@pytest.fixture(scope="module")
def fast(tiny_folder):
    return latentgen.load(tiny_folder, backend="openvino")


def test_the_split_graph_gives_the_whole_one_and_its_prefix_reads_no_context(fast):
    import openvino

    model = fast.runtime.for_unet(fast.unet).model
    before = len(model.get_ordered_ops())
    shapes = {0: [1, 4, 32, 32], 1: [], 2: [1, 77, 32]}
    prefix, rest = halves.split(model, shapes)
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


def test_a_controlnets_residual_inputs_fall_on_the_contexts_side_of_the_cut(fast, tmp_path):
    import openvino

    from latentgen.backends import openvino as openvino_unet

    model = openvino.Core().read_model(openvino_unet.convert(fast.unet, tmp_path / "r", residuals=True))
    res = openvino_unet.residual_shapes(fast.unet.config, (1, 4, 32, 32))
    shapes = {0: [1, 4, 32, 32], 1: [], 2: [1, 77, 32], **{3 + i: list(s) for i, s in enumerate(res)}}
    prefix, rest = halves.split(model, shapes)
    assert len(prefix.get_parameters()) == 2 and len(rest.get_parameters()) == len(prefix.outputs) + 1 + len(res)
    whole = model.clone()
    whole.reshape(shapes)
    core, f32 = openvino.Core(), {"INFERENCE_PRECISION_HINT": "f32"}
    g = np.random.default_rng(1)
    x, t = g.standard_normal((1, 4, 32, 32), np.float32), np.asarray(300.0, np.float32)
    ctx, rs = g.standard_normal((1, 77, 32), np.float32), [g.standard_normal(s, np.float32) for s in res]
    cut = list(core.compile_model(prefix, "CPU", f32)([x, t]).values())
    got = core.compile_model(rest, "CPU", f32)([*cut, ctx, *rs])[0]
    want = core.compile_model(whole, "CPU", f32)([x, t, ctx, *rs])[0]
    plain = core.compile_model(whole, "CPU", f32)([x, t, ctx, *[r * 0 for r in rs]])[0]
    assert np.allclose(got, want, atol=1e-5) and not np.allclose(want, plain, atol=1e-3)  # the residuals count
