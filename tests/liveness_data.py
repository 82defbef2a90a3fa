"""Ceremonies built from the real videos of shared/data/faces/liveness, for tests/test_liveness.py.

Segments (0-based decode frame ranges, end exclusive) are transcribed from the action timelines in
liveness/MANIFEST.tsv. Directions: the manifest gives IMAGE directions; TURN_LEFT is the subject's left,
which in an unmirrored frame is the nose pointing to IMAGE-RIGHT (docs/LIVENESS.md).

A genuine ceremony for a challenge order is spliced from one video (one person): a neutral segment,
the first action's segment, a neutral segment, ..., the last action, a neutral segment; played on the
video's own timeline (capture times at its frame rate), every ``step``-th frame (about 15 frames/s).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from mobidem.liveness.challenges import Challenge as C
from mobidem.liveness import challenges as ch

VIDEOS = {
    # name: (file, {challenge: [(start, end)]}, neutral segments)
    "v01": ("v01_tvl_phone_turns_updown.mp4",
            {C.TURN_LEFT: (55, 175), C.TURN_RIGHT: (215, 325), C.LOOK_UP: (428, 492)},
            [(0, 25), (25, 50), (180, 210), (500, 530), (560, 590)]),
    "v02": ("v02_zubair_webcam_smile_turns.mov",
            {C.SMILE: (16, 34), C.TURN_RIGHT: (100, 134), C.TURN_LEFT: (136, 151)},
            [(0, 9), (8, 17), (180, 190), (189, 199)]),
    "v03": ("v03_krzysiek_webcam_turns_up.mp4",
            {C.TURN_LEFT: (34, 49), C.TURN_RIGHT: (49, 65), C.LOOK_UP: (65, 86)},
            [(0, 12), (2, 14), (116, 128), (126, 139)]),
    "v09": ("v09_lp_d5_studio_mouth_smile.mp4",
            {C.BLINK: (50, 60), C.OPEN_MOUTH: (62, 97), C.SMILE: (104, 139)},
            [(0, 12), (12, 24), (24, 36), (2, 14)]),
}


def seed_for(order) -> int:
    """The first seed whose draw is ``order`` (the server draws the same with test_seed)."""
    order = tuple(order)
    for seed in range(100_000):
        if ch.draw(len(order), seed) == order:
            return seed
    raise AssertionError(f"no seed draws {order}")


@lru_cache(maxsize=None)
def decoded(path: str) -> tuple[tuple[np.ndarray, ...], float]:
    cap = cv2.VideoCapture(path)
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        factor = -(-max(bgr.shape[:2]) // 960)  # a client's preview size: 1080p is sent at 960x540
        if factor > 1:
            bgr = cv2.resize(bgr, (bgr.shape[1] // factor, bgr.shape[0] // factor), interpolation=cv2.INTER_AREA)
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return tuple(frames), (fps if 0 < fps < 100 else 30.0)


STEP = {"v09": 1}  # its blinks last 2 frames at 30 fps: every frame; the others at ~15 fps


def splice(root: Path, video: str, order) -> tuple[list[np.ndarray], float]:
    """The genuine ceremony of ``video`` for ``order`` (frames at ~15 fps, at most 960 px, and that rate)."""
    name, actions, neutrals = VIDEOS[video]
    frames, fps = decoded(str(root / "videos" / name))
    step = STEP.get(video, max(1, round(fps / 15)))
    pieces = [neutrals[0]]
    for i, c in enumerate(order):
        pieces += [actions[c], neutrals[(i + 1) % len(neutrals)]]
    out = [frames[k] for a, b in pieces for k in range(a, min(b, len(frames)))][::step]
    return out, fps / step


# --------------------------------------------------------------------------- a photo held and turned like a card

# the card's rotation that moves face_mesh's nose signals the asked way (bench/turned_photo.py: the median
# du of a card at yaw -50 degrees is +0.05, i.e. towards a turn left; pitch +50 moves dv by -0.07, looking up)
TURN_AXIS = {C.TURN_LEFT: ("yaw", -1.0), C.TURN_RIGHT: ("yaw", 1.0), C.LOOK_UP: ("pitch", 1.0)}


def card_frame(photo: np.ndarray, yaw: float = 0.0, pitch: float = 0.0, shift=(0.0, 0.0), roll: float = 0.0,
               height: float = 300.0, size=(640, 480), focal: float = 600.0, wall: int = 110) -> np.ndarray:
    """One camera frame of a flat picture (``photo``) held ``height`` px tall at the centre of a ``size``
    frame, its plane rotated by ``yaw`` degrees about its own vertical centre line and by ``pitch`` about
    its horizontal one, then rolled and shifted in the image: the exact homography of a pinhole camera
    (focal length ``focal`` px, about 56 degrees across 640 px) looking at a rigid card. ``yaw`` > 0 brings
    the picture's right edge (image-right) towards the camera; ``pitch`` > 0 moves its top edge away."""
    h, w = photo.shape[:2]
    distance = focal  # the card's centre at this depth, its size in the same units as pixels at that depth
    s = height / h
    corners = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]]) * s
    a, b = np.deg2rad(yaw), np.deg2rad(pitch)
    ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), np.sin(b)], [0, -np.sin(b), np.cos(b)]])
    points = np.c_[corners, np.zeros(4)] @ (ry @ rx).T + [0, 0, distance]
    projected = focal * points[:, :2] / points[:, 2:]
    c, r = np.cos(np.deg2rad(roll)), np.sin(np.deg2rad(roll))
    dst = projected @ np.array([[c, -r], [r, c]]).T + [size[0] / 2 + shift[0], size[1] / 2 + shift[1]]
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    out = np.full((size[1], size[0], 3), wall, np.uint8)
    return cv2.warpPerspective(photo, cv2.getPerspectiveTransform(src, dst.astype(np.float32)), size, dst=out,
                               borderMode=cv2.BORDER_TRANSPARENT)


