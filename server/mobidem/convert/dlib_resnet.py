"""Convert dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) to ONNX.

Pure Python: the dlib serialisation format is parsed here with numpy, and the graph is written with
``onnx.helper``.  dlib itself is not needed at conversion time.

The network is ``anet_type`` from dlib's ``examples/dnn_face_recognition_ex.cpp``::

    loss_metric<fc_no_bias<128, avg_pool_everything<
        alevel0<alevel1<alevel2<alevel3<alevel4<
        max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>>>>>

    ares<N>      = relu<add_prev1<block<N,1,tag1<SUBNET>>>>
    ares_down<N> = relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,2,tag1<SUBNET>>>>>>>>
    block<N,s>   = affine<con<N,3,3,1,1,relu<affine<con<N,3,3,s,s,SUBNET>>>>>

The file does not record which tag a skip/add_prev refers to (tag and skip layers serialise only a
version number), so :func:`parse` checks the layer sequence against the template above and fills in the
tag ids itself.  Any other layout raises :class:`ValueError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["DlibInput", "DlibLayer", "DlibNet", "parse", "convert", "OPSET", "IR_VERSION"]

OPSET = 17
IR_VERSION = 8  # loadable by the onnxruntime in NVIDIA's Triton containers

# --------------------------------------------------------------------------------------------------
# Parsed representation
# --------------------------------------------------------------------------------------------------


@dataclass
class DlibInput:
    """``input_rgb_image_sized``: the network computes ``(rgb - mean_rgb) / 256`` on an nr x nc image."""

    mean_rgb: tuple[float, float, float]
    nr: int
    nc: int


@dataclass
class DlibLayer:
    """One layer of the network, in bottom-up (input → output) order.

    ``kind`` and its contents:

    * ``"con"``: ``weights["weight"]`` float32 [out, in, kh, kw] (OIHW, cross-correlation as in PyTorch),
      ``weights["bias"]`` float32 [out]; ``attrs``: ``num_filters``, ``kernel`` (kh, kw),
      ``stride`` (sy, sx), ``padding`` (py, px) (symmetric zero padding).
    * ``"affine"``: ``weights["gamma"]``, ``weights["beta"]`` float32 [C]; y = gamma * x + beta per channel
      (dlib's inference-time batch norm).  ``attrs["mode"]`` is dlib's layer_mode (0 = per channel).
    * ``"relu"``: no weights.
    * ``"max_pool"`` / ``"avg_pool"``: ``attrs``: ``window`` (nr, nc), ``stride`` (sy, sx), ``padding``
      (py, px).  ``avg_pool`` with window (0, 0) is dlib's avg_pool_everything (global average).
    * ``"fc"``: ``weights["weight"]`` float32 [in, out], y = x @ weight (flattened NCHW input);
      ``weights["bias"]`` float32 [out] only when ``attrs["has_bias"]``.
    * ``"tag"``: ``attrs["id"]``; remembers the current tensor.
    * ``"skip"``: ``attrs["id"]``; the current tensor becomes the one remembered by tag ``id``.
    * ``"add_prev"``: ``attrs["id"]``; current + tensor of tag ``id``.  dlib zero-pads the smaller
      operand at the END of the channel, row and column dimensions (output = elementwise max shape).

    Shapes of activations are not stored; they follow from dlib's rules
    (conv/pool output = 1 + (in + 2*pad - window) // stride).
    """

    kind: str
    attrs: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class DlibNet:
    """Result of :func:`parse`: input layer, the layers bottom-up, and the loss_metric settings."""

    input: DlibInput
    layers: list[DlibLayer]
    loss: dict[str, float]  # {"margin": ..., "distance_threshold": ...}


# --------------------------------------------------------------------------------------------------
# dlib/serialize.h reader
# --------------------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, data: bytes, name: str):
        self.b = data
        self.pos = 0
        self.name = name

    def fail(self, msg: str) -> ValueError:
        return ValueError(f"{self.name}: {msg} (at byte offset {self.pos} of {len(self.b)})")

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.b):
            raise self.fail(f"unexpected end of file reading {n} bytes")
        out = self.b[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        ctrl = self._take(1)[0]
        n = ctrl & 0x0F
        if ctrl & 0x70 or n > 8:
            raise self.fail(f"bad integer control byte 0x{ctrl:02x}")
        v = int.from_bytes(self._take(n), "little")
        return -v if ctrl & 0x80 else v

    def uint(self, what: str) -> int:
        v = self.int()
        if v < 0:
            raise self.fail(f"negative {what}: {v}")
        return v

    def float(self) -> float:
        # dlib writes float/double as (mantissa int, exponent int); value = m * 2**e.
        m = self.int()
        e = self.int()
        # Exact for the float32 values stored here.
        return float(np.ldexp(np.float64(m), e)) if m else 0.0

    def bool(self) -> bool:
        c = self._take(1)
        if c not in (b"0", b"1"):
            raise self.fail(f"bad bool byte {c!r}")
        return c == b"1"

    def string(self) -> str:
        n = self.uint("string length")
        try:
            return self._take(n).decode("ascii")
        except UnicodeDecodeError as e:
            raise self.fail("string is not ASCII") from e

    def expect_string(self, *allowed: str) -> str:
        start = self.pos
        s = self.string()
        if s not in allowed:
            self.pos = start
            raise self.fail(f"expected one of {allowed}, found {s!r}")
        return s

    def tensor(self) -> np.ndarray:
        v = self.int()
        if v != 2:
            raise self.fail(f"unsupported tensor serialisation version {v}")
        dims = tuple(self.uint("tensor dimension") for _ in range(4))
        count = int(np.prod(dims, dtype=np.int64))
        raw = self._take(4 * count)
        return np.frombuffer(raw, dtype="<f4").reshape(dims).astype(np.float32)

    def alias(self) -> tuple[int, tuple[int, int, int, int]]:
        """alias_tensor: version 1, then n, k, nr, nc.  Returns (element count, dims)."""
        v = self.int()
        if v != 1:
            raise self.fail(f"unsupported alias_tensor version {v}")
        dims = tuple(self.uint("alias dimension") for _ in range(4))
        return int(np.prod(dims, dtype=np.int64)), dims  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Layer details
# --------------------------------------------------------------------------------------------------


def _read_con(r: _Reader) -> DlibLayer:
    r.expect_string("con_4")
    params = r.tensor().reshape(-1)
    num_filters = r.uint("num_filters")
    kh, kw, sy, sx = (r.uint("con geometry") for _ in range(4))
    py, px = r.uint("padding"), r.uint("padding")
    fcount, fdims = r.alias()
    bcount, bdims = r.alias()
    for _ in range(4):  # learning-rate / weight-decay multipliers
        r.float()
    if fdims[0] != num_filters or fdims[2:] != (kh, kw) or bcount != num_filters:
        raise r.fail(f"con: inconsistent filter {fdims} / bias {bdims} shapes for {num_filters} filters")
    if params.size != fcount + bcount:
        raise r.fail(f"con: params has {params.size} values, expected {fcount + bcount}")
    return DlibLayer(
        "con",
        {"num_filters": num_filters, "kernel": (kh, kw), "stride": (sy, sx), "padding": (py, px)},
        {"weight": params[:fcount].reshape(fdims).copy(), "bias": params[fcount:].copy()},
    )


def _read_affine(r: _Reader) -> DlibLayer:
    r.expect_string("affine_")
    params = r.tensor().reshape(-1)
    gcount, gdims = r.alias()
    bcount, bdims = r.alias()
    mode = r.int()
    if mode != 0 or gcount != bcount or params.size != gcount + bcount:
        raise r.fail(f"affine: unsupported mode {mode} or shapes {gdims}/{bdims}/{params.size}")
    return DlibLayer(
        "affine", {"mode": mode}, {"gamma": params[:gcount].copy(), "beta": params[gcount:].copy()}
    )


def _read_pool(r: _Reader, kind: str) -> DlibLayer:
    r.expect_string(f"{kind}_2")
    nr, nc, sy, sx, py, px = (r.uint(f"{kind} geometry") for _ in range(6))
    return DlibLayer(kind, {"window": (nr, nc), "stride": (sy, sx), "padding": (py, px)})


def _read_fc(r: _Reader) -> DlibLayer:
    r.expect_string("fc_2")
    num_outputs = r.uint("fc num_outputs")
    num_inputs = r.uint("fc num_inputs")
    params = r.tensor().reshape(-1)
    wcount, wdims = r.alias()
    bcount, bdims = r.alias()
    bias_mode = r.int()  # dlib fc_bias_mode: 0 = FC_HAS_BIAS, 1 = FC_NO_BIAS
    for _ in range(4):
        r.float()
    has_bias = bias_mode == 0
    if bias_mode not in (0, 1) or wdims[:2] != (num_inputs, num_outputs):
        raise r.fail(f"fc: unexpected bias_mode {bias_mode} or weight shape {wdims}")
    if params.size != wcount + (bcount if has_bias else 0):
        raise r.fail(f"fc: params has {params.size} values for weights {wdims}")
    w = {"weight": params[:wcount].reshape(num_inputs, num_outputs).copy()}
    if has_bias:
        w["bias"] = params[wcount : wcount + bcount].copy()
    return DlibLayer("fc", {"num_inputs": num_inputs, "num_outputs": num_outputs, "has_bias": has_bias}, w)


def _read_details(r: _Reader) -> DlibLayer:
    start = r.pos
    name = r.string()
    r.pos = start
    if name == "con_4":
        return _read_con(r)
    if name == "affine_":
        return _read_affine(r)
    if name == "relu_":
        r.string()
        return DlibLayer("relu")
    if name == "max_pool_2":
        return _read_pool(r, "max_pool")
    if name == "avg_pool_2":
        return _read_pool(r, "avg_pool")
    if name == "add_prev_":
        r.string()
        return DlibLayer("add_prev")
    if name == "fc_2":
        return _read_fc(r)
    raise r.fail(f"unsupported layer type {name!r}")


def _read_layer_state(r: _Reader) -> None:
    """What add_layer writes after its details: 3 bools then 3 (normally empty) tensors."""
    for _ in range(3):
        r.bool()
    for _ in range(3):
        r.tensor()


# --------------------------------------------------------------------------------------------------
# Expected topology (bottom-up), used to name tags/skips and to validate the file
# --------------------------------------------------------------------------------------------------


def _expected_kinds() -> list[tuple[str, int | None]]:
    seq: list[tuple[str, int | None]] = [("con", None), ("affine", None), ("relu", None), ("max_pool", None)]

    def block():
        return [("con", None), ("affine", None), ("relu", None), ("con", None), ("affine", None)]

    def ares():
        return [("tag", 1), *block(), ("add_prev", 1), ("relu", None)]

    def ares_down():
        return [("tag", 1), *block(), ("tag", 2), ("skip", 1), ("avg_pool", None), ("add_prev", 2), ("relu", None)]

    seq += ares() * 3  # alevel4: 32
    seq += ares_down() + ares() * 3  # alevel3: 64
    seq += ares_down() + ares() * 2  # alevel2: 128
    seq += ares_down() + ares() * 2  # alevel1: 256
    seq += ares_down()  # alevel0: 256
    seq += [("avg_pool", None), ("fc", None)]
    return seq


# --------------------------------------------------------------------------------------------------
# parse()
# --------------------------------------------------------------------------------------------------


def parse(dat_path: str | os.PathLike) -> DlibNet:
    """Parse ``dlib_face_recognition_resnet_model_v1.dat`` into numpy weights.

    Returns a :class:`DlibNet` with

    * ``input``: :class:`DlibInput` (``mean_rgb`` = (122.782, 117.001, 104.298), ``nr`` = ``nc`` = 150;
      the network's input is ``(rgb - mean_rgb) / 256``, RGB order, NCHW inside dlib);
    * ``layers``: list of :class:`DlibLayer` in bottom-up order (input side first), including explicit
      ``tag``/``skip``/``add_prev`` entries carrying the tag id they refer to (see DlibLayer for every kind's
      weights and attributes).  Weight layouts match PyTorch: conv weight [out, in, kh, kw] (load into
      ``nn.Conv2d(in, out, k, stride, padding)``), affine gamma/beta [C] (an ``nn.BatchNorm2d`` in eval mode
      with weight=gamma, bias=beta, running_mean=0, running_var=1-eps, or a plain per-channel scale/shift),
      fc weight [in, out] (``nn.Linear(in, out, bias=False).weight = weight.T``);
    * ``loss``: loss_metric_ margin (0.04) and distance_threshold (0.6).

    The whole file must be consumed; any unexpected content raises ``ValueError``.
    """
    path = Path(dat_path)
    r = _Reader(path.read_bytes(), str(path))

    # add_loss_layer: version 1, loss details, then the network.
    if (v := r.int()) != 1:
        raise r.fail(f"unsupported add_loss_layer version {v}")
    r.expect_string("loss_metric_2")
    loss = {"margin": r.float(), "distance_threshold": r.float()}

    # Nested add_layer / add_tag_layer / add_skip_layer headers, outermost (fc) first.
    # add_layer writes version 2 (3 for the layer sitting on the input layer), tag/skip layers 1.
    versions: list[int] = []
    while True:
        v = r.int()
        versions.append(v)
        if v == 3:
            break
        if v not in (1, 2):
            raise r.fail(f"unexpected layer version {v}")

    r.expect_string("input_rgb_image_sized")
    mean = (r.float(), r.float(), r.float())
    inp = DlibInput(mean, r.uint("input rows"), r.uint("input columns"))

    # Details come back bottom-up.  The layer on the input also stores _sample_expansion_factor.
    computational: list[DlibLayer] = []
    n_add = sum(1 for v in versions if v != 1)
    for i in range(n_add):
        computational.append(_read_details(r))
        _read_layer_state(r)
        if i == 0:
            r.int()  # _sample_expansion_factor
    if r.pos != len(r.b):
        raise r.fail(f"{len(r.b) - r.pos} trailing bytes after the last layer")

    # Merge markers (tag/skip, version 1) with the computational layers, bottom-up.
    expected = _expected_kinds()
    layers: list[DlibLayer] = []
    it = iter(computational)
    bottom_up = list(reversed(versions))
    if len(bottom_up) != len(expected):
        raise ValueError(
            f"{path}: {len(bottom_up)} layers, expected {len(expected)} for dlib's face-recognition ResNet"
        )
    for i, (v, (kind, tag_id)) in enumerate(zip(bottom_up, expected)):
        if v == 1:
            if kind not in ("tag", "skip"):
                raise ValueError(f"{path}: layer {i}: found a tag/skip layer where {kind} was expected")
            layers.append(DlibLayer(kind, {"id": tag_id}))
            continue
        layer = next(it)
        if layer.kind != kind:
            raise ValueError(f"{path}: layer {i}: found {layer.kind}, expected {kind}")
        if kind == "add_prev":
            layer.attrs["id"] = tag_id
        layers.append(layer)
    if layers[-2].attrs["window"] != (0, 0):
        raise ValueError(f"{path}: expected avg_pool_everything before the fc layer")
    return DlibNet(inp, layers, loss)


# --------------------------------------------------------------------------------------------------
# convert()
# --------------------------------------------------------------------------------------------------


def _out_size(n: int, window: int, stride: int, pad: int) -> int:
    return 1 + (n + 2 * pad - window) // stride


class GraphBuilder:
    """Collects ONNX nodes and initialisers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, prefix: str, arr: np.ndarray) -> str:
        n = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), n))
        return n

    def node(self, op: str, inputs: list[str], out: str | None = None, **kw) -> str:
        out = out or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **kw))
        return out


