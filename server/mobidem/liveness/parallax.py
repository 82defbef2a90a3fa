"""Is the face in front of the camera flat? The image-registration parallax cue for head-pose challenges.

A held photo (or a screen) turned like a card in front of the camera shows, in every frame, the same picture
under a homography: once aligned by the best homography, its pixels match the frontal frame's. A real head
that turns or looks up is not flat: its nose, centre line and contour move against one another, shading
changes, and no homography makes the turned face match the frontal one. ``flatness`` measures that match:
the landmarks give a first homography (current frame -> reference frame), OpenCV's ECC
(``cv2.findTransformECC``, a homography, robust to gain and bias) refines it on the face's pixels, and the
result is ECC's correlation coefficient inside the reference face. Near 1: a flat picture; clearly lower: a
face with depth. The landmarks alone cannot tell: face_mesh answers a turned photo with the landmarks of a
turned head (docs/LIVENESS.md, "Turned photos", measured by bench/turned_photo.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

SIZE = 128  # the reference face is compared at this many pixels across its landmarks' bounding box
POINTS = 468


@dataclass(frozen=True)
class Reference:
    gray: np.ndarray  # SIZE-normalised grey face region (float32), with a margin
    mask: np.ndarray  # uint8, the face's landmark hull
    to_ref: np.ndarray  # 3x3: reference-frame image pixels -> this region's pixels
    mesh: np.ndarray  # the reference landmarks in region pixels (POINTS x 2)
    keypoints: np.ndarray  # SIFT keypoints of the region (N x 2, region pixels) ...
    descriptors: np.ndarray | None  # ... and their descriptors


def _gray(image: np.ndarray) -> np.ndarray:
    g = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return g.astype(np.float32)


def reference(image: np.ndarray, mesh: np.ndarray) -> Reference | None:
    """The frontal frame's face (``mesh``: face_mesh landmarks in ``image`` pixels)."""
    p = np.asarray(mesh, np.float64)[:POINTS, :2]
    lo, hi = p.min(0), p.max(0)
    side = float(max(hi - lo))
    if side < 8:
        return None
    s = SIZE / side
    margin = 0.1 * SIZE
    to_ref = np.array([[s, 0, margin - s * lo[0]], [0, s, margin - s * lo[1]], [0, 0, 1]])
    n = int(SIZE + 2 * margin)
    sharp = cv2.warpPerspective(_gray(image), to_ref, (n, n), flags=cv2.INTER_AREA)
    local = cv2.perspectiveTransform(p[None], to_ref)[0]
    mask = np.zeros((n, n), np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(local.astype(np.int32)), 1)
    keypoints, descriptors = _sift(sharp)
    return Reference(cv2.GaussianBlur(sharp, (0, 0), 1.5), mask, to_ref, local, keypoints, descriptors)


def _sift(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    found, descriptors = cv2.SIFT_create(nfeatures=400).detectAndCompute(np.clip(gray, 0, 255).astype(np.uint8), None)
    return np.array([k.pt for k in found], np.float64).reshape(-1, 2), descriptors


def _feature_homography(ref: Reference, gray: np.ndarray, p: np.ndarray) -> np.ndarray | None:
    """This frame -> the reference region from SIFT matches (RANSAC) around the face, independent of the
    landmarks (face_mesh can be far off on a steeply turned photo)."""
    if ref.descriptors is None or len(ref.keypoints) < 8:
        return None
    lo, hi = p.min(0), p.max(0)
    pad = 0.4 * (hi - lo)
    x0, y0 = np.maximum(0, (lo - pad).astype(int))
    x1, y1 = (hi + pad).astype(int) + 1
    region = gray[y0:y1, x0:x1]
    if min(region.shape[:2]) < 16:
        return None
    s = min(1.0, SIZE / max(float(max(hi - lo)), 1.0))  # at about the reference's scale: SIFT's cost
    region = cv2.resize(region, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else region
    points, descriptors = _sift(region)
    if descriptors is None or len(points) < 8:
        return None
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(descriptors, ref.descriptors, k=2)
    good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < 0.8 * m[1].distance]
    if len(good) < 8:
        return None
    src = points[[m.queryIdx for m in good]] / s + [x0, y0]
    dst = ref.keypoints[[m.trainIdx for m in good]]
    h, inliers = cv2.findHomography(src, dst, cv2.RANSAC, 3.0)
    return h if h is not None and int(inliers.sum()) >= 8 else None


def _correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    m = mask.astype(bool)
    x, y = a[m] - a[m].mean(), b[m] - b[m].mean()
    d = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / d) if d > 0 else 0.0


def flatness(ref: Reference, image: np.ndarray, mesh: np.ndarray, iterations: int = 40) -> float:
    """How well the best homography found makes this frame's face match the reference face: the
    correlation coefficient (at most 1) inside the reference's face hull, the best of three starts (the
    least-squares homography of all landmarks, a RANSAC one robust to a partly wrong mesh, and one from
    SIFT matches of the pixels, independent of the landmarks) each refined by ECC. A frame that cannot be registered at all counts as flat (1.0): no evidence of depth
    is no evidence of a live face."""
    p = np.asarray(mesh, np.float64)[:POINTS, :2]
    gray = _gray(image)
    n = ref.gray.shape[0]
    best = None
    starts = [cv2.findHomography(p, ref.mesh, method, threshold)[0]  # this frame's pixels -> the reference's
              for method, threshold in ((0, 0.0), (cv2.RANSAC, 0.02 * SIZE))]
    for h in starts + [_feature_homography(ref, gray, p)]:
        if h is None:
            continue
        warped = cv2.GaussianBlur(cv2.warpPerspective(gray, h, (n, n), flags=cv2.INTER_AREA), (0, 0), 1.5)
        warp = np.eye(3, dtype=np.float32)
        try:
            cc, _ = cv2.findTransformECC(ref.gray, warped, warp, cv2.MOTION_HOMOGRAPHY,
                                         (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, 1e-5),
                                         ref.mask, 1)
        except cv2.error:  # did not converge: the match at the start is what was found
            cc = _correlation(ref.gray, warped, ref.mask)
        best = max(best if best is not None else -1.0, float(cc))
    return 1.0 if best is None else best
