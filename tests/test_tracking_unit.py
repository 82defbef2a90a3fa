"""Tracking's pure logic: ordered sections across concurrent frames, box association, the embedding
schedule, splits, and the quality score's factors. Expected values are written from the rules in
mobidem.tracking's docstrings, not read back from the code."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import numpy as np
import pytest

from mobidem.streaming import DropPolicy, StreamFrame, StreamSession
from mobidem.tracking import BoxTracker, StreamTracks, TrackingConfig, iou_matrix
from mobidem.tracking import quality


def box(cx, cy, side=80):
    return [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


# -- ordered sections


async def frames_of(n: int, gap: float = 0.0):
    for seq in range(1, n + 1):
        yield StreamFrame(seq, seq)
        if gap:
            await asyncio.sleep(gap)


def test_ordered_sections_run_in_sequence_order_while_frames_run_concurrently():
    entered = {0: [], 1: []}
    running = 0
    peak = 0

    async def process(frame, turn):
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(random.Random(frame.sequence).uniform(0, 0.01))  # detection: any order
        async with turn.section(0):
            entered[0].append(frame.sequence)
        await asyncio.sleep(random.Random(-frame.sequence).uniform(0, 0.01))
        async with turn.section(1):
            entered[1].append(frame.sequence)
        running -= 1
        return frame.sequence

    async def main():
        return [o async for o in StreamSession(process, 8, DropPolicy.NONE, sections=2).results(frames_of(40))]

    out = asyncio.run(main())
    assert [o.value for o in out] == list(range(1, 41))
    assert entered[0] == list(range(1, 41)) and entered[1] == list(range(1, 41))
    assert peak > 1  # the frames did overlap: the order comes from the sections, not from running one at a time


@pytest.mark.parametrize("policy,in_flight", [(DropPolicy.NONE, 8), (DropPolicy.LATEST_FRAME_WINS, 4)])
def test_dropped_and_failed_frames_neither_block_nor_reorder_the_sections(policy, in_flight):
    entered = []

    async def process(frame, turn):
        if frame.sequence % 5 == 0:
            raise ValueError("a bug on this frame")  # fails at once, before entering any section
        await asyncio.sleep(random.Random(frame.sequence).uniform(0, 0.02))
        async with turn.section(0):
            entered.append(frame.sequence)
        return frame.sequence

    async def main():
        session = StreamSession(process, in_flight, policy, sections=1)
        return [o async for o in session.results(frames_of(60, gap=0.002))]

    out = asyncio.run(asyncio.wait_for(main(), 20))  # a blocked chain would hang: bounded
    statuses = {o.status for o in out}
    assert "failed" in statuses and ("dropped" in statuses) == (policy == DropPolicy.LATEST_FRAME_WINS)
    ok = [o.frame.sequence for o in out if o.status == "ok"]
    # a frame dropped while in progress may have been in the section already: every answered frame was
    assert entered == sorted(entered) and set(ok) <= set(entered)


# -- box association


def test_a_moving_face_keeps_its_track_and_a_new_face_gets_a_new_one():
    tracker = BoxTracker(iou_min=0.3, lost_s=1.0)
    keys = []
    for k in range(30):
        a, _ = tracker.update(np.array([box(100 + 6 * k, 200)]), k / 30)
        keys.append(a[0].track.key)
    assert len(set(keys)) == 1
    a, _ = tracker.update(np.array([box(100 + 6 * 30, 200), box(500, 100)]), 30 / 30)
    assert a[0].track.key == keys[0] and a[1].new and a[1].track.key != keys[0]


def test_dropped_frames_are_a_longer_prediction_not_a_lost_face():
    """A face moving 20 px per frame seen only every 4th frame (80 px jumps, IoU with the last box
    under 0.3 for an 80-px box): the velocity prediction still continues the track."""
    tracker = BoxTracker(iou_min=0.3, lost_s=1.0)
    for k in range(6):
        a, _ = tracker.update(np.array([box(100 + 20 * k, 200)]), k / 30)
    first = a[0].track.key
    jump = box(100 + 20 * 9, 200)
    assert iou_matrix([box(100 + 20 * 5, 200)], [jump])[0, 0] < 0.3
    a, _ = tracker.update(np.array([jump]), 9 / 30)
    assert not a[0].new and a[0].track.key == first


def test_capture_times_that_go_backwards_neither_end_nor_move_tracks():
    tracker = BoxTracker(iou_min=0.3, lost_s=0.5)
    a, _ = tracker.update(np.array([box(200, 200)]), 10.0)
    key = a[0].track.key
    a, ended = tracker.update(np.array([box(202, 200)]), 3.0)  # a clock that jumped back 7 s
    assert a[0].track.key == key and not ended
    _, ended = tracker.update(np.zeros((0, 4)), 10.2)  # face missed once, 0.2 s after it was last seen
    assert not ended
    a, ended = tracker.update(np.array([box(204, 200)]), 10.3)
    assert a[0].track.key == key and not ended and tracker.now == 10.3


def test_a_track_unseen_longer_than_lost_s_ends():
    tracker = BoxTracker(iou_min=0.3, lost_s=0.5)
    a, _ = tracker.update(np.array([box(200, 200)]), 0.0)
    key = a[0].track.key
    _, ended = tracker.update(np.zeros((0, 4)), 0.4)
    assert not ended
    a, _ = tracker.update(np.array([box(200, 200)]), 0.45)  # back within lost_s: the same track
    assert a[0].track.key == key and a[0].reacquired  # unseen for 0.45 s: maybe another person
    _, ended = tracker.update(np.zeros((0, 4)), 1.0)
    assert [t.key for t in ended] == [key]
    a, _ = tracker.update(np.array([box(200, 200)]), 1.1)
    assert a[0].new and a[0].track.key != key


def test_faces_close_enough_to_be_swapped_are_flagged():
    tracker = BoxTracker(iou_min=0.3, lost_s=1.0)
    tracker.update(np.array([box(100, 200), box(400, 200)]), 0.0)
    a, _ = tracker.update(np.array([box(104, 200), box(396, 200)]), 1 / 30)
    assert not a[0].crowded and not a[1].crowded  # far apart: nothing ambiguous
    tracker = BoxTracker(iou_min=0.3, lost_s=1.0)
    tracker.update(np.array([box(200, 200), box(240, 200)]), 0.0)  # IoU 1/3: either could be either
    a, _ = tracker.update(np.array([box(202, 200), box(238, 200)]), 1 / 30)
    assert a[0].crowded and a[1].crowded


# -- the embedding schedule, identity over a track, splits


@dataclass
class Match:
    known: bool
    threshold: float
    distance: float


class NearestOf:
    """A gallery of fixed points at a fixed threshold (pure logic: no model involved)."""

    def __init__(self, threshold=0.6):
        self.threshold = threshold
        self.calls = 0

    def match(self, embedding, top_k):
        self.calls += 1
        return Match(bool(np.linalg.norm(embedding) <= self.threshold), self.threshold, float(np.linalg.norm(embedding)))


@dataclass
class Face:
    embedding: np.ndarray | None = None
    expression: np.ndarray | None = None
    match: object = None
    track_id: int = 0
    fresh_embedding: bool = False
    quality: float | None = None
    track_embeddings: int = 0
    smoothed_expression: np.ndarray | None = None


def step(tracks, t, embeddings, quality=0.5):
    """One frame with one face per embedding (all at the same still box, side by side)."""
    boxes = np.array([box(100 + 300 * i, 200) for i in range(len(embeddings))])
    plans = tracks.assign(boxes, [quality] * len(embeddings), t)
    faces = [Face(embedding=np.asarray(e, np.float32) if p.fresh else None,
                  expression=np.eye(7, dtype=np.float32)[3]) for p, e in zip(plans, embeddings)]
    tracks.conclude(plans, faces)
    return plans, faces


def test_a_still_face_is_embedded_when_new_then_every_k_frames():
    tracks = StreamTracks(TrackingConfig(embed_every_frames=10, embed_every_s=100.0), NearestOf())
    fresh = [step(tracks, k / 30, [[0.1] * 4])[0][0].fresh for k in range(31)]
    assert [k for k, f in enumerate(fresh) if f] == [0, 10, 20, 30]


def test_a_face_is_embedded_again_at_least_every_t_seconds():
    tracks = StreamTracks(TrackingConfig(embed_every_frames=1000, embed_every_s=0.5), NearestOf())
    fresh = [step(tracks, k * 0.1, [[0.1] * 4])[0][0].fresh for k in range(12)]
    assert [k for k, f in enumerate(fresh) if f] == [0, 5, 10]


def test_a_clearly_better_face_is_embedded_and_a_slightly_better_one_is_not():
    tracks = StreamTracks(TrackingConfig(embed_every_frames=1000, embed_every_s=100.0, quality_gain=1.25,
                                         quality_margin=0.05), NearestOf())
    assert step(tracks, 0.0, [[0.1] * 4], quality=0.4)[0][0].fresh
    assert not step(tracks, 0.1, [[0.1] * 4], quality=0.5)[0][0].fresh  # 0.5 < 0.4 x 1.25 + 0.05
    assert step(tracks, 0.2, [[0.1] * 4], quality=0.6)[0][0].fresh  # 0.6 > 0.55


def test_identity_is_the_quality_weighted_mean_of_the_tracks_embeddings():
    tracks = StreamTracks(TrackingConfig(embed_every_frames=1, max_embeddings=8), NearestOf(threshold=10.0))
    step(tracks, 0.0, [[1.0, 0, 0, 0]], quality=0.6)
    _, faces = step(tracks, 0.1, [[0, 1.0, 0, 0]], quality=0.2)
    track = next(iter(tracks.tracks.values()))
    np.testing.assert_allclose(track.identity_embedding(), [0.75, 0.25, 0, 0], atol=1e-6)  # (0.6 e1 + 0.2 e2) / 0.8
    assert faces[0].track_embeddings == 2 and faces[0].fresh_embedding


def test_a_fresh_embedding_far_from_the_track_splits_it_under_a_new_id():
    tracks = StreamTracks(TrackingConfig(embed_every_frames=1), NearestOf(threshold=0.6))
    _, faces = step(tracks, 0.0, [[0.1, 0, 0, 0]])
    first = faces[0].track_id
    _, faces = step(tracks, 0.1, [[0.1, 0.3, 0, 0]])  # 0.3 from the mean: the same person
    assert faces[0].track_id == first
    _, faces = step(tracks, 0.2, [[2.0, 0, 0, 0]])  # 1.8+ from the mean: another person
    assert faces[0].track_id != first and faces[0].track_embeddings == 1


def test_a_frame_that_fails_between_assign_and_conclude_lets_the_track_be_embedded_again():
    tracks = StreamTracks(TrackingConfig(embed_every_frames=1000, embed_every_s=100.0), NearestOf())
    plans = tracks.assign(np.array([box(100, 200)]), [0.5], 0.0)
    assert plans[0].fresh
    tracks.abandon(plans)  # its embedding never came
    plans, faces = step(tracks, 0.1, [[0.1] * 4])
    assert plans[0].fresh and faces[0].track_embeddings == 1


def test_expression_is_smoothed_over_the_track():
    tracks = StreamTracks(TrackingConfig(expression_alpha=0.25), NearestOf())
    happy, sad = np.eye(7, dtype=np.float32)[3], np.eye(7, dtype=np.float32)[4]
    for k, expression in enumerate([happy, happy, sad]):
        plans = tracks.assign(np.array([box(100, 200)]), [0.5], k / 30)
        faces = [Face(embedding=np.zeros(4, np.float32), expression=expression)]
        tracks.conclude(plans, faces)
    np.testing.assert_allclose(faces[0].smoothed_expression, 0.75 * happy + 0.25 * sad, atol=1e-6)


def test_without_identify_nothing_is_embedded():
    tracks = StreamTracks(TrackingConfig(), NearestOf(), identify=False)
    plans, faces = step(tracks, 0.0, [[0.1] * 4])
    assert not plans[0].fresh and faces[0].track_id > 0 and faces[0].match is None


# -- quality


def test_frontality_from_keypoints():
    right, left = (40.0, 50.0), (80.0, 50.0)
    assert quality.frontality(np.array([right, left, (60.0, 70.0)])) == pytest.approx(1.0)
    # nose a quarter of the eye distance towards one eye: 1 - 2 x 0.25
    assert quality.frontality(np.array([right, left, (70.0, 70.0)])) == pytest.approx(0.5)
    assert quality.frontality(np.array([right, left, (90.0, 70.0)])) == pytest.approx(0.05)  # past the eye: floor


def test_size_factor_saturates_at_full_size():
    assert quality.size_factor(np.array([0, 0, 50, 80])) == pytest.approx(0.5)  # shorter side 50 of 100
    assert quality.size_factor(np.array([0, 0, 300, 300])) == 1.0


def test_size_factor_of_a_box_away_from_the_origin():
    """Found by the mutation run (docs/TESTING.md): the sides are x2 - x1 and y2 - y1 wherever the box is,
    whichever is the shorter; an empty (inverted) box scores 0, as each factor is in [0, 1]."""
    assert quality.size_factor(np.array([200, 300, 240, 390])) == pytest.approx(0.4)  # width 40, height 90
    assert quality.size_factor(np.array([200, 300, 290, 330])) == pytest.approx(0.3)  # width 90, height 30
    assert quality.size_factor(np.array([300, 300, 290, 330])) == 0.0  # x2 < x1: no face, not a negative factor


def test_frontality_is_relative_to_the_eye_distance_and_stays_in_range():
    """Found by the mutation run: frontality depends on the offset relative to the eye distance, so a
    face scaled down to sub-pixel coordinates scores the same; coincident eyes (no eye line) get the
    floor, 0.05, never more than 1."""
    right, left = (40.0, 50.0), (80.0, 50.0)
    for scale in (1.0, 0.01):
        keypoints = np.array([right, left, (70.0, 70.0)]) * scale  # eye distance 40 px, then 0.4 px
        assert quality.frontality(keypoints) == pytest.approx(0.5)
    assert quality.frontality(np.array([(50.0, 50.0), (50.0, 50.0), (50.0, 70.0)])) == pytest.approx(0.05)


def checkerboard(side, level):
    """An RGB chip of 1-px squares of 0 and ``level``: the 4-neighbour Laplacian is +-4 x level at every
    pixel, so its variance is 16 x level^2."""
    grey = ((np.indices((side, side)).sum(axis=0) % 2) * level).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def test_sharpness_is_the_laplacian_variance_of_the_centre_mapped_to_v_over_v_plus_10():
    """Written from the module docstring: the variance v of the Laplacian of the chip's grey centre,
    mapped to v / (v + 10); a 2-D grey chip is taken as it is; texture only at the chip's edge does not
    count. face_quality is the product of the three factors."""
    flat = np.full((150, 150, 3), 128, np.uint8)
    assert quality.sharpness(flat) == 0.0
    assert quality.sharpness(checkerboard(150, 1)) == pytest.approx(16 / 26)  # v = 16
    assert quality.sharpness(checkerboard(150, 2)) == pytest.approx(64 / 74)  # v = 64
    assert quality.sharpness(checkerboard(150, 2)[:, :, 0]) == pytest.approx(64 / 74)
    red = checkerboard(150, 10) * np.array([1, 0, 0], np.uint8)  # the chip is RGB: grey = 0.299 x 10 -> 3
    assert quality.sharpness(red) == pytest.approx(144 / 154)  # v = 16 x 3^2 (as blue it would be 1: v = 16)
    framed = checkerboard(150, 50)
    framed[15:135, 15:135] = 128  # texture only in a 15-px frame (a tenth of the side)
    assert quality.sharpness(framed) == 0.0
    right, left, nose = (40.0, 50.0), (80.0, 50.0), (70.0, 70.0)  # frontality 0.5
    box = np.array([200, 300, 250, 390])  # shorter side 50: size 0.5
    assert quality.face_quality(checkerboard(150, 1), np.array([right, left, nose]), box) == \
        pytest.approx(0.5 * 0.5 * 16 / 26)


def test_blur_lowers_sharpness(faces):
    import cv2

    from conftest import person_photos

    image = cv2.cvtColor(cv2.imread(str(person_photos(faces, "lin_manuel_miranda")[0])), cv2.COLOR_BGR2RGB)
    chip = cv2.resize(image, (150, 150), interpolation=cv2.INTER_AREA)
    sharp, blurred = quality.sharpness(chip), quality.sharpness(cv2.GaussianBlur(chip, (0, 0), 3))
    assert 0 < blurred < sharp < 1 and blurred < 0.5 * sharp


def test_iou_of_boxes_of_different_shapes_by_hand():
    """Found by the mutation run (docs/TESTING.md): IoU worked out by hand for unequal boxes, so each box's
    own area counts (a 10x10 box against a 10x20 one overlapping by 5x10: 50 / (100 + 200 - 50))."""
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 0, 15, 20], [20, 20, 30, 30], [0, 0, 10, 10]], np.float32)
    assert iou_matrix(a, b) == pytest.approx(np.array([[50 / 250, 0.0, 1.0]]))
    assert iou_matrix(b[:1], a) == pytest.approx(np.array([[0.2]]))
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)
