"""Convert a Keras 2 HDF5 model (fer's mini-Xception expression model) to ONNX.

Plain Python: the architecture is read from the file's ``model_config`` attribute, the weights through each
layer's ``weight_names`` attribute, with h5py + numpy, and the graph is written with the ``onnx`` helper API.
No tensorflow / keras / torch is needed.

Supported layers (anything else raises :class:`UnsupportedModelError`):
InputLayer, Conv2D, SeparableConv2D, DepthwiseConv2D, BatchNormalization, Activation (linear, relu, softmax),
Add, MaxPooling2D, GlobalAveragePooling2D; channels_last, dilation 1, "valid"/"same" padding.

The ONNX graph takes ``face``: float32 [N, H, W, C] (NHWC, as Keras; for fer's model [N, 64, 64, 1] already
normalised as fer does, ``(gray / 255 - 0.5) * 2``) and returns ``probabilities``: float32 [N, classes].
Internally the graph is NCHW. A BatchNormalization whose only input is a linear, bias-free or biased
convolution consumed by nothing else is folded into that convolution's weights. Keras "same" padding is
written as explicit pads, with the odd pixel at the end (TensorFlow's rule), which matters for the
3x3 / stride 2 max pools.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["LABELS", "UnsupportedModelError", "convert", "INPUT_NAME", "OUTPUT_NAME"]

#: fer's class order (index -> expression).
LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

INPUT_NAME = "face"
OUTPUT_NAME = "probabilities"
OPSET = 17
IR_VERSION = 8


class UnsupportedModelError(ValueError):
    """The HDF5 file uses something this converter does not handle."""


@dataclass
class _Layer:
    name: str
    cls: str
    config: dict
    inputs: list[str]
    weights: dict[str, np.ndarray] = field(default_factory=dict)


def _decode(s) -> str:
    return s.decode("utf-8") if isinstance(s, (bytes, np.bytes_)) else str(s)


def _read_layers(f: h5py.File) -> tuple[list[_Layer], list[str]]:
    """Return the layers in file order and the model's output layer names."""
    if "model_config" not in f.attrs:
        raise UnsupportedModelError("no 'model_config' attribute: not a full Keras HDF5 model file")
    cfg = json.loads(_decode(f.attrs["model_config"]))
    cls = cfg.get("class_name")
    mconf = cfg.get("config")
    layers: list[_Layer] = []
    if cls in ("Model", "Functional"):
        for lc in mconf["layers"]:
            nodes = lc.get("inbound_nodes") or []
            if len(nodes) > 1:
                raise UnsupportedModelError(f"layer {lc['name']!r} is called {len(nodes)} times (shared layers)")
            inputs: list[str] = []
            if nodes:
                for inb in nodes[0]:
                    if not isinstance(inb, (list, tuple)):
                        raise UnsupportedModelError(f"layer {lc['name']!r}: unknown inbound node format {nodes!r}")
                    if inb[1] != 0 or inb[2] != 0:
                        raise UnsupportedModelError(f"layer {lc['name']!r}: multi-output inbound node {inb!r}")
                    inputs.append(inb[0])
            layers.append(_Layer(lc["name"], lc["class_name"], lc["config"], inputs))
        outputs = [o[0] for o in mconf["output_layers"]]
        ins = [i[0] for i in mconf["input_layers"]]
        if len(ins) != 1 or len(outputs) != 1:
            raise UnsupportedModelError(f"need exactly one input and one output, got {ins} -> {outputs}")
    elif cls == "Sequential":
        lcs = mconf["layers"] if isinstance(mconf, dict) else mconf
        prev = None
        for lc in lcs:
            if prev is None and lc["class_name"] != "InputLayer":
                shape = lc["config"].get("batch_input_shape")
                if shape is None:
                    raise UnsupportedModelError("Sequential model without batch_input_shape")
                layers.append(_Layer("input", "InputLayer", {"batch_input_shape": shape}, []))
                prev = "input"
            layers.append(_Layer(lc["config"]["name"], lc["class_name"], lc["config"], [prev] if prev else []))
            prev = lc["config"]["name"]
        outputs = [prev]
    else:
        raise UnsupportedModelError(f"unsupported model class {cls!r}")

    mw = f["model_weights"] if "model_weights" in f else f
    for layer in layers:
        if layer.name not in mw:
            continue
        g = mw[layer.name]
        for wn in g.attrs.get("weight_names", []):
            wn = _decode(wn)
            key = wn.rsplit("/", 1)[-1].split(":")[0]
            if key in layer.weights:
                raise UnsupportedModelError(f"layer {layer.name!r}: duplicate weight {key!r}")
            layer.weights[key] = np.asarray(g[wn], dtype=np.float32)
    return layers, outputs


