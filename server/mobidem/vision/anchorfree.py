"""Pre- and post-processing shared by the fully convolutional detector plugins (CenterFace, YuNet).

Both take any input whose sides are multiples of 32 and give per-cell outputs, so a frame is not
squeezed into a fixed square: ``fit`` shrinks it (never enlarges) until its longer side is at most
``max_side`` and pads it at the right and bottom to multiples of the stride; coordinates map back
by one scale. Between key frames, tracking asks for faces near expected boxes: ``near_batch``
letterboxes a square crop around each (the BlazeFace plugin's ``near_regions``) to one fixed size,
so all crops of a frame go to Triton as one batch.

Keypoints leave here in the plugin interface's order (mobidem.plugins.Detection): right eye, left
eye, nose tip, mouth centre, where "right" is the subject's right, the image's left. Both models
give five points (two eyes, nose, two mouth corners); the mouth centre is the corners' midpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mobidem.plugins import Detection
from mobidem.vision.blazeface import Letterbox, letterbox_region


@dataclass(frozen=True)
class Fitted:
    """A frame shrunk by ``scale`` and padded to ``shape`` (H, W): input pixel = image pixel * scale."""

    scale: float
    shape: tuple[int, int]


def fit(image: np.ndarray, max_side: int, stride: int = 32) -> tuple[np.ndarray, Fitted]:
    """``image`` (uint8 HxWx3) shrunk with INTER_AREA so that its longer side is at most ``max_side``
    (never enlarged), top-left on a zero canvas whose sides are multiples of ``stride``."""
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ValueError("empty image")
    s = min(1.0, max_side / max(h, w))
    nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
    small = image if (nw, nh) == (w, h) else cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    ch, cw = -(-nh // stride) * stride, -(-nw // stride) * stride
    canvas = np.zeros((ch, cw, 3), np.uint8)
    canvas[:nh, :nw] = small
    # the exact per-axis scales differ by rounding only; their mean maps both axes
    return canvas, Fitted(0.5 * (nw / w + nh / h), (ch, cw))


def five_to_four(points: np.ndarray) -> np.ndarray:
    """[N, 5, 2] (image-left eye, image-right eye, nose, image-left mouth corner, image-right mouth
    corner) -> [N, 4, 2] right eye, left eye, nose tip, mouth centre (the interface's order)."""
    p = np.asarray(points, np.float64).reshape(-1, 5, 2)
    return np.concatenate([p[:, :3], (p[:, 3:4] + p[:, 4:5]) / 2], axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (OpenCV's NMSBoxes), best first."""
    if not len(scores):
        return np.zeros(0, np.int64)
    xywh = [[float(x0), float(y0), float(x1 - x0), float(y1 - y0)] for x0, y0, x1, y1 in boxes]
    keep = cv2.dnn.NMSBoxes(xywh, [float(s) for s in scores], score_threshold, iou_threshold)
    keep = np.asarray(keep, np.int64).reshape(-1)
    return keep[np.argsort(-np.asarray(scores)[keep], kind="stable")]


def detections(boxes: np.ndarray, scores: np.ndarray, points5: np.ndarray, scale: float = 1.0,
               dx: float = 0.0, dy: float = 0.0) -> list[Detection]:
    """Detections in image pixels from model-input pixels: divided by ``scale``, then shifted."""
    kps = five_to_four(points5)
    shift = np.array([dx, dy])
    return [Detection(np.asarray(b, np.float64) / scale + np.tile(shift, 2), float(s), k / scale + shift)
            for b, s, k in zip(boxes, scores, kps)]


def near_batch(image: np.ndarray, boxes: np.ndarray, size: int) -> tuple[list, np.ndarray, list[Letterbox]]:
    """A square crop around each expected box (twice its longer side), each letterboxed to ``size``:
    (regions, uint8 [N, size, size, 3], letterboxes)."""
    from mobidem_builtin_plugins.blazeface import near_regions

    regions = near_regions(image.shape, boxes)
    boxed = [letterbox_region(image, r, size) for r in regions]
    return regions, np.stack([b for b, _ in boxed]), [lb for _, lb in boxed]


def from_letterbox(found: list[Detection], lb: Letterbox, dx: float, dy: float) -> list[Detection]:
    """Detections in a letterboxed crop's pixels -> image pixels (the crop starts at dx, dy)."""
    shift = np.array([dx, dy])
    out = []
    for d in found:
        corners = lb.to_original(np.asarray(d.box, np.float64).reshape(2, 2)).reshape(4) + np.tile(shift, 2)
        out.append(Detection(corners, d.score, lb.to_original(d.keypoints) + shift))
    return out
