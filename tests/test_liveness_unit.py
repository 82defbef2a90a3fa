"""The ceremony's pure parts: the decision state machine, the challenge draw, the failure limiter."""

from __future__ import annotations

import dataclasses

from mobidem.liveness import challenges as ch
from mobidem.liveness.challenges import Challenge as C
from mobidem.liveness.decision import Ceremony, FaceSignals, Observation, Outcome, Prompt
from mobidem.liveness.limits import FailureLimiter

NEUTRAL = dict(track_id=1, size=200, score=0.95, presence=1.0, u=0.0, v=0.4, eye=0.3, mouth=0.02, happy=0.0)


def face(**kw) -> FaceSignals:
    return FaceSignals(**{**NEUTRAL, **kw})


def play(ceremony, faces, fps=15.0, t0=100.0):
    events = []
    for i, f in enumerate(faces):
        e = ceremony.feed(Observation(t0 + i / fps, tuple(f) if isinstance(f, list) else (f,)))
        if e is not None:
            events.append(e)
        if isinstance(e, Outcome):
            break
    return events


def genuine(order, neutral=5, action=4):
    action_face = {C.TURN_LEFT: face(u=0.3, flatness=0.6), C.TURN_RIGHT: face(u=-0.3, flatness=0.6),
                   C.LOOK_UP: face(v=0.2, flatness=0.6),  # a head turning shows depth (parallax.flatness < 0.95)
                   C.SMILE: face(happy=0.95), C.OPEN_MOUTH: face(mouth=0.4), C.BLINK: face(eye=0.1)}
    frames = [face()] * neutral
    for c in order:
        frames += [action_face[c]] * action + [face()] * neutral
    return frames


def test_the_asked_actions_in_order_pass():
    order = (C.TURN_LEFT, C.BLINK, C.SMILE)
    events = play(Ceremony(order), genuine(order))
    assert [e.challenge for e in events if isinstance(e, Prompt)] == [C.BLINK, C.SMILE]  # the first comes at start
    assert events[-1].passed and 0.5 <= events[-1].score <= 1 and all(t.completed for t in events[-1].timings)


def test_another_order_fails_on_the_wrong_action():
    events = play(Ceremony((C.TURN_RIGHT, C.BLINK, C.SMILE)), genuine((C.TURN_LEFT, C.BLINK, C.SMILE)))
    assert not events[-1].passed and "something else" in events[-1].reasons[0]


def test_a_pose_counts_only_on_a_face_with_depth():
    """A photo turned like a card moves the nose signals but stays flat (flatness ~1): the turns and
    looking up do not count, the challenge times out saying why; the bound is inclusive (flatness <=
    max_flatness = 0.95 counts); other challenges do not need depth."""
    order = (C.TURN_LEFT, C.LOOK_UP, C.TURN_RIGHT)
    card = [face()] * 5 + [face(u=0.3, flatness=1.0)] * 10 + [face()] * 100  # turned, flat, back
    events = play(Ceremony(order), card)
    assert not events[-1].passed and not events[-1].timings[0].completed
    assert "not completed within 6 s" in events[-1].reasons[0] and "flat face" in events[-1].reasons[0]
    at_bound = [dataclasses.replace(f, flatness=0.95) if f.flatness < 1 else f for f in genuine(order)]
    assert play(Ceremony(order), at_bound)[-1].passed
    above = [dataclasses.replace(f, flatness=0.951) if f.flatness < 1 else f for f in genuine(order)]
    assert not play(Ceremony(order), above + [face()] * 100)[-1].passed
    still = (C.BLINK, C.SMILE, C.OPEN_MOUTH)
    assert play(Ceremony(still), genuine(still))[-1].passed  # every frame flatness 1.0


def test_a_still_face_times_out():
    c = Ceremony((C.BLINK, C.SMILE, C.LOOK_UP))
    events = play(c, [face()] * 200)
    assert not events[-1].passed and "not completed within 6 s" in events[-1].reasons[0]


