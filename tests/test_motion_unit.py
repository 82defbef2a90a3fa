"""Unit tests of the box tracker (tracking/motion.py), written for the survivors of the mutation run at
deb9509 (docs/TESTING.md): IoU edge cases by hand, the documented constant-velocity Kalman model
checked against a plain-numpy Kalman filter written from the model's description (not from OpenCV),
and the assignment flags (new, reacquired, crowded), keys and the lost_s/reacquire_s boundaries."""

from __future__ import annotations

import numpy as np
import pytest

from mobidem.tracking import BoxTracker, iou_matrix


def test_iou_of_disjoint_touching_and_tiny_boxes():
    a = np.array([[0, 0, 10, 10]])
    # beside it (overlapping rows, no columns), below it (overlapping columns, no rows), touching at an edge
    b = np.array([[20, 0, 30, 10], [0, 20, 10, 30], [10, 0, 20, 10], [0, 10, 10, 20]])
    assert iou_matrix(a, b).tolist() == [[0.0, 0.0, 0.0, 0.0]]
    # sub-pixel boxes are boxes too: identical ones overlap fully, half-shifted ones by 1/3
    t = np.array([[0, 0, 0.5, 0.5], [0.25, 0, 0.75, 0.5]])
    assert iou_matrix(t, t) == pytest.approx(np.array([[1.0, 1 / 3], [1 / 3, 1.0]]))
    # boxes without area overlap nothing, not even themselves
    assert iou_matrix([[5, 5, 5, 5]], [[5, 5, 5, 5], [0, 0, 10, 10]]).tolist() == [[0.0, 0.0]]
    # a flat list of 4k numbers is k boxes, on either side
    assert iou_matrix([0, 0, 10, 10, 20, 0, 30, 10], [0, 0, 10, 10]).shape == (2, 1)
    assert iou_matrix([0, 0, 10, 10], [0, 0, 10, 10, 0, 0, 10, 20]).tolist() == [[1.0, 0.5]]


class RefKalman:
    """The model of motion.py's docstring and comments, in float64 numpy: state (cx, cy, w, h) and their
    velocities, constant velocity in capture time; size s = max(w, h, 8 px); initial position sd 5 % of s,
    velocity sd 2 s per second; white acceleration of 3 s px/s^2 (discrete Q of a constant-velocity model);
    measurement sd 4 % of the measured box's size. No time elapsed: no prediction."""

    def __init__(self, box, t):
        s = max(box[2] - box[0], box[3] - box[1], 8.0)
        self.x = np.r_[self._z(box), np.zeros(4)]
        self.P = np.diag([(0.05 * s) ** 2] * 4 + [(2.0 * s) ** 2] * 4)
        self.t = t

    @staticmethod
    def _z(box):
        x0, y0, x1, y1 = box
        return np.array([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], float)

    def step(self, box, t):
        dt = max(0.0, t - self.t)
        if dt > 0:
            s = max(self.x[2], self.x[3], 8.0)
            a = 3.0 * s
            F = np.eye(8)
            F[:4, 4:] = np.eye(4) * dt
            G = np.r_[np.full(4, 0.5 * dt * dt), np.full(4, dt)] * a  # position, velocity per unit noise
            Q = np.zeros((8, 8))
            for i in range(4):
                idx = [i, i + 4]
                Q[np.ix_(idx, idx)] = np.outer(G[idx], G[idx])
            self.x = F @ self.x
            self.P = F @ self.P @ F.T + Q
            self.t = t
        z = self._z(box)
        s = max(z[2], z[3], 8.0)
        H = np.hstack([np.eye(4), np.zeros((4, 4))])
        R = np.eye(4) * (0.04 * s) ** 2
        K = self.P @ H.T @ np.linalg.inv(H @ self.P @ H.T + R)
        self.x = self.x + K @ (z - H @ self.x)
        self.P = (np.eye(8) - K @ H) @ self.P

    def box_at(self, t):
        c = self.x[:4] + self.x[4:] * max(0.0, t - self.t)
        w, h = max(c[2], 1.0), max(c[3], 1.0)
        return np.array([c[0] - w / 2, c[1] - h / 2, c[0] + w / 2, c[1] + h / 2])


