"""Export a trained MultiTaskNet to ONNX under the ``face_multitask`` I/O contract, as a new version.

Contract (model_repository/face_multitask/config.pbtxt): input ``chip`` uint8 [N, 150, 150, 3] (RGB
aligned chip), outputs ``embedding`` float32 [N, 128] and ``expression`` float32 [N, 7]
(probabilities, EXPRESSION_LABELS order); opset 17, IR version 8.

The graph is written with ``onnx.helper`` from the trained weights (no torch exporter involved):
Cast -> dlib's trunk as :func:`mobidem.convert.dlib_resnet.build_trunk` writes it for the served model
(input normalisation and affines folded into the convolutions) -> Flatten = shared features -> MatMul (identity) / MatMul + Add + Softmax
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
from onnx import TensorProto, helper

from mobidem.convert.dlib_resnet import DlibNet, GraphBuilder, build_trunk, embedding_head

OPSET = 17
IR_VERSION = 8


def build_onnx(net: DlibNet, expr_weight: np.ndarray, expr_bias: np.ndarray, doc: str = "") -> onnx.ModelProto:
    """ONNX graph of the trunk + identity fc in ``net`` (trained weights) + the expression head.

    ``expr_weight`` [7, 256] and ``expr_bias`` [7] as in ``nn.Linear``.
    """
    g = GraphBuilder()
    features, fc = build_trunk(net, g, g.node("Cast", ["chip"], to=TensorProto.FLOAT))
    embedding_head(g, features, fc)
    logits = g.node("Add", [g.node("MatMul", [features, g.const("exprW", np.asarray(expr_weight, np.float32).T)]),
                            g.const("exprB", np.asarray(expr_bias, np.float32))])
    g.node("Softmax", [logits], "expression", axis=1)
    n_expr = int(np.asarray(expr_bias).shape[0])
    graph = helper.make_graph(
        g.nodes, "face_multitask_trained",
        [helper.make_tensor_value_info("chip", TensorProto.UINT8, ["N", net.input.nr, net.input.nc, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", fc.attrs["num_outputs"]]),
         helper.make_tensor_value_info("expression", TensorProto.FLOAT, ["N", n_expr])],
        g.inits,
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
