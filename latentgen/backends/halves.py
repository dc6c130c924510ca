"""CFG's two halves of one U-Net call, cut where they part (``split``), so the part that reads no context runs
once (``latentgen.backends.openvino.Compiled``).

The cut: CFG calls the U-Net on ``cat([x, x])`` with one timestep, and the halves differ only in their
context (and a ControlNet's residuals, which read it), which enters through cross-attention. Everything upstream
of the first cross-attention, and every ResNet's time projection, reads neither, so it is the same for both
halves: on SD 1.5 that is the time embedding, conv_in, the first ResNet and the first self-attention over 4096
tokens, about 7% of a half's time.
"""

from __future__ import annotations

import numpy as np


def doubles(half, full) -> bool:
    """Whether ``full``'s static shape is ``half``'s with twice the batch (dimension 0): a cut tensor made
    for one CFG half that stands for both when repeated."""
    a, b = half.get_partial_shape().to_shape(), full.get_partial_shape().to_shape()
    return len(a) == len(b) > 0 and b[0] == 2 * a[0] and list(a)[1:] == list(b)[1:]


def _kinds(model) -> tuple[dict, list]:
    """(kind, cut): each node's kind by what it reads, directly or not: "ctx" the context or the inputs after it
    (a ControlNet's residuals), else "shared" x or t, else "const" (weights, and shapes, which are static here);
    cut: the outputs of shared nodes that ctx nodes read, in graph order."""
    kind, cut = {}, {}
    halves = {p.get_name() for p in model.get_parameters()[2:]}
    for op in model.get_ordered_ops():
        sources = [i.get_source_output() for i in op.inputs()]
        if op.get_type_name() == "Parameter":
            kind[op.get_name()] = "ctx" if op.get_name() in halves else "shared"
            continue
        found = {kind[s.get_node().get_name()] for s in sources}
        kind[op.get_name()] = "ctx" if "ctx" in found else "shared" if "shared" in found else "const"
        if kind[op.get_name()] == "ctx":
            for s in sources:
                if kind[s.get_node().get_name()] == "shared":
                    cut.setdefault((s.get_node().get_name(), s.get_index()), s)
    return kind, list(cut.values())


def split(model, shapes: dict):
    """(prefix, rest): ``model`` at these static shapes cut where it first reads the context. prefix maps
    (x, t) to the cut tensors (on SD 1.5: conv_in's output, the first ResNet's, the first transformer
    block's residual stream and its cross-attention's query, and each ResNet's time projection); rest maps
    (cut tensors..., context, residuals...) to the output, in the same order. Both share the weights; ``model`` is left
    as it was."""
    import openvino
    import openvino.opset13 as ops

    graph = model.clone()
    graph.reshape(shapes)
    for op in graph.get_ordered_ops():  # a ShapeOf of a static shape is a constant: make it one
        if op.get_type_name() == "ShapeOf":
            shape = np.array(op.get_input_shape(0), dtype=op.get_output_element_type(0).to_dtype())
            op.output(0).replace(ops.constant(shape).output(0))
    kind, cut = _kinds(graph)
    x, t, *halves = graph.get_parameters()  # context, and a controlled U-Net's residuals
    prefix = openvino.Model(cut, [x, t], "prefix")
    inputs = []
    for out in cut:  # the rest reads a parameter in place of each cut tensor
        inputs.append(ops.parameter(out.get_partial_shape(), out.get_element_type()))
        for target in list(out.get_target_inputs()):
            if kind.get(target.get_node().get_name()) == "ctx":  # not the prefix's new Result
                target.replace_source_output(inputs[-1].output(0))
    return prefix, openvino.Model(graph.get_results(), [*inputs, *halves], "rest")