def build_trunk(net: DlibNet, g: GraphBuilder, chip: str) -> tuple[str, DlibLayer]:
    """Append dlib's layers, from ``chip`` (float32 NHWC RGB 0..255) to the pooled features.

    Returns the name of the features tensor [N, 256] (``Flatten`` of the global average pool) and the
    final ``fc`` layer, which the caller turns into the embedding head. The input normalisation and
    the affine layers are folded into the convolution weights.
    """
    cur = g.node("Transpose", [chip], perm=[0, 3, 1, 2])
    shape = (3, net.input.nr, net.input.nc)  # channels, rows, cols
    mean = np.asarray(net.input.mean_rgb, dtype=np.float64)
    first_conv = True
    tags: dict[int, tuple[str, tuple[int, int, int]]] = {}
    layers = net.layers
    i = 0
    while i < len(layers):
        layer = layers[i]
        k = layer.kind
        if k == "con":
            w = layer.weights["weight"].astype(np.float64)
            b = layer.weights["bias"].astype(np.float64)
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if nxt is not None and nxt.kind == "affine":  # fold y = gamma * conv + beta
                gamma = nxt.weights["gamma"].astype(np.float64)
                w = w * gamma[:, None, None, None]
                b = b * gamma + nxt.weights["beta"]
                i += 1
            py, px = layer.attrs["padding"]
            if first_conv:
                # conv((x - mean) / 256) with no padding == conv(x) with W/256 and bias - sum(W * mean)/256.
                if (py, px) != (0, 0):
                    raise ValueError("cannot fold input normalisation into a padded first convolution")
                w = w / 256.0
                b = b - np.einsum("oihw,i->o", w, mean)
                first_conv = False
            kh, kw = layer.attrs["kernel"]
            sy, sx = layer.attrs["stride"]
            cur = g.node("Conv", [cur, g.const("W", w.astype(np.float32)), g.const("B", b.astype(np.float32))],
                         kernel_shape=[kh, kw], strides=[sy, sx], pads=[py, px, py, px])
            shape = (w.shape[0], _out_size(shape[1], kh, sy, py), _out_size(shape[2], kw, sx, px))
        elif k == "affine":  # not preceded by a conv
            gamma = layer.weights["gamma"].reshape(1, -1, 1, 1)
            beta = layer.weights["beta"].reshape(1, -1, 1, 1)
            cur = g.node("Add", [g.node("Mul", [cur, g.const("gamma", gamma)]), g.const("beta", beta)])
        elif k == "relu":
            cur = g.node("Relu", [cur])
        elif k in ("max_pool", "avg_pool"):
            wr, wc = layer.attrs["window"]
            sy, sx = layer.attrs["stride"]
            py, px = layer.attrs["padding"]
            if k == "avg_pool" and (wr, wc) == (0, 0):
                cur = g.node("GlobalAveragePool", [cur])
                shape = (shape[0], 1, 1)
            else:
                if k == "avg_pool" and (py, px) != (0, 0):
                    raise ValueError("padded avg_pool is not supported")
                op = "MaxPool" if k == "max_pool" else "AveragePool"
                cur = g.node(op, [cur], kernel_shape=[wr, wc], strides=[sy, sx], pads=[py, px, py, px])
                shape = (shape[0], _out_size(shape[1], wr, sy, py), _out_size(shape[2], wc, sx, px))
        elif k == "tag":
            tags[layer.attrs["id"]] = (cur, shape)
        elif k == "skip":
            cur, shape = tags[layer.attrs["id"]]
        elif k == "add_prev":
            other, oshape = tags[layer.attrs["id"]]
            out_shape = tuple(max(a, c) for a, c in zip(shape, oshape))

            def pad_to(t: str, s: tuple[int, int, int]) -> str:
                if s == out_shape:
                    return t
                pads = [0, 0, 0, 0, 0, *(o - a for o, a in zip(out_shape, s))]
                return g.node("Pad", [t, g.const("pads", np.asarray(pads, dtype=np.int64))], mode="constant")

            cur = g.node("Add", [pad_to(cur, shape), pad_to(other, oshape)])
            shape = out_shape
        elif k == "fc":
            if shape[1:] != (1, 1) or i != len(layers) - 1:
                raise ValueError("expected dlib's fc last, after a global average pool")
            return g.node("Flatten", [cur], "features", axis=1), layer
        else:  # pragma: no cover - parse() only yields the kinds above
            raise ValueError(f"unsupported layer kind {k}")
        i += 1
    raise ValueError("the network has no fc layer")


