"""How good a face is for identity, in [0, 1]: the product of three measured factors.

- size: the shorter box side over 100 px (the embedder's chip is 150 px; a face of 100 px and more
  fills it without upsampling), capped at 1;
- frontality: from the detector's keypoints, how far the nose tip sits from the midpoint of the
  eyes along the eye line, relative to the eye distance (0 for a frontal face, about 0.5 at a
  full profile); 1 - 2 x that offset, floored at 0.05;
- sharpness: the variance of the Laplacian of the aligned chip's grey centre (a standard focus
  measure), mapped to v / (v + 10) so that a sharp chip scores near 1 and a motion-blurred one low.

The tracker embeds a face again when its quality beats the best embedded one of its track by a
margin. docs/TRACKING.md measures it (bench/quality_study.py): on the Hamilton clip's faces of
Lin-Manuel Miranda it does not predict the distance to his template (a sample of good faces only).
"""

from __future__ import annotations

import cv2
import numpy as np

FULL_SIZE_PX = 100.0
SHARPNESS_HALF = 10.0  # Laplacian variance at which sharpness is 0.5


def size_factor(box: np.ndarray) -> float:
    side = float(min(box[2] - box[0], box[3] - box[1]))
    return float(np.clip(side / FULL_SIZE_PX, 0.0, 1.0))


def frontality(keypoints: np.ndarray) -> float:
    """Keypoints in the detector's order: right eye, left eye, nose tip, ..."""
    right, left, nose = (np.asarray(keypoints[i], np.float64) for i in range(3))
    axis = left - right
    span = float(np.hypot(*axis))
    if span < 1e-6:
        return 0.05
    offset = abs(float(np.dot(nose - (left + right) / 2, axis / span))) / span
    return float(np.clip(1.0 - 2.0 * offset, 0.05, 1.0))


def sharpness(chip: np.ndarray) -> float:
    h, w = chip.shape[:2]
    centre = chip[h // 6: h - h // 6, w // 6: w - w // 6]
    grey = cv2.cvtColor(centre, cv2.COLOR_RGB2GRAY) if centre.ndim == 3 else centre
    v = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    return v / (v + SHARPNESS_HALF)


def face_quality(chip: np.ndarray, keypoints: np.ndarray, box: np.ndarray) -> float:
    return size_factor(box) * frontality(keypoints) * sharpness(chip)
