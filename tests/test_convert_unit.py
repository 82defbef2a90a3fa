"""Unit tests for graph.uint8_input's folding of the input normalisation into the first convolutions."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from mobidem.convert import graph


def _conv_model(pads: list[int], bias: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W")]
    conv_in = ["x_nchw", "W"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "B"))
        conv_in.append("B")
    g = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]),
         helper.make_node("Conv", conv_in, ["y"], kernel_shape=[3, 3], pads=pads)],
        "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, None, None])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", graph.OPSET)])
    m.ir_version = graph.IR_VERSION
    return m


def _run(model: onnx.ModelProto, x) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def _affine_ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node if n.op_type in ("Mul", "Add")]


def test_fold_is_exact_for_unpadded_convolutions():
    x = np.random.default_rng(1).integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    for bias in (True, False):
        inner = _conv_model([0, 0, 0, 0], bias)
        want = _run(inner, x.astype(np.float32) * (2 / 255) - 1.0)
        served = graph.uint8_input(inner, "image", [8, 8, 3], scale=2 / 255, offset=-1.0)
        assert _affine_ops(served) == [], "the affine step should have been folded away"
        np.testing.assert_allclose(_run(served, x), want, atol=1e-5)


def test_padded_convolution_keeps_the_explicit_normalisation():
    # with padding the border must see 0 after normalisation, which a fold cannot express
    x = np.random.default_rng(2).integers(0, 256, size=(1, 8, 8, 3), dtype=np.uint8)
    inner = _conv_model([1, 1, 1, 1], True)
    want = _run(inner, x.astype(np.float32) / 127.5 - 1.0)
    served = graph.uint8_input(inner, "image", [8, 8, 3], scale=1 / 127.5, offset=-1.0)
    assert _affine_ops(served) == ["Mul", "Add"]
    np.testing.assert_allclose(_run(served, x), want, atol=1e-5)
