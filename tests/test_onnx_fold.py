"""Unit tests of mobidem.convert.onnx_fold: the dequantiser that makes the OpenCV-zoo int8bq files float.

Expected values are worked out by hand from the ONNX DequantizeLinear definition; graph-level results
are compared with ONNX's own reference evaluator (onnx.reference), an implementation independent of
ours and of ONNX Runtime. The real files are compared on real faces in the plugins' parity tests.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from mobidem.convert import onnx_fold


def test_dequantize_blocked_by_hand():
    x = np.array([[-128, 0, 127, 5, 7], [1, 2, 3, 4, -1]], dtype=np.int8)
    scale = np.array([[0.5, 2.0, 0.25], [1.0, 3.0, 4.0]], dtype=np.float32)  # blocks of 2 along axis 1
    zp = np.array([[0, 1, 3], [0, 0, -1]], dtype=np.int8)
    y = onnx_fold.dequantize(x, scale, zp, axis=1, block_size=2)
    expected = np.array([[-64.0, 0.0, 252.0, 8.0, 1.0],  # (7 - 3) * 0.25 in the last, short block
                         [1.0, 2.0, 9.0, 12.0, 0.0]], dtype=np.float32)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, expected)


def test_dequantize_per_axis_per_tensor_and_one_block():
    x = np.array([[10, -10], [4, 6]], dtype=np.int8)
    per_axis = onnx_fold.dequantize(x, np.array([0.5, 2.0], np.float32), np.array([0, 2], np.int8), axis=0)
    np.testing.assert_array_equal(per_axis, [[5.0, -5.0], [4.0, 8.0]])
    per_tensor = onnx_fold.dequantize(x, np.float32(0.5), np.int8(-2))
    np.testing.assert_array_equal(per_tensor, [[6.0, -4.0], [3.0, 4.0]])
    # YuNet's biases: a 64-vector with a one-element scale and block_size 64 (one block).
    bias = np.arange(-32, 32, dtype=np.int8)
    one_block = onnx_fold.dequantize(bias, np.array([0.125], np.float32), np.array([1], np.int8),
                                     axis=0, block_size=64)
    np.testing.assert_array_equal(one_block, (np.arange(-32, 32) - 1) * 0.125)
    with pytest.raises(ValueError, match="blocks"):
        onnx_fold.dequantize(bias, np.array([0.1, 0.2], np.float32), None, axis=0, block_size=64)


def _quantised_conv_model() -> onnx.ModelProto:
    """x -> Conv(W) + b -> Mul(s) with W block-quantised (axis 1, blocks of 4 over 3*3*2 = 18
    flattened elements, then Reshape, as the int8bq files do), b in one block, an unused declared input
    (as SFace has) and an initialiser also declared as an input."""
    rng = np.random.default_rng(7)
    wq = rng.integers(-128, 128, size=(4, 18), dtype=np.int8)
    ws = rng.uniform(0.001, 0.02, size=(4, 5)).astype(np.float32)
    wz = rng.integers(-3, 4, size=(4, 5), dtype=np.int8)
    bq = rng.integers(-128, 128, size=(4,), dtype=np.int8)
    inits = [numpy_helper.from_array(wq, "w_q"), numpy_helper.from_array(ws, "w_s"),
             numpy_helper.from_array(wz, "w_z"), numpy_helper.from_array(np.array([4, 2, 3, 3], np.int64), "w_shape"),
             numpy_helper.from_array(bq, "b_q"), numpy_helper.from_array(np.array([0.01], np.float32), "b_s"),
             numpy_helper.from_array(np.array([2], np.int8), "b_z"),
             numpy_helper.from_array(np.array([1.5], np.float32), "s")]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w_flat"], axis=1, block_size=4),
        helper.make_node("Reshape", ["w_flat", "w_shape"], ["w"]),
        helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b"], axis=0, block_size=4),
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["c", "s"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6]),
         helper.make_tensor_value_info("w_float_unused", TensorProto.FLOAT, [4, 2, 3, 3]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


def test_dequantize_model_folds_and_keeps_the_function():
    model = _quantised_conv_model()
    folded = onnx_fold.dequantize_model(model)
    assert [i.name for i in folded.graph.input] == ["x"]
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Mul"]
    assert {t.name for t in folded.graph.initializer} == {"w", "b", "s"}
    assert {t.data_type for t in folded.graph.initializer} == {TensorProto.FLOAT}
    # the input model is untouched
    assert "DequantizeLinear" in [n.op_type for n in model.graph.node]

    x = np.random.default_rng(1).uniform(-1, 1, (1, 2, 6, 6)).astype(np.float32)
    ref = ReferenceEvaluator(model).run(None, {"x": x, "w_float_unused": np.zeros((4, 2, 3, 3), np.float32),
                                               "s": np.array([1.5], np.float32)})[0]
    ours = ReferenceEvaluator(folded).run(None, {"x": x})[0]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)
    # the folded weights are the spec's dequantisation, element for element
    w = numpy_helper.to_array(next(t for t in folded.graph.initializer if t.name == "w"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    blocks = np.repeat(inits["w_s"], 4, axis=1)[:, :18]
    zps = np.repeat(inits["w_z"], 4, axis=1)[:, :18].astype(np.float32)
    np.testing.assert_array_equal(w, ((inits["w_q"].astype(np.float32) - zps) * blocks).reshape(4, 2, 3, 3))


def test_unblock_single_block_keeps_the_function():
    model = _quantised_conv_model()
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    onnx_fold.remove_unused_inputs(reference)
    assert onnx_fold.unblock_single_block_dequantize(reference) == 1  # b's one-block scale, not w's
    bias_node = next(n for n in reference.graph.node if n.output[0] == "b")
    assert helper.get_attribute_value(next(a for a in bias_node.attribute if a.name == "block_size")) == 0
    x = np.random.default_rng(2).uniform(-1, 1, (1, 2, 6, 6)).astype(np.float32)
    a = ReferenceEvaluator(reference).run(None, {"x": x})[0]
    b = ReferenceEvaluator(onnx_fold.dequantize_model(model)).run(None, {"x": x})[0]
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
