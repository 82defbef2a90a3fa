"""The ceremony's pure parts: the decision state machine, the challenge draw, the failure limiter."""

from __future__ import annotations

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
    action_face = {C.TURN_LEFT: face(u=0.3), C.TURN_RIGHT: face(u=-0.3), C.LOOK_UP: face(v=0.2),
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