def embedding_head(g: GraphBuilder, features: str, fc: DlibLayer) -> str:
    """dlib's fc (y = x . W [+ b]) as the graph output ``embedding``."""
    if fc.attrs["has_bias"]:
        product = g.node("MatMul", [features, g.const("fcW", fc.weights["weight"])])
        return g.node("Add", [product, g.const("fcB", fc.weights["bias"])], "embedding")
    return g.node("MatMul", [features, g.const("fcW", fc.weights["weight"])], "embedding")


def convert(dat_path: str | os.PathLike) -> onnx.ModelProto:
    """Build the ONNX model for dlib's face-recognition ResNet.

    Input ``chip``: float32 [N, 150, 150, 3], RGB 0..255 (NHWC, a dlib matrix<rgb_pixel> / the uint8 chip
    from ``dlib.get_face_chip`` cast to float).  Output ``embedding``: float32 [N, 128], dlib's face
    descriptor (not L2-normalised).  The input normalisation and the affine layers are folded into the
    convolution weights; the graph uses only Transpose, Conv, Relu, MaxPool, AveragePool, Pad, Add,
    GlobalAveragePool, Flatten and MatMul.  opset 17, IR version 8.
    """
    net = parse(dat_path)
    g = GraphBuilder()
    features, fc = build_trunk(net, g, "chip")
    embedding_head(g, features, fc)
    graph = helper.make_graph(
        g.nodes,
        "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info("chip", TensorProto.FLOAT, ["N", net.input.nr, net.input.nc, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", fc.attrs["num_outputs"]])],
        g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="mobidem.convert.dlib_resnet",
        doc_string="dlib face recognition ResNet v1; input RGB 0..255 NHWC 150x150 chip; output 128-d descriptor",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model