def _same_pads(size: int, k: int, s: int) -> tuple[int, int, int]:
    """TensorFlow SAME: returns (pad_begin, pad_end, out_size); the odd pixel goes at the end."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


class _Builder:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def uniq(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def const(self, base: str, arr: np.ndarray) -> str:
        name = self.uniq(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op: str, inputs: list[str], base: str, **attrs) -> str:
        out = self.uniq(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def _check_common(layer: _Layer):
    c = layer.config
    if c.get("data_format", "channels_last") != "channels_last":
        raise UnsupportedModelError(f"layer {layer.name!r}: data_format {c.get('data_format')!r}")
    dil = c.get("dilation_rate", [1, 1])
    if tuple(dil if isinstance(dil, (list, tuple)) else [dil, dil]) != (1, 1):
        raise UnsupportedModelError(f"layer {layer.name!r}: dilation_rate {dil!r}")


def _pads(layer: _Layer, hw: tuple[int, int], k: tuple[int, int], s: tuple[int, int]):
    padding = layer.config.get("padding", "valid")
    if padding == "valid":
        out = tuple((hw[i] - k[i]) // s[i] + 1 for i in range(2))
        return [0, 0, 0, 0], out
    if padding == "same":
        (t, b, oh), (l, r, ow) = _same_pads(hw[0], k[0], s[0]), _same_pads(hw[1], k[1], s[1])
        return [t, l, b, r], (oh, ow)
    raise UnsupportedModelError(f"layer {layer.name!r}: padding {padding!r}")


def _need(layer: _Layer, *keys: str) -> list[np.ndarray]:
    missing = [k for k in keys if k not in layer.weights]
    if missing:
        raise UnsupportedModelError(f"layer {layer.name!r}: missing weights {missing} (has {sorted(layer.weights)})")
    return [layer.weights[k] for k in keys]


def _bn_scale_shift(layer: _Layer) -> tuple[np.ndarray, np.ndarray]:
    c = layer.config
    axis = c.get("axis", -1)
    if axis not in (-1, 3, [3], [-1]):
        raise UnsupportedModelError(f"layer {layer.name!r}: BatchNormalization axis {axis!r}")
    mean, var = _need(layer, "moving_mean", "moving_variance")
    gamma = layer.weights["gamma"] if c.get("scale", True) else np.ones_like(mean)
    beta = layer.weights["beta"] if c.get("center", True) else np.zeros_like(mean)
    eps = float(c.get("epsilon", 1e-3))
    # float64 for the fold, then float32
    inv = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
    return inv, beta.astype(np.float64) - mean.astype(np.float64) * inv


def convert(h5_path) -> onnx.ModelProto:
    """Convert the Keras 2 HDF5 model at ``h5_path`` into an ONNX model (opset 17, IR version 8)."""
    h5_path = Path(h5_path)
    with h5py.File(h5_path, "r") as f:
        layers, outputs = _read_layers(f)
        keras_version = _decode(f.attrs.get("keras_version", "?"))

    by_name = {l.name: l for l in layers}
    consumers: dict[str, list[str]] = {l.name: [] for l in layers}
    for l in layers:
        for i in l.inputs:
            if i not in by_name:
                raise UnsupportedModelError(f"layer {l.name!r} reads unknown layer {i!r}")
            consumers[i].append(l.name)

    b = _Builder()
    b._names.update({INPUT_NAME, OUTPUT_NAME})
    # tensor name, shape (C, H, W) or (C,) after a global pool, per Keras layer
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    # conv layers waiting for a BatchNormalization fold: name -> (weight, bias, attrs, input tensor)
    pending: dict[str, tuple] = {}
    graph_input = None

    def emit_conv(layer_name, w, bias, attrs, x):
        wn = b.const(f"{layer_name}_W", w.astype(np.float32))
        ins = [x, wn]
        if bias is not None:
            ins.append(b.const(f"{layer_name}_B", bias.astype(np.float32)))
        return b.node("Conv", ins, layer_name, **attrs)

    def x_of(layer: _Layer, idx: int = 0):
        src = layer.inputs[idx]
        if src in pending:  # a conv that turned out not to be followed by a foldable BN
            w, bias, attrs, x, shape = pending.pop(src)
            tensors[src] = (emit_conv(src, w, bias, attrs, x), shape)
        return tensors[src]

    for layer in layers:
        c = layer.config
        cls = layer.cls
        if cls == "InputLayer":
            shape = c.get("batch_input_shape") or c.get("batch_shape")
            if shape is None or len(shape) != 4 or any(d is None for d in shape[1:]):
                raise UnsupportedModelError(f"input {layer.name!r}: need a fixed NHWC shape, got {shape!r}")
            _, h, w_, ch = shape
            graph_input = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", h, w_, ch])
            t = b.node("Transpose", [INPUT_NAME], "to_nchw", perm=[0, 3, 1, 2])
            tensors[layer.name] = (t, (ch, h, w_))
            continue

        if cls in ("Conv2D", "SeparableConv2D", "DepthwiseConv2D"):
            _check_common(layer)
            x, (cin, h, w_) = x_of(layer)
            if len((cin, h, w_)) != 3:
                raise UnsupportedModelError(f"layer {layer.name!r}: needs a 4-D input")
            k = tuple(c["kernel_size"])
            s = tuple(c.get("strides", [1, 1]))
            pads, (oh, ow) = _pads(layer, (h, w_), k, s)
            act = c.get("activation", "linear")
            if cls == "Conv2D":
                (kern,) = _need(layer, "kernel")  # (kh, kw, cin, cout)
                if kern.shape[2] != cin:
                    raise UnsupportedModelError(f"layer {layer.name!r}: kernel {kern.shape} vs {cin} input channels")
                w = kern.transpose(3, 2, 0, 1)
                cout = kern.shape[3]
                attrs = dict(kernel_shape=list(k), strides=list(s), pads=pads)
            else:
                (dk,) = _need(layer, "depthwise_kernel")  # (kh, kw, cin, mult)
                mult = dk.shape[3]
                dw = dk.transpose(2, 3, 0, 1).reshape(cin * mult, 1, k[0], k[1])
                dattrs = dict(kernel_shape=list(k), strides=list(s), pads=pads, group=cin)
                if cls == "DepthwiseConv2D":
                    w, attrs, cout = dw, dattrs, cin * mult
                else:
                    (pk,) = _need(layer, "pointwise_kernel")  # (1, 1, cin*mult, cout)
                    x = emit_conv(layer.name + "_depthwise", dw, None, dattrs, x)
                    w = pk.transpose(3, 2, 0, 1)
                    cout = pk.shape[3]
                    attrs = dict(kernel_shape=[1, 1])
            bias = None
            if c.get("use_bias", True):
                (bias,) = _need(layer, "bias")
            shape = (cout, oh, ow)
            if act == "linear":
                pending[layer.name] = (w, bias, attrs, x, shape)
                continue
            y = emit_conv(layer.name, w, bias, attrs, x)
            tensors[layer.name] = (_activation(b, layer, act, y), shape)
            continue

        if cls == "BatchNormalization":
            src = layer.inputs[0]
            scale, shift = _bn_scale_shift(layer)
            if src in pending and consumers[src] == [layer.name]:
                w, bias, attrs, x, shape = pending.pop(src)
                w = w.astype(np.float64) * scale.reshape(-1, 1, 1, 1)
                nb = shift + (0.0 if bias is None else bias.astype(np.float64) * scale)
                tensors[layer.name] = (emit_conv(layer.name, w, nb, attrs, x), shape)
            else:
                x, shape = x_of(layer)
                bshape = (-1, 1, 1) if len(shape) == 3 else (-1,)
                y = b.node("Mul", [x, b.const(layer.name + "_scale", scale.astype(np.float32).reshape(bshape))],
                           layer.name + "_mul")
                y = b.node("Add", [y, b.const(layer.name + "_shift", shift.astype(np.float32).reshape(bshape))],
                           layer.name)
                tensors[layer.name] = (y, shape)
            continue

        if cls == "Activation":
            x, shape = x_of(layer)
            tensors[layer.name] = (_activation(b, layer, c["activation"], x, len(shape)), shape)
            continue

        if cls == "Add":
            xs = [x_of(layer, i) for i in range(len(layer.inputs))]
            if len({s for _, s in xs}) != 1:
                raise UnsupportedModelError(f"layer {layer.name!r}: Add of shapes {[s for _, s in xs]}")
            y = xs[0][0]
            for j, (t, _) in enumerate(xs[1:]):
                y = b.node("Add", [y, t], layer.name if j == len(xs) - 2 else f"{layer.name}_part")
            tensors[layer.name] = (y, xs[0][1])
            continue

        if cls == "MaxPooling2D":
            _check_common(layer)
            x, (ch, h, w_) = x_of(layer)
            k = tuple(c["pool_size"])
            s = tuple(c.get("strides") or k)
            pads, (oh, ow) = _pads(layer, (h, w_), k, s)
            # ONNX MaxPool ignores padded cells, as TensorFlow's SAME max pool does
            y = b.node("MaxPool", [x], layer.name, kernel_shape=list(k), strides=list(s), pads=pads)
            tensors[layer.name] = (y, (ch, oh, ow))
            continue

        if cls == "GlobalAveragePooling2D":
            _check_common(layer)
            if c.get("keepdims", False):
                raise UnsupportedModelError(f"layer {layer.name!r}: keepdims=True")
            x, (ch, _, _) = x_of(layer)
            y = b.node("GlobalAveragePool", [x], layer.name + "_pool")
            y = b.node("Flatten", [y], layer.name, axis=1)
            tensors[layer.name] = (y, (ch,))
            continue

        raise UnsupportedModelError(f"layer {layer.name!r}: unsupported layer type {cls!r}")

    if graph_input is None:
        raise UnsupportedModelError("model has no InputLayer")
    out_layer = by_name[outputs[0]]
    x, shape = x_of(_Layer("output", "", {}, [out_layer.name]))
    if len(shape) != 1:
        raise UnsupportedModelError(f"output {out_layer.name!r} has shape {shape}, expected a vector per image")
    b.nodes.append(helper.make_node("Identity", [x], [OUTPUT_NAME], name="output"))
    graph = helper.make_graph(
        b.nodes,
        "keras_h5_" + h5_path.stem,
        [graph_input],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", shape[0]])],
        initializer=b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="mobidem.convert.keras_h5")
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"source": h5_path.name, "keras_version": keras_version,
                                   "labels": ",".join(LABELS) if shape[0] == len(LABELS) else ""})
    onnx.checker.check_model(model, full_check=True)
    return model


def _activation(b: _Builder, layer: _Layer, act: str, x: str, rank: int = 3) -> str:
    if act == "linear":
        return x
    if act == "relu":
        return b.node("Relu", [x], layer.name)
    if act == "softmax":
        if rank != 1:
            raise UnsupportedModelError(f"layer {layer.name!r}: softmax on a spatial tensor")
        return b.node("Softmax", [x], layer.name, axis=1)
    raise UnsupportedModelError(f"layer {layer.name!r}: unsupported activation {act!r}")
