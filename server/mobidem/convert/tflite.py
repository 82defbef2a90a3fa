"""Convert TFLite flatbuffers (float / fp16-weight models) to ONNX.

Plain Python: the flatbuffer is read with the generated schema from the PyPI
package ``tflite`` (pure Python, needs only ``flatbuffers``); the ONNX graph
is built with ``onnx.helper`` and numpy.

Layout strategy: TFLite is NHWC. Every rank-4 activation is kept NCHW inside
the ONNX graph (one Transpose after each 4-D graph input); it is transposed
back to NHWC only where an op needs NHWC semantics (RESHAPE, graph outputs,
ops without a layout-aware mapping). Constants are folded at conversion time
(DEQUANTIZE of fp16 / int8 weights) and laid out for the op that uses them.

Public API: :func:`convert`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

try:  # generated TFLite flatbuffer schema (PyPI: tflite)
    import tflite as _tfl
    from tflite.BuiltinOperator import BuiltinOperator as _BuiltinOperator
    from tflite.TensorType import TensorType as _TensorType
except ImportError as _e:  # pragma: no cover - import guard
    raise ImportError(
        "mobidem.convert.tflite needs the pure-Python flatbuffer schema package "
        "'tflite' (pip install --no-deps tflite; it needs only 'flatbuffers')"
    ) from _e

__all__ = ["convert", "UnsupportedOpError", "OPSET", "IR_VERSION"]

OPSET = 17
IR_VERSION = 8

_OP_NAMES = {v: k for k, v in vars(_BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k for k, v in vars(_TensorType).items() if not k.startswith("_")}
_NP_TYPES = {
    _TensorType.FLOAT32: np.float32,
    _TensorType.FLOAT16: np.float16,
    _TensorType.INT32: np.int32,
    _TensorType.UINT8: np.uint8,
    _TensorType.INT64: np.int64,
    _TensorType.INT8: np.int8,
    _TensorType.INT16: np.int16,
    _TensorType.BOOL: np.bool_,
}
_NHWC_TO_NCHW = (0, 3, 1, 2)
_NCHW_TO_NHWC = (0, 2, 3, 1)

# ActivationFunctionType
_ACT_NONE, _ACT_RELU, _ACT_RELU_N1_TO_1, _ACT_RELU6, _ACT_TANH = 0, 1, 2, 3, 4
# Padding
_PAD_SAME, _PAD_VALID = 0, 1


class UnsupportedOpError(NotImplementedError):
    """Raised for a TFLite operator (or operator variant) the converter lacks."""


def _options(op, cls):
    tab = op.BuiltinOptions()
    o = cls()
    if tab is not None:
        o.Init(tab.Bytes, tab.Pos)
    return o


def _same_pads(in_size, k, s, d):
    """TF 'SAME' padding (before, after) for one spatial dim."""
    eff = (k - 1) * d + 1
    out = -(-in_size // s)
    total = max((out - 1) * s + eff - in_size, 0)
    return total // 2, total - total // 2


class _Converter:
    def __init__(self, data: bytes, batch_dynamic: bool, name: str):
        self.model = _tfl.Model.GetRootAsModel(data, 0)
        if self.model.SubgraphsLength() != 1:
            raise UnsupportedOpError(
                f"only single-subgraph TFLite models are supported "
                f"(this one has {self.model.SubgraphsLength()})"
            )
        self.g = self.model.Subgraphs(0)
        self.batch_dynamic = batch_dynamic
        self.name = name
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.consts: dict[int, np.ndarray] = {}  # tflite tensor index -> folded constant
        # tflite tensor index -> {layout: onnx value name}; layout in {"nhwc", "nchw"}
        # ("nhwc" also stands for "native" for ranks other than 4)
        self.vals: dict[int, dict[str, str]] = {}
        # tflite tensors whose ONNX value keeps a leading batch axis that the TFLite graph dropped
        # (a batch-1 STRIDED_SLICE that shrinks axis 0; batch_dynamic only): allowed only as graph outputs
        self.kept_batch: set[int] = set()
        self._reading_output = False
        self._uid = 0
        self._init_cache: dict[tuple, str] = {}
        self._load_constants()

    # ---------------------------------------------------------------- helpers
    def _fresh(self, base: str) -> str:
        self._uid += 1
        return f"{base}__{self._uid}"

    def tensor(self, i):
        return self.g.Tensors(i)

    def tname(self, i) -> str:
        return self.tensor(i).Name().decode("utf-8", "replace")

    def shape(self, i) -> list[int]:
        t = self.tensor(i)
        return [int(v) for v in t.ShapeAsNumpy()] if t.ShapeLength() else []

    def _load_constants(self):
        for i in range(self.g.TensorsLength()):
            t = self.g.Tensors(i)
            buf = self.model.Buffers(t.Buffer())
            if buf is None or buf.DataLength() == 0:
                continue
            if t.Sparsity() is not None:
                continue  # sparse constant: only DENSIFY may read it (unsupported)
            dtype = _NP_TYPES.get(t.Type())
            if dtype is None:
                continue
            raw = buf.DataAsNumpy().tobytes()
            self.consts[i] = np.frombuffer(raw, dtype=dtype).reshape(self.shape(i)).copy()

    def init(self, arr: np.ndarray, base: str) -> str:
        arr = np.ascontiguousarray(arr)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key in self._init_cache:
            return self._init_cache[key]
        name = self._fresh(base)
        self.inits.append(numpy_helper.from_array(arr, name))
        self._init_cache[key] = name
        return name

    def node(self, op_type, inputs, base, **attrs) -> str:
        out = self._fresh(base)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, i) -> np.ndarray:
        if i not in self.consts:
            raise UnsupportedOpError(
                f"tensor {self.tname(i)!r} must be a constant for this conversion"
            )
        return self.consts[i]

    def is_const(self, i) -> bool:
        return i in self.consts

    def rank(self, i) -> int:
        return len(self.shape(i))

    def get(self, i, layout: str = "nhwc") -> str:
        """ONNX value name of tflite tensor i in the requested layout."""
        if layout == "nchw" and self.rank(i) != 4:
            layout = "nhwc"
        if i in self.consts:
            arr = self.consts[i]
            if arr.dtype == np.float16:
                arr = arr.astype(np.float32)
            if layout == "nchw":
                arr = arr.transpose(_NHWC_TO_NCHW)
            return self.init(arr, self.tname(i) + "_" + layout)
        if i in self.kept_batch and not self._reading_output:
            raise UnsupportedOpError(
                f"tensor {self.tname(i)!r} drops the batch axis (STRIDED_SLICE shrink) and is used "
                f"inside the graph; convert with batch_dynamic=False")
        have = self.vals.get(i)
        if not have:
            raise RuntimeError(f"tensor {self.tname(i)!r} used before it is produced")
        if layout in have:
            return have[layout]
        src = next(iter(have.values()))
        perm = _NHWC_TO_NCHW if layout == "nchw" else _NCHW_TO_NHWC
        out = self.node("Transpose", [src], self.tname(i) + "_" + layout, perm=list(perm))
        have[layout] = out
        return out

    def layout_of(self, i) -> str:
        have = self.vals.get(i, {})
        if self.rank(i) == 4 and "nchw" in have:
            return "nchw"
        return "nhwc"

    def set(self, i, name: str, layout: str):
        if layout == "nchw" and self.rank(i) != 4:
            layout = "nhwc"
        self.vals[i] = {layout: name}

    def activation(self, x: str, act: int, base: str) -> str:
        if act == _ACT_NONE:
            return x
        if act == _ACT_RELU:
            return self.node("Relu", [x], base + "_relu")
        if act == _ACT_RELU6:
            return self.node("Clip", [x, self.init(np.float32(0), "zero"),
                                      self.init(np.float32(6), "six")], base + "_relu6")
        if act == _ACT_RELU_N1_TO_1:
            return self.node("Clip", [x, self.init(np.float32(-1), "minus_one"),
                                      self.init(np.float32(1), "one")], base + "_relu1")
        if act == _ACT_TANH:
            return self.node("Tanh", [x], base + "_tanh")
        raise UnsupportedOpError(f"fused activation function {act} is not supported")

    def const_nchw_broadcast(self, arr: np.ndarray) -> np.ndarray:
        """Lay out an NHWC-broadcastable constant for an NCHW rank-4 operand."""
        arr = arr.astype(np.float32) if arr.dtype == np.float16 else arr
        if arr.ndim > 4:
            raise UnsupportedOpError("broadcast constant of rank > 4")
        arr = arr.reshape((1,) * (4 - arr.ndim) + arr.shape)
        return arr.transpose(_NHWC_TO_NCHW)

    # ------------------------------------------------------------------- run
    def run(self) -> onnx.ModelProto:
        g = self.g
        graph_inputs, graph_outputs = [], []
        for k in range(g.InputsLength()):
            i = g.Inputs(k)
            t = self.tensor(i)
            if t.Type() != _TensorType.FLOAT32:
                raise UnsupportedOpError(
                    f"graph input {self.tname(i)!r} has type {_TYPE_NAMES.get(t.Type())}; "
                    f"only float32 inputs are supported"
                )
            shp = self._io_shape(i)
            name = self.tname(i)
            graph_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shp))
            self.vals[i] = {"nhwc": name}

        for k in range(g.OperatorsLength()):
            self._convert_op(g.Operators(k), k)

        for k in range(g.OutputsLength()):
            i = g.Outputs(k)
            name = self.tname(i)
            self._reading_output = True
            src = self.get(i, "nhwc")
            self._reading_output = False
            # Graph outputs keep the tflite names: rename via Identity.
            self.nodes.append(helper.make_node("Identity", [src], [name], name=name + "_out"))
            t = self.tensor(i)
            if t.Type() not in (_TensorType.FLOAT32, _TensorType.FLOAT16):
                raise UnsupportedOpError(f"graph output {name!r} is not float")
            graph_outputs.append(
                helper.make_tensor_value_info(name, TensorProto.FLOAT, self._io_shape(i)))

        graph = helper.make_graph(self.nodes, self.name, graph_inputs, graph_outputs,
                                  initializer=self.inits)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="mobidem.convert.tflite",
        )
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        return model

    def _io_shape(self, i):
        shp = self.shape(i)
        if i in self.kept_batch:
            return ["N"] + shp
        if self.batch_dynamic and shp and shp[0] == 1:
            return ["N"] + shp[1:]
        return shp

    # ----------------------------------------------------------- op dispatch
    def _convert_op(self, op, k):
        oc = self.model.OperatorCodes(op.OpcodeIndex())
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        opname = _OP_NAMES.get(code, f"#{code}")
        if code == _BuiltinOperator.CUSTOM:
            opname = "CUSTOM:" + (oc.CustomCode() or b"?").decode()
        fn = getattr(self, "_op_" + opname, None)
        ins = [int(v) for v in op.InputsAsNumpy()] if op.InputsLength() else []
        outs = [int(v) for v in op.OutputsAsNumpy()] if op.OutputsLength() else []
        if fn is None:
            raise UnsupportedOpError(
                f"TFLite op {opname} (operator #{k}, output "
                f"{self.tname(outs[0]) if outs else '?'!r}) is not supported by "
                f"mobidem.convert.tflite"
            )
        # Everything the graph computes must be float (weights may be fp16/int8
        # behind DEQUANTIZE, which is folded).
        if opname != "DEQUANTIZE":
            for i in outs:
                if self.tensor(i).Type() != _TensorType.FLOAT32:
                    raise UnsupportedOpError(
                        f"TFLite op {opname} produces {_TYPE_NAMES.get(self.tensor(i).Type())} "
                        f"tensor {self.tname(i)!r}; quantized graphs are not supported"
                    )
        fn(op, ins, outs)

    # -------------------------------------------------------------- the ops
    def _op_DEQUANTIZE(self, op, ins, outs):
        src, dst = ins[0], outs[0]
        t = self.tensor(src)
        if src in self.consts:
            arr = self.consts[src]
            if arr.dtype == np.float16:
                self.consts[dst] = arr.astype(np.float32)
                return
            q = t.Quantization()
            if q is None or q.ScaleLength() == 0:
                raise UnsupportedOpError(f"DEQUANTIZE of {self.tname(src)!r} without scales")
            scale = q.ScaleAsNumpy().astype(np.float32)
            zp = q.ZeroPointAsNumpy().astype(np.float32) if q.ZeroPointLength() else np.float32(0)
            if scale.size > 1:
                bshape = [1] * arr.ndim
                bshape[q.QuantizedDimension()] = -1
                scale, zp = scale.reshape(bshape), np.reshape(zp, bshape) if np.ndim(zp) else zp
            self.consts[dst] = ((arr.astype(np.float32) - zp) * scale).astype(np.float32)
            return
        if t.Type() == _TensorType.FLOAT16:
            self.set(dst, self.node("Cast", [self.get(src, self.layout_of(src))],
                                    self.tname(dst), to=TensorProto.FLOAT), self.layout_of(src))
            return
        raise UnsupportedOpError(
            f"DEQUANTIZE of non-constant {_TYPE_NAMES.get(t.Type())} tensor {self.tname(src)!r}")

    def _conv_weights_bias(self, ins, depthwise):
        w = self.const(ins[1]).astype(np.float32)  # [O,H,W,I] or [1,H,W,C*mult]
        if depthwise:
            w = w.transpose(3, 0, 1, 2)  # [C*mult, 1, H, W]
        else:
            w = w.transpose(0, 3, 1, 2)  # OIHW
        names = [self.init(w, self.tname(ins[1]) + "_oihw")]
        if len(ins) > 2 and ins[2] >= 0:
            names.append(self.init(self.const(ins[2]).astype(np.float32).reshape(-1),
                                   self.tname(ins[2])))
        return w, names

    def _spatial(self, in_shape, kh, kw, sh, sw, dh, dw, padding):
        if padding == _PAD_VALID:
            return [0, 0, 0, 0]
        if padding != _PAD_SAME:
            raise UnsupportedOpError(f"padding mode {padding}")
        ph = _same_pads(in_shape[1], kh, sh, dh)
        pw = _same_pads(in_shape[2], kw, sw, dw)
        return [ph[0], pw[0], ph[1], pw[1]]

    def _conv(self, op, ins, outs, depthwise):
        if depthwise:
            o = _options(op, _tfl.DepthwiseConv2DOptions)
        else:
            o = _options(op, _tfl.Conv2DOptions)
        in_shape = self.shape(ins[0])
        w, wnames = self._conv_weights_bias(ins, depthwise)
        kh, kw = w.shape[2], w.shape[3]
        sh, sw = o.StrideH(), o.StrideW()
        dh, dw = max(o.DilationHFactor(), 1), max(o.DilationWFactor(), 1)
        attrs = dict(
            kernel_shape=[kh, kw], strides=[sh, sw], dilations=[dh, dw],
            pads=self._spatial(in_shape, kh, kw, sh, sw, dh, dw, o.Padding()),
        )
        if depthwise:
            attrs["group"] = in_shape[3]
        elif w.shape[1] != in_shape[3]:
            attrs["group"] = in_shape[3] // w.shape[1]
        base = self.tname(outs[0])
        y = self.node("Conv", [self.get(ins[0], "nchw")] + wnames, base, **attrs)
        y = self.activation(y, o.FusedActivationFunction(), base)
        self.set(outs[0], y, "nchw")

    def _op_CONV_2D(self, op, ins, outs):
        self._conv(op, ins, outs, depthwise=False)

    def _op_DEPTHWISE_CONV_2D(self, op, ins, outs):
        self._conv(op, ins, outs, depthwise=True)

    def _pool(self, op, ins, outs, onnx_op):
        o = _options(op, _tfl.Pool2DOptions)
        kh, kw, sh, sw = o.FilterHeight(), o.FilterWidth(), o.StrideH(), o.StrideW()
        attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw],
                     pads=self._spatial(self.shape(ins[0]), kh, kw, sh, sw, 1, 1, o.Padding()))
        if onnx_op == "AveragePool":
            attrs["count_include_pad"] = 0  # TF averages over valid cells only
        base = self.tname(outs[0])
        y = self.node(onnx_op, [self.get(ins[0], "nchw")], base, **attrs)
        self.set(outs[0], self.activation(y, o.FusedActivationFunction(), base), "nchw")

    def _op_MAX_POOL_2D(self, op, ins, outs):
        self._pool(op, ins, outs, "MaxPool")

    def _op_AVERAGE_POOL_2D(self, op, ins, outs):
        self._pool(op, ins, outs, "AveragePool")

    def _binary(self, op, ins, outs, onnx_op, opt_cls):
        a, b = ins
        out_rank = self.rank(outs[0])
        # Work in NCHW when the output is rank 4 and every non-constant operand
        # of rank 4 is already NCHW; else in native (NHWC) layout.
        layout = "nhwc"
        if out_rank == 4 and all(
            self.is_const(x) or (self.rank(x) == 4 and self.layout_of(x) == "nchw")
            for x in (a, b)
        ):
            layout = "nchw"
        names = []
        for x in (a, b):
            if self.is_const(x) and layout == "nchw":
                names.append(self.init(self.const_nchw_broadcast(self.const(x)),
                                       self.tname(x) + "_nchw"))
            elif self.is_const(x):
                arr = self.const(x)
                names.append(self.init(arr.astype(np.float32) if arr.dtype == np.float16 else arr,
                                       self.tname(x)))
            else:  # numpy-style broadcast works in the native layout
                names.append(self.get(x, layout))
        base = self.tname(outs[0])
        y = self.node(onnx_op, names, base)
        act = _options(op, opt_cls).FusedActivationFunction() if opt_cls else _ACT_NONE
        self.set(outs[0], self.activation(y, act, base), layout)

    def _op_ADD(self, op, ins, outs):
        self._binary(op, ins, outs, "Add", _tfl.AddOptions)

    def _op_SUB(self, op, ins, outs):
        self._binary(op, ins, outs, "Sub", _tfl.SubOptions)

    def _op_MUL(self, op, ins, outs):
        self._binary(op, ins, outs, "Mul", _tfl.MulOptions)

    def _op_DIV(self, op, ins, outs):
        self._binary(op, ins, outs, "Div", _tfl.DivOptions)

    def _op_MAXIMUM(self, op, ins, outs):
        self._binary(op, ins, outs, "Max", None)

    def _op_MINIMUM(self, op, ins, outs):
        self._binary(op, ins, outs, "Min", None)

    def _unary(self, ins, outs, onnx_op, **attrs):
        layout = self.layout_of(ins[0])
        y = self.node(onnx_op, [self.get(ins[0], layout)], self.tname(outs[0]), **attrs)
        self.set(outs[0], y, layout)

    def _op_RELU(self, op, ins, outs):
        self._unary(ins, outs, "Relu")

    def _op_RELU6(self, op, ins, outs):
        layout = self.layout_of(ins[0])
        y = self.activation(self.get(ins[0], layout), _ACT_RELU6, self.tname(outs[0]))
        self.set(outs[0], y, layout)

    def _op_RELU_N1_TO_1(self, op, ins, outs):
        layout = self.layout_of(ins[0])
        y = self.activation(self.get(ins[0], layout), _ACT_RELU_N1_TO_1, self.tname(outs[0]))
        self.set(outs[0], y, layout)

    def _op_LOGISTIC(self, op, ins, outs):
        self._unary(ins, outs, "Sigmoid")

    def _op_TANH(self, op, ins, outs):
        self._unary(ins, outs, "Tanh")

    def _op_HARD_SWISH(self, op, ins, outs):
        self._unary(ins, outs, "HardSwish")

    def _op_LEAKY_RELU(self, op, ins, outs):
        alpha = _options(op, _tfl.LeakyReluOptions).Alpha()
        self._unary(ins, outs, "LeakyRelu", alpha=float(alpha))

    def _op_PRELU(self, op, ins, outs):
        x, alpha = ins
        layout = self.layout_of(x)
        if self.is_const(alpha):
            arr = self.const(alpha).astype(np.float32)
            if layout == "nchw":
                arr = self.const_nchw_broadcast(arr)[0]  # [C,1,1]-style, broadcast from the right
            a_name = self.init(arr, self.tname(alpha))
        else:
            a_name = self.get(alpha, layout)
        y = self.node("PRelu", [self.get(x, layout), a_name], self.tname(outs[0]))
        self.set(outs[0], y, layout)

    def _op_PAD(self, op, ins, outs):
        pads = self.const(ins[1]).astype(np.int64)  # [rank, 2]
        x = ins[0]
        layout = self.layout_of(x)
        if layout == "nchw":
            pads = pads[list(_NHWC_TO_NCHW)]
        onnx_pads = np.concatenate([pads[:, 0], pads[:, 1]])
        inputs = [self.get(x, layout), self.init(onnx_pads, "pads")]
        if len(ins) > 2 and ins[2] >= 0:  # PADV2 constant value
            inputs.append(self.init(self.const(ins[2]).astype(np.float32).reshape(()), "pad_value"))
        self.set(outs[0], self.node("Pad", inputs, self.tname(outs[0]), mode="constant"), layout)

    _op_PADV2 = _op_PAD

    def _op_RESHAPE(self, op, ins, outs):
        shape = list(self.shape(outs[0]))
        in_shape = self.shape(ins[0])
        if self.batch_dynamic and shape and in_shape and shape[0] == 1 and in_shape[0] == 1:
            shape[0] = -1  # the batch; every other dim is static
        y = self.node("Reshape", [self.get(ins[0], "nhwc"),
                                  self.init(np.asarray(shape, np.int64), "shape")],
                      self.tname(outs[0]))
        self.set(outs[0], y, "nhwc")

    _op_SQUEEZE = _op_RESHAPE
    _op_EXPAND_DIMS = _op_RESHAPE

    def _op_CONCATENATION(self, op, ins, outs):
        o = _options(op, _tfl.ConcatenationOptions)
        rank = self.rank(outs[0])
        axis = o.Axis() % rank
        layout = "nhwc"
        if rank == 4 and all(self.is_const(x) or self.layout_of(x) == "nchw" for x in ins):
            layout = "nchw"
            axis = _NHWC_TO_NCHW.index(axis)
        names = [self.get(x, layout) for x in ins]
        batch_of = next((self.get(x, layout) for x in ins if not self.is_const(x)), None)
        if self.batch_dynamic and batch_of is not None and axis != 0:
            # a batch-1 constant (e.g. a learned token) joined to batched activations: repeat it
            # along the batch, as the batch-1 TFLite graph implies for each sample
            names = [self._batch_expand(n, self.shape(x), layout, batch_of)
                     if self.is_const(x) and self.shape(x)[:1] == [1] else n for n, x in zip(names, ins)]
        y = self.node("Concat", names, self.tname(outs[0]), axis=axis)
        base = self.tname(outs[0])
        self.set(outs[0], self.activation(y, o.FusedActivationFunction(), base), layout)

    def _resize(self, op, ins, outs, mode, opt_cls):
        o = _options(op, opt_cls)
        size = self.const(ins[1]).astype(np.int64).reshape(-1)  # [new_h, new_w]
        x = self.get(ins[0], "nchw")
        shp = self.node("Shape", [x], "shape")
        nc = self.node("Slice", [shp, self.init(np.array([0], np.int64), "i0"),
                                 self.init(np.array([2], np.int64), "i2")], "nc")
        sizes = self.node("Concat", [nc, self.init(size, "hw")], "sizes", axis=0)
        attrs = dict(mode=mode)
        if o.AlignCorners():
            attrs["coordinate_transformation_mode"] = "align_corners"
        elif o.HalfPixelCenters():
            attrs["coordinate_transformation_mode"] = (
                "half_pixel" if mode == "linear" else "tf_half_pixel_for_nn")
        else:
            attrs["coordinate_transformation_mode"] = "asymmetric"
        if mode == "nearest":
            attrs["nearest_mode"] = "round_prefer_ceil" if o.AlignCorners() else "floor"
        y = self.node("Resize", [x, "", "", sizes], self.tname(outs[0]), **attrs)
        self.set(outs[0], y, "nchw")

    def _op_RESIZE_BILINEAR(self, op, ins, outs):
        self._resize(op, ins, outs, "linear", _tfl.ResizeBilinearOptions)

    def _op_RESIZE_NEAREST_NEIGHBOR(self, op, ins, outs):
        self._resize(op, ins, outs, "nearest", _tfl.ResizeNearestNeighborOptions)

    def _op_MEAN(self, op, ins, outs):
        axes = [int(a) % self.rank(ins[0]) for a in self.const(ins[1]).reshape(-1)]
        keep = int(_options(op, _tfl.ReducerOptions).KeepDims())
        layout = self.layout_of(ins[0])
        if layout == "nchw" and keep:
            axes = [_NHWC_TO_NCHW.index(a) for a in axes]
        else:
            layout = "nhwc"
        y = self.node("ReduceMean", [self.get(ins[0], layout)], self.tname(outs[0]),
                      axes=sorted(axes), keepdims=keep)
        self.set(outs[0], y, layout if keep else "nhwc")

    def _op_SOFTMAX(self, op, ins, outs):
        beta = _options(op, _tfl.SoftmaxOptions).Beta()
        x = self.get(ins[0], "nhwc")
        if beta != 1.0:
            x = self.node("Mul", [x, self.init(np.float32(beta), "beta")], "softmax_beta")
        self.set(outs[0], self.node("Softmax", [x], self.tname(outs[0]), axis=-1), "nhwc")

    def _op_FULLY_CONNECTED(self, op, ins, outs):
        o = _options(op, _tfl.FullyConnectedOptions)
        w = self.const(ins[1]).astype(np.float32)  # [out, in]
        x = self.get(ins[0], "nhwc")
        if not o.KeepNumDims():
            x = self.node("Reshape", [x, self.init(np.array([-1, w.shape[1]], np.int64), "fc_in")],
                          "fc_flat")
        y = self.node("MatMul", [x, self.init(np.ascontiguousarray(w.T), self.tname(ins[1]) + "_t")],
                      self.tname(outs[0]) + "_mm")
        if len(ins) > 2 and ins[2] >= 0:
            y = self.node("Add", [y, self.init(self.const(ins[2]).astype(np.float32),
                                               self.tname(ins[2]))], self.tname(outs[0]))
        self.set(outs[0], self.activation(y, o.FusedActivationFunction(), self.tname(outs[0])),
                 "nhwc")


    def _batch_expand(self, const_name: str, shape: list[int], layout: str, like: str) -> str:
        """Expand a constant of leading dim 1 to the batch size of the value ``like``."""
        shape = [shape[j] for j in _NHWC_TO_NCHW] if layout == "nchw" and len(shape) == 4 else list(shape)
        batch = self.node("Slice", [self.node("Shape", [like], "shape"), self.init(np.array([0], np.int64), "i0"),
                                    self.init(np.array([1], np.int64), "i1")], "batch")
        target = self.node("Concat", [batch, self.init(np.asarray(shape[1:], np.int64), "dims")], "expand_to",
                           axis=0)
        return self.node("Expand", [const_name, target], "batch_expand")

    def _op_SUM(self, op, ins, outs):
        axes = sorted(int(a) % self.rank(ins[0]) for a in self.const(ins[1]).reshape(-1))
        keep = int(_options(op, _tfl.ReducerOptions).KeepDims())
        layout = self.layout_of(ins[0])
        if layout == "nchw" and keep:
            axes = sorted(_NHWC_TO_NCHW.index(a) for a in axes)
        else:
            layout = "nhwc"
        y = self.node("ReduceSum", [self.get(ins[0], layout), self.init(np.asarray(axes, np.int64), "axes")],
                      self.tname(outs[0]), keepdims=keep)
        self.set(outs[0], y, layout if keep else "nhwc")

    def _op_SQRT(self, op, ins, outs):
        self._unary(ins, outs, "Sqrt")

    def _op_RSQRT(self, op, ins, outs):
        layout = self.layout_of(ins[0])
        root = self.node("Sqrt", [self.get(ins[0], layout)], self.tname(outs[0]) + "_sqrt")
        self.set(outs[0], self.node("Reciprocal", [root], self.tname(outs[0])), layout)

    def _op_NEG(self, op, ins, outs):
        self._unary(ins, outs, "Neg")

    def _op_SQUARED_DIFFERENCE(self, op, ins, outs):
        self._binary(op, ins, outs, "Sub", None)
        layout = self.layout_of(outs[0])
        d = self.vals[outs[0]][layout]
        self.set(outs[0], self.node("Mul", [d, d], self.tname(outs[0]) + "_sq"), layout)

    def _op_TRANSPOSE(self, op, ins, outs):
        perm = [int(a) for a in self.const(ins[1]).reshape(-1)]
        x = ins[0]
        if self.layout_of(x) == "nchw":  # compose with the NCHW -> NHWC transpose
            src, perm = self.get(x, "nchw"), [_NCHW_TO_NHWC[a] for a in perm]
        else:
            src = self.get(x, "nhwc")
        if self.batch_dynamic and perm[:1] != [0] and self.shape(x)[:1] == [1]:
            raise UnsupportedOpError(f"TRANSPOSE {self.tname(outs[0])!r} moves the batch axis")
        self.set(outs[0], self.node("Transpose", [src], self.tname(outs[0]), perm=perm), "nhwc")

    def _op_STRIDED_SLICE(self, op, ins, outs):
        o = _options(op, _tfl.StridedSliceOptions)
        if o.EllipsisMask() or o.NewAxisMask():
            raise UnsupportedOpError(f"STRIDED_SLICE {self.tname(outs[0])!r} with ellipsis or new-axis masks")
        in_shape = self.shape(ins[0])
        begin, end, strides = (self.const(i).astype(np.int64).reshape(-1) for i in ins[1:4])
        shrink = o.ShrinkAxisMask()
        starts, ends, axes, steps = [], [], [], []
        keep_batch = False
        for a, dim in enumerate(in_shape):
            b = 0 if o.BeginMask() >> a & 1 else int(begin[a])
            e = dim if o.EndMask() >> a & 1 else int(end[a])
            step = int(strides[a])
            if shrink >> a & 1:
                e, step = b + 1 if b != -1 else dim, 1
            b, e = (v + dim if v < 0 else v for v in (b, e))
            if a == 0 and self.batch_dynamic and dim == 1:
                if (b, e, step) != (0, 1, 1):
                    raise UnsupportedOpError(f"STRIDED_SLICE {self.tname(outs[0])!r} slices the batch axis")
                keep_batch = bool(shrink & 1)  # the whole batch stays; its axis is not dropped
                continue
            if (b, min(e, dim), step) != (0, dim, 1):
                starts.append(b), ends.append(e), axes.append(a), steps.append(step)
        y = self.get(ins[0], "nhwc")
        base = self.tname(outs[0])
        if axes:
            y = self.node("Slice", [y, self.init(np.asarray(starts, np.int64), "starts"),
                                    self.init(np.asarray(ends, np.int64), "ends"),
                                    self.init(np.asarray(axes, np.int64), "axes"),
                                    self.init(np.asarray(steps, np.int64), "steps")], base + "_slice")
        if shrink:
            shape = list(self.shape(outs[0]))
            if keep_batch:
                shape = [-1] + shape
            elif self.batch_dynamic and shape[:1] == [1] and in_shape[:1] == [1]:
                shape[0] = -1
            y = self.node("Reshape", [y, self.init(np.asarray(shape, np.int64), "shape")], base)
        else:
            y = self.node("Identity", [y], base)
        self.set(outs[0], y, "nhwc")
        if keep_batch:
            self.kept_batch.add(outs[0])


def convert(tflite_path, *, batch_dynamic: bool = True) -> onnx.ModelProto:
    """Convert a float TFLite model to an ONNX model (opset 17, IR version 8).

    Inputs and outputs keep the TFLite names, NHWC layout, dtype (float32) and
    value range; with ``batch_dynamic`` a leading batch dimension of 1 on the
    graph inputs and outputs becomes the symbolic dimension ``"N"``.

    Raises :class:`UnsupportedOpError` (a ``NotImplementedError``) naming the
    first TFLite operator the converter cannot map.
    """
    path = Path(tflite_path)
    return _Converter(path.read_bytes(), batch_dynamic, path.stem).run()