def run_against_reference(frames):
    tracker = BoxTracker(iou_min=0.05, lost_s=5.0)
    ref = None
    for t, box in frames:
        out, _ = tracker.update(np.array([box], np.float32), t)
        assert len(tracker.tracks) == 1 and out[0].track.key == 1
        if ref is None:
            ref = RefKalman(np.array(box, float), t)
        else:
            ref.step(np.array(box, float), t)
        for ahead in (0.0, 0.5):
            got = tracker.expected(t + ahead, within_s=10.0)
            assert got.shape == (1, 4)
            assert got[0] == pytest.approx(ref.box_at(t + ahead), abs=0.02), (t, ahead)


def test_a_wide_fast_face_follows_the_documented_kalman_model():
    # 60x40 px (width decides the size), moving 300 px/s right and 80 px/s down at irregular times,
    # growing; the velocity soon exceeds the box's sides
    frames = []
    for t in (0.0, 0.04, 0.1, 0.13, 0.2, 0.35, 0.4, 0.52):
        w, h = 60 + 20 * t, 40 + 10 * t
        cx, cy = 100 + 300 * t, 200 + 80 * t
        frames.append((t, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
    run_against_reference(frames)


def test_a_tall_face_follows_the_documented_kalman_model():
    frames = []
    for t in (1.0, 1.05, 1.1, 1.3, 1.33):
        w, h = 30.0, 50 - 10 * (t - 1)
        cx, cy = 60 - 40 * (t - 1), 80
        frames.append((t, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
    run_against_reference(frames)


def test_a_tiny_face_uses_the_8_pixel_floor():
    frames = []
    for t in (0.0, 0.1, 0.2, 0.3, 0.5, 1.5):  # a gap of exactly 1 s too
        cx = 20 + 10 * t
        frames.append((t, [cx - 3, 10, cx + 3, 15]))
    run_against_reference(frames)


def test_a_repeated_capture_time_corrects_from_the_current_estimate():
    """Two detections at one capture time (a client that repeats a timestamp, or one that goes backwards
    and is held): the second correction starts from the first one's estimate, not from a stale or empty
    prior (OpenCV's correct() reads the prior that only predict() writes). Before the fix a new track
    seen twice at t=0 collapsed to a 1x1 box at the origin."""
    box = [100, 100, 150, 150]
    run_against_reference([(0.0, box), (0.0, box), (0.1, [105, 100, 155, 150]), (0.1, [106, 100, 156, 150]),
                           (0.05, [108, 100, 158, 150]), (0.2, [110, 101, 160, 151])])


def test_a_still_face_is_expected_where_it_was_and_sub_2px_boxes_keep_their_size():
    tracker = BoxTracker()
    tracker.update(np.array([[10, 20, 50, 80]], np.float32), 0.0)
    assert tracker.expected(0.0, 1.0).tolist() == [[10, 20, 50, 80]]
    tracker = BoxTracker()
    tracker.update(np.array([[10, 20, 11.5, 21.5]], np.float32), 0.0)
    assert tracker.expected(0.0, 1.0).tolist() == [[10, 20, 11.5, 21.5]]


def test_keys_flags_and_hits():
    tracker = BoxTracker()
    out, ended = tracker.update([[0, 0, 10, 10], [100, 0, 110, 10]], 0.0)
    assert [(a.track.key, a.new, a.reacquired, a.crowded) for a in out] == [(1, True, False, False), (2, True, False, False)]
    assert ended == []
    out, _ = tracker.update([[0, 0, 10, 10], [200, 0, 210, 10]], 0.1)
    assert [(a.track.key, a.new, a.reacquired, a.crowded) for a in out] == [(1, False, False, False), (3, True, False, False)]
    assert out[0].new is False and out[0].track.hits == 2
    out, _ = tracker.update([[0, 0, 10, 10]], 0.2)
    assert out[0].track.hits == 3


def test_the_defaults_iou_min_0_3_lost_after_1_s():
    # a 10x10 box shifted 5 px overlaps by 50 / 150 = 1/3 >= 0.3: the same track
    tracker = BoxTracker()
    tracker.update([[0, 0, 10, 10]], 0.0)
    out, _ = tracker.update([[5, 0, 15, 10]], 0.0)
    assert out[0].track.key == 1 and not out[0].new
    # unseen for exactly 1 s: still alive; 1.5 s: ended
    tracker = BoxTracker()
    tracker.update([[0, 0, 10, 10]], 0.0)
    out, ended = tracker.update([[500, 500, 510, 510]], 1.0)
    assert ended == [] and [tr.key for tr in tracker.tracks] == [1, 2]
    out, _ = tracker.update([[0, 0, 10, 10]], 1.0)
    assert out[0].track.key == 1 and out[0].reacquired
    tracker = BoxTracker()
    tracker.update([[0, 0, 10, 10]], 0.0)
    out, ended = tracker.update([], 1.5)
    assert [tr.key for tr in ended] == [1] and tracker.tracks == []


def test_iou_exactly_at_iou_min_is_a_match():
    # 10x10 boxes overlapping 5x10: IoU 50 / 150 = 1/3 exactly (a float64 third)
    third = 50 / 150
    tracker = BoxTracker(iou_min=third)
    tracker.update([[0, 0, 10, 10]], 0.0)
    out, _ = tracker.update([[5, 0, 15, 10]], 0.0)
    assert out[0].track.key == 1 and not out[0].crowded


def test_lost_and_reacquire_boundaries_are_inclusive():
    # times in binary fractions so the differences are exact
    tracker = BoxTracker(lost_s=0.5, reacquire_s=0.25)
    tracker.update([[0, 0, 10, 10]], 0.0)
    out, _ = tracker.update([[0, 0, 10, 10]], 0.25)  # unseen exactly reacquire_s: not reacquired
    assert not out[0].reacquired
    out, ended = tracker.update([], 0.75)  # unseen exactly lost_s: kept
    assert ended == [] and [tr.key for tr in tracker.tracks] == [1]
    out, ended = tracker.update([], 1.0)  # unseen 0.75 > lost_s: ended
    assert [tr.key for tr in ended] == [1] and tracker.tracks == []


def test_crowded_when_a_box_could_go_to_two_tracks_or_a_track_to_two_boxes():
    # one track, two boxes that both overlap it enough: the matched one is crowded, the other is new
    tracker = BoxTracker()
    tracker.update([[0, 0, 10, 10]], 0.0)
    out, _ = tracker.update([[0, 0, 10, 10], [2, 0, 12, 10]], 0.0)
    assert [(a.track.key, a.new, a.crowded) for a in out] == [(1, False, True), (2, True, False)]
    # two tracks, one box overlapping both: crowded
    tracker = BoxTracker()
    tracker.update([[0, 0, 10, 10], [4, 0, 14, 10]], 0.0)
    out, _ = tracker.update([[2, 0, 12, 10]], 0.0)
    assert out[0].crowded and not out[0].new
    # two tracks far apart, each box overlapping only its own: not crowded
    tracker = BoxTracker()
    tracker.update([[0, 0, 10, 10], [100, 0, 110, 10]], 0.0)
    out, _ = tracker.update([[1, 0, 11, 10], [101, 0, 111, 10]], 0.0)
    assert [(a.track.key, a.crowded) for a in out] == [(1, False), (2, False)]


def test_expected_lists_the_tracks_seen_within_the_window():
    tracker = BoxTracker(lost_s=10.0)
    tracker.update([[0, 0, 10, 10]], 4.0)
    tracker.update([[0, 0, 10, 10], [100, 0, 110, 10]], 5.0)  # the first seen again, a second one new
    tracker.update([[100, 0, 110, 10]], 5.5)
    # at 6.0 within 1 s: the first (seen at 5.0, exactly 1 s ago) and the second
    assert tracker.expected(6.0, within_s=1.0).tolist() == [[0, 0, 10, 10], [100, 0, 110, 10]]
    assert tracker.expected(6.25, within_s=1.0).tolist() == [[100, 0, 110, 10]]
    assert tracker.expected(7.0, within_s=1.0).shape == (0, 4)


def test_a_second_box_overlapping_exactly_iou_min_makes_it_crowded():
    third = 50 / 150
    tracker = BoxTracker(iou_min=third)
    tracker.update([[0, 0, 10, 10]], 0.0)
    out, _ = tracker.update([[0, 0, 10, 10], [5, 0, 15, 10]], 0.0)
    assert [(a.track.key, a.new, a.crowded) for a in out] == [(1, False, True), (2, True, False)]
