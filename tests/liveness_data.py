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
