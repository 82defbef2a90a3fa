"""Which detection continues which track: SORT's recipe with library parts.

Each track's box (centre, width, height and their velocities) is followed by OpenCV's Kalman
filter under a constant-velocity model in capture time, so a dropped frame or a slower camera is a
longer prediction, not a lost face. Detections are assigned to tracks by SciPy's Hungarian solver
on IoU; a pair is accepted when it overlaps by at least ``iou_min`` with the predicted box or with
the box last seen (the latter keeps a still face matched when timestamps are irregular, e.g. a
client that sends a file as fast as it can). Unmatched detections start tracks; a track unseen for
more than ``lost_s`` seconds of capture time ends. Times that go backwards are held at the latest
time seen (a reordered timestamp never moves a filter backwards).

Why not a tracker library: ByteTrack and OC-SORT on PyPI come with `supervision` (PyAV, matplotlib)
or `norfair` (filterpy, which pulls matplotlib, and counts loss in frames, not time); the part
written here is the assignment glue, about a hundred lines (docs/TRACKING.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` [N, 4] with every box of ``b`` [M, 4] (x0, y0, x1, y1)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def _state(box: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], np.float32)


def _box(state: np.ndarray) -> np.ndarray:
    cx, cy, w, h = (float(v) for v in state[:4])
    w, h = max(w, 1.0), max(h, 1.0)
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)


class _BoxFilter:
    """OpenCV's Kalman filter over (cx, cy, w, h, and their velocities), in pixels and seconds."""

    def __init__(self, box: np.ndarray, t: float):
        self.kf = cv2.KalmanFilter(8, 4)
        self.kf.measurementMatrix = np.hstack([np.eye(4), np.zeros((4, 4))]).astype(np.float32)
        size = float(max(_state(box)[2:4].max(), 8.0))
        self.kf.statePost = np.concatenate([_state(box), np.zeros(4, np.float32)]).reshape(8, 1)
        # position known to a few pixels, velocity unknown (up to a few face widths per second)
        self.kf.errorCovPost = np.diag([(0.05 * size) ** 2] * 4 + [(2.0 * size) ** 2] * 4).astype(np.float32)
        self.t = t

    def predict(self, t: float) -> np.ndarray:
        dt = max(0.0, t - self.t)
        if dt == 0.0:
            # no time passed: the next correction starts from the current estimate (OpenCV's correct()
            # reads statePre/errorCovPre, which only predict() writes: a fresh filter's are zeros)
            self.kf.statePre = self.kf.statePost.copy()
            self.kf.errorCovPre = self.kf.errorCovPost.copy()
            return _box(self.kf.statePost.ravel())
        size = float(max(self.kf.statePost[2:4].max(), 8.0))
        f = np.eye(8, dtype=np.float32)
        f[:4, 4:] = np.eye(4, dtype=np.float32) * dt
        self.kf.transitionMatrix = f
        accel = 3.0 * size  # pixels/s^2: a head turning, a hand-held phone moving
        q = np.zeros((8, 8), np.float32)
        q[:4, :4] = np.eye(4) * (0.5 * accel * dt * dt) ** 2
        q[4:, 4:] = np.eye(4) * (accel * dt) ** 2
        q[:4, 4:] = q[4:, :4] = np.eye(4) * (0.5 * accel * dt * dt) * (accel * dt)
        self.kf.processNoiseCov = q
        self.t = t
        return _box(self.kf.predict().ravel())

    def peek(self, t: float) -> np.ndarray:
        """The box expected at time ``t``, without advancing the filter."""
        state = self.kf.statePost.ravel()
        dt = max(0.0, t - self.t)
        return _box(np.concatenate([state[:4] + state[4:] * dt]))

    def correct(self, box: np.ndarray) -> None:
        size = float(max(_state(box)[2:4].max(), 8.0))
        self.kf.measurementNoiseCov = np.eye(4, dtype=np.float32) * (0.04 * size) ** 2
        self.kf.correct(_state(box).reshape(4, 1))


@dataclass
class MotionTrack:
    key: int  # never reused within a stream
    box: np.ndarray  # the box last matched
    last_seen: float
    filter: _BoxFilter = field(repr=False)
    hits: int = 1
    predicted: np.ndarray | None = None


@dataclass(frozen=True)
class Assignment:
    """One detection's track in this frame."""

    track: MotionTrack
    new: bool  # the track starts here
    reacquired: bool  # the track was unseen in the frame(s) before this one
    crowded: bool  # another assignment was possible (faces near each other): the tracks may have swapped


class BoxTracker:
    def __init__(self, iou_min: float = 0.3, lost_s: float = 1.0, reacquire_s: float = 0.15):
        self.iou_min = iou_min
        # a track unseen longer than this (a few frames: more than a detector's flicker) is "reacquired"
        # when found again: the face may be another person's
        self.reacquire_s = reacquire_s
        self.lost_s = lost_s
        self.tracks: list[MotionTrack] = []
        self.now = float("-inf")
        self._next_key = 1

    def expected(self, t: float, within_s: float) -> np.ndarray:
        """Where the tracks seen in the last ``within_s`` seconds are expected at time ``t`` [N, 4]."""
        t = max(t, self.now)
        live = [tr for tr in self.tracks if t - tr.last_seen <= within_s]
        return np.array([tr.filter.peek(t) for tr in live], np.float32).reshape(-1, 4)

    def update(self, boxes: np.ndarray, t: float) -> tuple[list[Assignment], list[MotionTrack]]:
        """Assign this frame's boxes [N, 4]; returns one Assignment per box and the tracks that ended."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        self.now = t = max(t, self.now)
        for track in self.tracks:
            track.predicted = track.filter.predict(t)
        pairs: dict[int, int] = {}
        ambiguous: set[int] = set()
        if self.tracks and len(boxes):
            predicted = np.stack([tr.predicted for tr in self.tracks])
            last = np.stack([tr.box for tr in self.tracks])
            overlap = np.maximum(iou_matrix(predicted, boxes), iou_matrix(last, boxes))
            rows, cols = linear_sum_assignment(-overlap)
            pairs = {int(c): int(r) for r, c in zip(rows, cols) if overlap[r, c] >= self.iou_min}
            # another assignment was possible (two faces near each other, crossing, one occluding the
            # other): the tracks may have been swapped, so the face is embedded again
            valid = overlap >= self.iou_min
            ambiguous = {c for c, r in pairs.items() if valid[r].sum() > 1 or valid[:, c].sum() > 1}
        out = []
        for i, box in enumerate(boxes):
            if i in pairs:
                track = self.tracks[pairs[i]]
                reacquired = t - track.last_seen > self.reacquire_s
                track.filter.correct(box)
                track.box, track.last_seen, track.hits = box, t, track.hits + 1
                out.append(Assignment(track, new=False, reacquired=reacquired, crowded=i in ambiguous))
            else:
                track = MotionTrack(self._next_key, box, t, _BoxFilter(box, t))
                self._next_key += 1
                out.append(Assignment(track, new=True, reacquired=False, crowded=False))
        started = [a.track for a in out if a.new]
        ended = [tr for tr in self.tracks if t - tr.last_seen > self.lost_s]
        self.tracks = [tr for tr in self.tracks if t - tr.last_seen <= self.lost_s] + started
        return out, ended