def face_card(photo: np.ndarray, face_px: float = 200.0) -> tuple[np.ndarray, float]:
    """What an attacker holds up: the photo cut to its largest face (OpenCV's Haar cascade, the face box
    widened 1.6x, so no other face of the photo shows) and the card's height in the frame that makes the
    face about ``face_px`` tall (close enough for the ceremony's minimum face size)."""
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    found = cascade.detectMultiScale(gray, 1.1, 4, minSize=(24, 24))
    h, w = photo.shape[:2]
    if not len(found):
        return photo, face_px * 1.6  # a face crop already
    x, y, fw, fh = max(found, key=lambda b: b[2] * b[3])
    cx, cy, half = x + fw / 2, y + fh / 2, 0.8 * max(fw, fh)
    x0, y0 = int(max(0, cx - half)), int(max(0, cy - half))
    x1, y1 = int(min(w, cx + half)), int(min(h, cy + half))
    return photo[y0:y1, x0:x1], face_px * (y1 - y0) / fh


def turned_card(photo: np.ndarray, order, fps: float = 10.0, seed: int = 0) -> list[np.ndarray]:
    """An attacker answering head-pose challenges with a held photo (``face_card``): 1.2 s frontal, then for each challenge
    of ``order`` the card turned (``TURN_AXIS``: about its vertical axis for a turn, its horizontal axis for
    looking up) to 30-50 degrees over 0.3 s, held 1.0 s, back to frontal over 0.3 s and held frontal 1.2 s;
    throughout, hand jitter (shift 5 px, roll 1.5 degrees, yaw/pitch 2 degrees), a lighting drift and
    sensor noise. The direction of each turn is the one that moves face_mesh's nose coordinate the asked
    way (measured by bench/turned_photo.py)."""
    rng = np.random.default_rng(seed)
    photo, height = face_card(photo)
    plan = [(0.0, 0.0)] * int(1.2 * fps)
    for c in order:
        axis, sign = TURN_AXIS[c]
        peak = sign * rng.uniform(30, 50)
        ramp = [peak * (k + 1) / int(0.3 * fps) for k in range(int(0.3 * fps))]
        angles = ramp + [peak] * int(1.0 * fps) + ramp[::-1][1:] + [0.0] * int(1.2 * fps)
        plan += [(a, 0.0) if axis == "yaw" else (0.0, a) for a in angles]
    frames = []
    for i, (yaw, pitch) in enumerate(plan):
        frame = card_frame(photo, yaw + rng.normal(0, 2), pitch + rng.normal(0, 2), rng.normal(0, 5, 2),
                           rng.normal(0, 1.5), height)
        frames.append(camera(frame, rng, i))
    return frames


def camera(frame: np.ndarray, rng: np.random.Generator, i: int = 0) -> np.ndarray:
    """A camera's lighting drift (gain, bias) and sensor noise on frame ``i``."""
    gain, bias = 1 + 0.1 * np.sin(i / 6) + rng.normal(0, 0.02), rng.normal(0, 4)
    noisy = frame.astype(np.float32) * gain + bias + rng.normal(0, 3, frame.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)