def test_two_faces_identity_change_gaps_and_fps_fail():
    order = (C.TURN_LEFT, C.BLINK, C.SMILE)
    two = genuine(order)[:8] + [[face(), face(track_id=2, size=150)]] * 3
    assert "faces in view" in play(Ceremony(order), two)[-1].reasons[0]
    swap = genuine(order)[:8] + [face(track_id=2, identity_distance=0.9, identity_threshold=0.6)] * 3
    assert "track changed" in play(Ceremony(order), swap)[-1].reasons[0]
    same = genuine(order)[:8] + [face(track_id=2, identity_distance=0.3, identity_threshold=0.6)] * 3
    assert not any(isinstance(e, Outcome) for e in play(Ceremony(order), same))  # a new track, same person
    c = Ceremony(order)
    c.feed(Observation(1.0, (face(),)))
    assert "gap" in c.feed(Observation(2.0, (face(),))).reasons[0]
    assert "frames per second" in play(Ceremony(order), genuine(order), fps=200)[-1].reasons[0]
    assert "too small" in play(Ceremony(order), [face(size=40)] * 30)[-1].reasons[0]


def test_draw_is_seeded_only_when_asked():
    assert ch.draw(3, 7) == ch.draw(3, 7) and len(set(ch.draw(3, 7))) == 3
    assert len({ch.draw(3) for _ in range(50)}) > 1  # secrets.SystemRandom


def test_failure_limiter_window():
    now = [0.0]
    limiter = FailureLimiter(2, 180, clock=lambda: now[0])
    limiter.failed("k")
    assert not limiter.blocked("k")
    limiter.failed("k")
    assert limiter.blocked("k") == 180
    now[0] = 180.5
    assert not limiter.blocked("k")


def _textured(seed=0, size=(480, 640)):
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, size).astype(np.float32)
    img = cv2.GaussianBlur(noise, (0, 0), 3) * 0.6 + cv2.GaussianBlur(noise, (0, 0), 1) * 0.4
    img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return np.dstack([img] * 3)


def test_flatness_of_a_plane_and_of_a_bulge():
    """parallax.flatness on synthetic pictures: the same texture under a homography (a card turned
    ~35 degrees) matches the reference (>= 0.99), even when the landmarks given for it are badly wrong
    (the SIFT start); a local non-planar displacement (a 'nose' 40 px across moved 12 px against the
    rest, the landmarks moved with it) does not (< 0.95, the decision's max_flatness)."""
    import cv2
    import numpy as np

    from mobidem.liveness import parallax

    image = _textured()
    rng = np.random.default_rng(1)
    mesh = np.c_[rng.uniform(240, 400, 468), rng.uniform(160, 340, 468)]  # a 160 x 180 px face
    ref = parallax.reference(image, mesh)
    src = np.float32([[240, 160], [400, 160], [400, 340], [240, 340]])
    dst = np.float32([[250, 150], [380, 170], [380, 330], [250, 350]])  # the right side turned away
    h = cv2.getPerspectiveTransform(src, dst)
    turned = cv2.warpPerspective(image, h, (640, 480))
    moved = cv2.perspectiveTransform(mesh[None], h)[0]
    assert parallax.flatness(ref, turned, moved) >= 0.99
    wrong = moved + [40, -30]  # face_mesh far off on a steeply turned picture (the landmark starts fail: ~0)
    assert parallax.flatness(ref, turned, wrong) >= 0.99
    ys, xs = np.mgrid[0:480, 0:640].astype(np.float32)
    bump = np.exp(-((xs - 320) ** 2 + (ys - 250) ** 2) / (2 * 20.0 ** 2))
    bulged = cv2.remap(image, xs - 12 * bump, ys, cv2.INTER_LINEAR)  # content near (320, 250) moves 12 px right
    near = np.exp(-((mesh[:, 0] - 320) ** 2 + (mesh[:, 1] - 250) ** 2) / (2 * 20.0 ** 2))
    assert parallax.flatness(ref, bulged, mesh + np.c_[12 * near, 0 * near]) < 0.95
