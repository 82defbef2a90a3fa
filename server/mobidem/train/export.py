"""Export a trained MultiTaskNet to ONNX under the ``face_multitask`` I/O contract, as a new version.

Contract (model_repository/face_multitask/config.pbtxt): input ``chip`` uint8 [N, 150, 150, 3] (RGB
aligned chip), outputs ``embedding`` float32 [N, 128] and ``expression`` float32 [N, 7]
(probabilities, EXPRESSION_LABELS order); opset 17, IR version 8.

The graph is written with ``onnx.helper`` from the trained weights (no torch exporter involved):
Cast -> Transpose to NCHW -> (x - mean) / 256 -> dlib's layers (each conv with its affine folded in)
-> GlobalAveragePool -> Flatten = shared features -> MatMul (identity) / MatMul + Add + Softmax
(expression). :func:`export_to_repository` writes ``<repository>/<model>/<next version>/model.onnx`` and
copies the model's ``1/model.py``; Triton's default version policy (latest 1) then serves it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mobidem.convert.dlib_resnet import DlibNet

OPSET = 17
IR_VERSION = 8


def build_onnx(net: DlibNet, expr_weight: np.ndarray, expr_bias: np.ndarray, doc: str = "") -> onnx.ModelProto:
    """ONNX graph of the trunk + identity fc in ``net`` (trained weights) + the expression head.

    ``expr_weight`` [7, 256] and ``expr_bias`` [7] as in ``nn.Linear``.
    """
    nodes, inits = [], []
    counter = [0]

    def name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def const(prefix: str, arr) -> str:
        n = name(prefix)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), n))
        return n

    def node(op: str, inputs: list[str], out: str | None = None, **kw) -> str:
        out = out or name(op.lower())
        nodes.append(helper.make_node(op, inputs, [out], name=out, **kw))
        return out

    x = node("Cast", ["chip"], to=TensorProto.FLOAT)
    x = node("Transpose", [x], perm=[0, 3, 1, 2])
    mean = np.asarray(net.input.mean_rgb, np.float32).reshape(1, 3, 1, 1)
    x = node("Mul", [node("Sub", [x, const("mean", mean)]), const("scale", np.float32(1 / 256))])
    shape = (3, net.input.nr, net.input.nc)
    tags: dict = {}
    layers = net.layers
    i = 0
    fc = None
    while i < len(layers):
        layer, k = layers[i], layers[i].kind
        if k == "con":
            w = layer.weights["weight"].astype(np.float64)
            b = layer.weights["bias"].astype(np.float64)
            if i + 1 < len(layers) and layers[i + 1].kind == "affine":
                g = layers[i + 1].weights["gamma"].astype(np.float64)
                w = w * g[:, None, None, None]
                b = b * g + layers[i + 1].weights["beta"]
                i += 1
            (kh, kw), (sy, sx), (py, px) = layer.attrs["kernel"], layer.attrs["stride"], layer.attrs["padding"]
            x = node("Conv", [x, const("W", w.astype(np.float32)), const("B", b.astype(np.float32))],
                     kernel_shape=[kh, kw], strides=[sy, sx], pads=[py, px, py, px])
            shape = (w.shape[0], 1 + (shape[1] + 2 * py - kh) // sy, 1 + (shape[2] + 2 * px - kw) // sx)
        elif k == "affine":
            x = node("Add", [node("Mul", [x, const("gamma", layer.weights["gamma"].reshape(1, -1, 1, 1))]),
                             const("beta", layer.weights["beta"].reshape(1, -1, 1, 1))])
        elif k == "relu":
            x = node("Relu", [x])
        elif k in ("max_pool", "avg_pool"):
            (wr, wc), (sy, sx), (py, px) = layer.attrs["window"], layer.attrs["stride"], layer.attrs["padding"]
            if (wr, wc) == (0, 0):
                x = node("GlobalAveragePool", [x])
                shape = (shape[0], 1, 1)
            else:
                op = "MaxPool" if k == "max_pool" else "AveragePool"
                x = node(op, [x], kernel_shape=[wr, wc], strides=[sy, sx], pads=[py, px, py, px])
                shape = (shape[0], 1 + (shape[1] + 2 * py - wr) // sy, 1 + (shape[2] + 2 * px - wc) // sx)
        elif k == "tag":
            tags[layer.attrs["id"]] = (x, shape)
        elif k == "skip":
            x, shape = tags[layer.attrs["id"]]
        elif k == "add_prev":
            other, oshape = tags[layer.attrs["id"]]
            out_shape = tuple(max(a, c) for a, c in zip(shape, oshape))

            def pad_to(t, s):
                if s == out_shape:
                    return t
                pads = np.array([0, 0, 0, 0, 0, *(o - a for o, a in zip(out_shape, s))], np.int64)
                return node("Pad", [t, const("pads", pads)], mode="constant")

            x = node("Add", [pad_to(x, shape), pad_to(other, oshape)])
            shape = out_shape
        elif k == "fc":
            fc = layer
        i += 1
    if fc is None or shape[1:] != (1, 1):
        raise ValueError("expected a global average pool followed by dlib's fc")
    features = node("Flatten", [x], "features", axis=1)
    node("MatMul", [features, const("fcW", fc.weights["weight"].astype(np.float32))], "embedding")
    logits = node("Add", [node("MatMul", [features, const("exprW", np.asarray(expr_weight, np.float32).T)]),
                          const("exprB", np.asarray(expr_bias, np.float32))])
    node("Softmax", [logits], "expression", axis=1)
    n_expr = int(np.asarray(expr_bias).shape[0])
    graph = helper.make_graph(
        nodes, "face_multitask_trained",
        [helper.make_tensor_value_info("chip", TensorProto.UINT8, ["N", net.input.nr, net.input.nc, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", fc.attrs["num_outputs"]]),
         helper.make_tensor_value_info("expression", TensorProto.FLOAT, ["N", n_expr])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mobidem.train",
                              doc_string=doc or "mobidem.train: fine-tuned dlib ResNet trunk + identity and expression heads")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def model_to_onnx(model, template: DlibNet, meta: dict | None = None) -> onnx.ModelProto:
    """ONNX for a ``MultiTaskNet`` (weights read on the CPU)."""
    net = model.to_dlibnet(template)
    onnx_model = build_onnx(net, model.expression.weight.detach().cpu().numpy(),
                            model.expression.bias.detach().cpu().numpy())
    if meta:
        helper.set_model_props(onnx_model, {"mobidem.train": json.dumps(meta, sort_keys=True, default=str)})
    return onnx_model


def versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in Path(model_dir).iterdir() if p.is_dir() and p.name.isdigit())


def export_to_repository(onnx_model: onnx.ModelProto, repository: str | os.PathLike,
                         model_name: str = "face_multitask") -> Path:
    """Write ``<repository>/<model_name>/<next free version>/model.onnx`` (+ model.py); returns that folder."""
    model_dir = Path(repository) / model_name
    if not (model_dir / "config.pbtxt").is_file():
        raise FileNotFoundError(f"{model_dir / 'config.pbtxt'} is missing: is {repository} a mobidem model repository?")
    existing = versions(model_dir)
    sources = [model_dir / str(v) / "model.py" for v in existing]
    source = next((p for p in sources if p.is_file()), None)
    if source is None:
        raise FileNotFoundError(f"no <version>/model.py under {model_dir} to copy")
    version = (max(existing) if existing else 0) + 1
    # Build in a hidden sibling folder, then rename: Triton never sees a half-written version.
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=model_dir))
    try:
        onnx.save(onnx_model, str(tmp / "model.onnx"))
        shutil.copy2(source, tmp / "model.py")
        target = model_dir / str(version)
        if target.exists():
            raise FileExistsError(f"{target} appeared during the export; run it again")
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
