"""Head pose and face-action signals from one face's 468-point mesh (image pixels, MediaPipe's order).

Pose is ``affine_pose``: where the nose tip sits in the affine frame of the outer eye corners and the chin
  (``u`` along the eye line in eye-corner distances, ``v`` towards the chin). A flat picture moved,
  tilted or warped in front of the camera is (close to) an affine map of itself, which leaves these
  coordinates unchanged; a real head that turns moves its protruding nose against that frame. The
  ceremony decides turns and looking up from the change of ``(u, v)`` against the ceremony's own
  neutral frames. Measured on the labelled segments of shared/data/faces/liveness (docs/LIVENESS.md):
  frontal |u| <= 0.07; turns of 35-60 degrees move u by 0.18-0.7; looking up moves v by -0.23 to -0.31.

Conventions (image coordinates, the frames as the camera took them, not a mirrored preview): ``u`` > 0
when the nose points to the image's right, which is the subject's LEFT; ``v`` grows when the head
tilts down.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

NOSE_TIP = 1
CHIN = 152
EYE_OUTER_IMAGE_LEFT = 33  # the subject's right eye, outer corner
EYE_OUTER_IMAGE_RIGHT = 263
MOUTH_IMAGE_LEFT, MOUTH_IMAGE_RIGHT = 61, 291
LIP_UPPER_INNER, LIP_LOWER_INNER = 13, 14
MOUTH_INNER_LEFT, MOUTH_INNER_RIGHT = 78, 308


@dataclass(frozen=True)
class Pose:
    u: float  # nose offset along the eye line (eye-corner distances); > 0: nose to the image's right
    v: float  # nose offset towards the chin (eye-to-chin distances)


def affine_pose(mesh: np.ndarray) -> Pose:
    """The nose tip's coordinates in the frame (eye-corner midpoint; eye line; midpoint -> chin)."""
    p = np.asarray(mesh, np.float64)[:, :2]
    a, b = p[EYE_OUTER_IMAGE_LEFT], p[EYE_OUTER_IMAGE_RIGHT]
    mid = (a + b) / 2
    basis = np.stack([b - a, p[CHIN] - mid], axis=1)  # columns e1, e2
    if abs(np.linalg.det(basis)) < 1e-6:
        return Pose(0.0, 0.0)
    u, v = np.linalg.solve(basis, p[NOSE_TIP] - mid)
    return Pose(float(u), float(v))


def planar_residual(reference: np.ndarray, mesh: np.ndarray) -> float:
    """How far a face's landmarks are from a flat picture of its ``reference`` landmarks (the same
    face, frontal): the RMS distance left after the best homography (least squares over all 468
    points) maps ``mesh`` onto ``reference``, in the reference's outer-eye-corner distances.

    Any view of a rigid flat picture (a print or a screen, held, tilted or turned in front of a
    camera) is a homography of any other; a real head that turns or looks up is not flat, so its nose,
    centre line and contour move against one another (parallax) and no homography fits them.
    Measured in docs/LIVENESS.md, "Turned photos" (bench/turned_photo.py)."""
    ref = np.asarray(reference, np.float64)[:468, :2]
    cur = np.asarray(mesh, np.float64)[:468, :2]
    h, _ = cv2.findHomography(cur, ref, 0)
    eyes = float(np.linalg.norm(ref[EYE_OUTER_IMAGE_RIGHT] - ref[EYE_OUTER_IMAGE_LEFT]))
    if h is None or eyes < 1e-6:
        return 0.0
    mapped = cv2.perspectiveTransform(cur[None], h)[0]
    return float(np.sqrt(np.mean(np.sum((mapped - ref) ** 2, axis=1))) / eyes)


def mouth_open_ratio(mesh: np.ndarray) -> float:
    """Inner-lip gap over mouth width (closed ~0.0-0.05, a wide-open mouth > 0.3)."""
    p = np.asarray(mesh, np.float64)[:, :2]
    gap = np.linalg.norm(p[LIP_UPPER_INNER] - p[LIP_LOWER_INNER])
    width = np.linalg.norm(p[MOUTH_INNER_LEFT] - p[MOUTH_INNER_RIGHT])
    return float(gap / max(width, 1e-6))
