"""A uint8 NHWC image input in front of an NCHW float ONNX graph, edited in place (any opset >= 9).

Fully convolutional detectors and small classifiers shipped as ONNX (CenterFace, YuNet, dlib's
age and gender networks) take float NCHW input in their own colour order and normalisation. The
served models take what the gateway has instead: uint8 RGB NHWC. This module prepends

    Cast(float) -> [Gather channels, when the model wants BGR] -> [Sub mean] -> [Mul scale] -> Transpose(NCHW)

to the graph itself (no model merge, so the source's opset stays as it is), and can make the
graph's spatial and batch dimensions symbolic. The arithmetic is the source's own: ``(x - mean) *
scale`` in float32, which equals a division by ``1 / scale`` exactly when that is a power of two
(the age/gender package divides by 256).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def symbolic_dims(model: onnx.ModelProto, dims: dict[str, Sequence[int | str]]) -> None:
    """Set graph input/output shapes by name ({name: [dim or symbol, ...]}) and drop the stored
    intermediate shapes (they were inferred for the fixed sizes)."""
    for value in list(model.graph.input) + list(model.graph.output):
        if value.name not in dims:
            continue
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        for d in dims[value.name]:
            dim = shape.dim.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = int(d)
    del model.graph.value_info[:]


def uint8_nhwc_input(model: onnx.ModelProto, name: str, shape: Sequence[int | str], *, bgr: bool = False,
                     mean: Sequence[float] | None = None, scale: float = 1.0) -> onnx.ModelProto:
    """Replace the model's single float NCHW input by a uint8 RGB NHWC input ``name`` of
    ``["N", *shape]`` (shape: H, W, 3, each a size or a symbol). ``bgr``: the model wants its
    channels in BGR order; ``mean``: per-channel means in the model's channel order, subtracted
    before ``scale`` multiplies."""
    (target,) = real_inputs(model)
    graph = model.graph
    nodes = [helper.make_node("Cast", [name], ["_in_float"], to=TensorProto.FLOAT)]
    last = "_in_float"
    inits = []
    if bgr:
        inits.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), "_in_bgr"))
        nodes.append(helper.make_node("Gather", [last, "_in_bgr"], ["_in_swapped"], axis=3))
        last = "_in_swapped"
    if mean is not None:
        inits.append(numpy_helper.from_array(np.asarray(mean, np.float32).reshape(1, 1, 1, 3), "_in_mean"))
        nodes.append(helper.make_node("Sub", [last, "_in_mean"], ["_in_centred"]))
        last = "_in_centred"
    if scale != 1.0:
        inits.append(numpy_helper.from_array(np.asarray(scale, np.float32), "_in_scale"))
        nodes.append(helper.make_node("Mul", [last, "_in_scale"], ["_in_scaled"]))
        last = "_in_scaled"
    nodes.append(helper.make_node("Transpose", [last], [target.name], perm=[0, 3, 1, 2]))
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + body)
    graph.initializer.extend(inits)
    keep = [i for i in graph.input if i.name != target.name]
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info(name, TensorProto.UINT8, ["N", *shape])] + keep)
    return model


def rename_outputs(model: onnx.ModelProto, mapping: dict[str, str]) -> onnx.ModelProto:
    """Rename graph outputs (and every node reference to them), in place."""
    for node in model.graph.node:
        node.output[:] = [mapping.get(o, o) for o in node.output]
        node.input[:] = [mapping.get(i, i) for i in node.input]
    for out in model.graph.output:
        out.name = mapping.get(out.name, out.name)
    return model
