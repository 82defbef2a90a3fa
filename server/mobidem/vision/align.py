"""Face chips for dlib's ResNet embedder, from a detector's keypoints, with OpenCV only.

The embedder was trained on ``dlib.get_face_chip(img, shape5, size=150, padding=0.25)`` chips.
dlib is not a run-time dependency, so the chip is reproduced by a similarity transform that sends
the detector's keypoints onto a template fitted to dlib's chips (see bench/alignment_study.py and
docs/ALIGNMENT.md for how each template was derived and how close the result gets).

Each detector puts its keypoints in slightly different places on a face (BlazeFace's mouth centre is
not the midpoint of YuNet's mouth corners), so the template is a property of the detector plugin
(``DetectorPlugin.chip_template``): ``BLAZEFACE`` for BlazeFace (and detectors that declare none);
the YuNet plugin declares its own, fitted the same way.

    chip, M = align_chip(image_rgb, det.keypoints, template=detector.chip_template)

Large faces are pre-shrunk by factors of two with a Gaussian pyramid (as dlib does) before the
bilinear warp, so shrinking never degenerates into nearest-neighbour sampling.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "CHIP_SIZE",
    "ChipTemplate",
    "BLAZEFACE",
    "TEMPLATE_150",
    "TEMPLATE_WEIGHTS",
    "similarity_transform",
    "chip_transform",
    "warp_chip",
    "align_chip",
]

CHIP_SIZE = 150

# BlazeFace keypoints (right eye, left eye, nose tip, mouth centre, right ear, left ear) where
# dlib's 150 px / padding 0.25 chip puts them: fitted on the identity photos by
# bench/alignment_study.py (fit_template). Pixel-centre coordinates of the 150x150 chip.
TEMPLATE_150 = np.array(
    [
        [45.65, 46.57],
        [102.52, 47.02],
        [73.35, 79.86],
        [73.38, 109.30],
        [15.18, 60.64],
        [134.78, 61.45],
    ],
    dtype=np.float64,
)
# Per-keypoint least-squares weights (ears carry no weight: too unstable under yaw).
TEMPLATE_WEIGHTS = np.array([1.0, 1.0, 0.0, 1.0, 0.0, 0.0], dtype=np.float64)


@dataclass(frozen=True)
class ChipTemplate:
    """Where one detector's keypoints go in dlib's 150 px / padding 0.25 chip, and how much each counts.

    ``points`` [K, 2] in the interface's keypoint order (right eye, left eye, nose tip, mouth centre,
    then any the detector adds); ``weights`` [K] for the least-squares similarity (0: unused).
    ``source`` says how it was fitted (the bench command)."""

    name: str
    points: np.ndarray
    weights: np.ndarray
    source: str = ""

    def __post_init__(self):
        pts = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)
        w = np.asarray(self.weights, dtype=np.float64).reshape(-1)
        if len(w) != len(pts) or (w > 0).sum() < 2 or (w < 0).any():
            raise ValueError(f"chip template {self.name!r}: need one weight >= 0 per point, at least two > 0")
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "weights", w)


BLAZEFACE = ChipTemplate("blazeface", TEMPLATE_150, TEMPLATE_WEIGHTS,
                         "bench/alignment_study.py (BlazeFace keypoints in dlib's chips)")


def similarity_transform(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted least-squares similarity (rotation, uniform scale, translation; no reflection).

    Returns the 2x3 matrix M minimising sum_i w_i |M [src_i, 1] - dst_i|^2.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if len(src) != len(dst) or len(w) != len(src):
        raise ValueError("src, dst and weights must have the same length")
    if (w > 0).sum() < 2:
        raise ValueError("need at least two weighted points")
    w = w / w.sum()
    ms, md = w @ src, w @ dst
    p, q = src - ms, dst - md
    den = w @ (p * p).sum(1)
    if den <= 0:
        raise ValueError("degenerate source points")
    a = w @ (p[:, 0] * q[:, 0] + p[:, 1] * q[:, 1]) / den
    b = w @ (p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]) / den
    R = np.array([[a, -b], [b, a]])
    t = md - R @ ms
    return np.hstack([R, t[:, None]])


def chip_transform(
    keypoints: np.ndarray,
    size: int = CHIP_SIZE,
    template: "ChipTemplate | np.ndarray | None" = None,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """2x3 image -> chip similarity from a detector's keypoints [K, 2] (original image pixels).

    ``template``: a ChipTemplate (its points and weights) or template points [K, 2]; default
    ``BLAZEFACE``. ``weights`` override the template's. Scaled to ``size``.
    """
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 2)
    if template is None:
        template = BLAZEFACE
    if isinstance(template, ChipTemplate):
        tpl, w = template.points, template.weights
    else:
        tpl, w = np.asarray(template, dtype=np.float64).reshape(-1, 2), TEMPLATE_WEIGHTS
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
    n = min(len(kp), len(tpl), len(w))
    tpl = tpl[:n] * (size / CHIP_SIZE)
    return similarity_transform(kp[:n], tpl, w[:n])


def warp_chip(image_rgb: np.ndarray, M: np.ndarray, size: int = CHIP_SIZE) -> np.ndarray:
    """Sample the ``size`` x ``size`` chip defined by the 2x3 image -> chip matrix ``M``.

    Bilinear, replicate-nothing (black) borders. When the chip covers more than twice its size in
    source pixels, the image is first halved with cv2.pyrDown as many times as dlib's
    extract_image_chip would (its pyramid_down<2>), only over the region the chip needs.
    """
    M = np.asarray(M, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(M[:, :2]))))  # chip px per source px
    src_extent = size / max(scale, 1e-12)
    depth = 0
    ext = src_extent / 2.0
    while ext > size:  # dlib: rect = rect_down(rect); while (rect.area() > chip.size()) ++depth
        ext /= 2.0
        depth += 1
    img = image_rgb
    if depth > 0:
        # crop the source region (with a margin) before building the pyramid
        inv = cv2.invertAffineTransform(M)
        corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64) @ inv.T
        margin = 4 * (2**depth)
        h, w = img.shape[:2]
        x0 = int(max(0, np.floor(corners[:, 0].min()) - margin))
        y0 = int(max(0, np.floor(corners[:, 1].min()) - margin))
        x1 = int(min(w, np.ceil(corners[:, 0].max()) + margin))
        y1 = int(min(h, np.ceil(corners[:, 1].max()) + margin))
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            # keep the crop origin a multiple of 2**depth so pyramid pixels stay on the same grid
            x0 -= x0 % (2**depth)
            y0 -= y0 % (2**depth)
            img = img[y0:y1, x0:x1]
            for _ in range(depth):
                img = cv2.pyrDown(img)
            f = float(2**depth)
            # chip = M [p_orig, 1];  p_orig = f * p_small + (x0, y0)
            M = M @ np.array([[f, 0, x0], [0, f, y0], [0, 0, 1]], dtype=np.float64)
    return cv2.warpAffine(
        img, M, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def align_chip(
    image_rgb: np.ndarray,
    keypoints: np.ndarray,
    size: int = CHIP_SIZE,
    template: ChipTemplate | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Chip for dlib's embedder from one face's keypoints.

    image_rgb: uint8 HxWx3 (the original frame); keypoints: [K, 2] in that frame's pixels (e.g.
    ``Detection.keypoints``); template: the detecting plugin's ``chip_template`` (default BLAZEFACE).
    Returns (chip uint8 [size, size, 3], M 2x3 float64 image -> chip).
    """
    M = chip_transform(keypoints, size, template)
    return warp_chip(image_rgb, M, size), M
