"""Liveness ceremonies end to end: a real server (face_multitask + face_mesh) on a real Triton.

Bona fide presentations are genuine ceremonies spliced from the real videos of
shared/data/faces/liveness (tests/liveness_data.py says how: one person's own neutral and action
segments, in the order the seed asks, on the video's timeline). Attacks, each type measured
separately (ISO/IEC 30107-3: APCER per attack type, BPCER over the bona fide ceremonies):

1. held photo: identity photos of shared/data/faces/identities (the first of each person) pasted on a
   background as a hand-held print: random per-frame shift and rotation (hand jitter), a perspective
   tilt that drifts, brightness/contrast changes and sensor noise, generated here with a fixed RNG;
2. the real attack samples of liveness/attacks: the three screen-replay videos (played for a seed that
   their content does not follow) and the attack photos and crops, held as in 1;
3. a replay of a real video (v01 whole) for seeds whose order the video does not follow;
4. a replay of a genuine ceremony recorded for another seed;
5. a face swap (the first challenge by one person, the rest by another) and a second face
   (two people side by side) mid-ceremony;
7. a photo turned like a card (tests/liveness_data.turned_card): identity photos and real attack photos
   held and turned in 3-D (the exact homography of the card's plane rotated 30-50 degrees about its vertical
   axis for a turn, its horizontal axis for looking up, with hand jitter, back to frontal between
   challenges) for seeds whose draw is all head poses, the one draw in 20 a still picture could answer.

A photo with the eyes cut out is out of scope: no such sample exists in the data and a synthetic hole
would not be an honest stand-in. The server runs with liveness_window_s=3 (stricter than the
default 6; every genuine challenge here completes within 1.3 s) to keep the attacks short.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys

import cv2
import grpc
import numpy as np
import pytest

from conftest import need, person_photos
from liveness_data import VIDEOS, decoded, seed_for, splice, turned_card
from mobidem.liveness.challenges import Challenge as C
from mobidem.liveness.client import ceremony, timed
from mobidem.client import to_image
from mobidem.v1 import mobidem_pb2 as pb

PASS, FAIL = pb.LivenessOutcome.DECISION_PASS, pb.LivenessOutcome.DECISION_FAIL
MAX_BPCER = 0.05  # the acceptance: at most 5 % of bona fide ceremonies rejected
MAX_APCER = 0.0  # goal: no attack of any type passes
RESULTS: dict[str, list[bool]] = {}  # type -> [passed?]
DURATIONS: list[float] = []  # capture-time seconds of the genuine ceremonies


def record(kind: str, outcome) -> None:
    RESULTS.setdefault(kind, []).append(outcome is not None and outcome.decision == PASS)


@pytest.fixture(scope="module")
def root(faces):
    path = faces / "liveness"
    need((path / "MANIFEST.tsv").is_file(), f"the liveness data is absent ({path})")
    return path


@pytest.fixture(scope="module")
def server(start_mesh_server):
    return start_mesh_server(liveness_test_mode="true", liveness_max_failures="0", liveness_window_s="3")


@pytest.fixture(scope="module")
def stub(server):
    with server.client() as c:
        yield c.liveness


def run(stub, frames, fps, order=None, seed=None, **kw):
    seed = seed if seed is not None else seed_for(order)
    return ceremony(stub, timed(frames, fps), test_seed=seed, **kw)


# --------------------------------------------------------------------------- bona fide


GENUINE = [(video, order) for video, (_, actions, _) in VIDEOS.items()
           for order in list(itertools.permutations(actions))[::2]]  # 3 of the 6 orders per video


@pytest.mark.parametrize("video,order", GENUINE, ids=[f"{v}-{'-'.join(c.name for c in o)}" for v, o in GENUINE])
def test_genuine_ceremony_passes(stub, root, video, order):
    frames, fps = splice(root, video, order)
    prompts, outcome = run(stub, frames, fps, order)
    record("bona fide", outcome)
    DURATIONS.append(outcome.duration_s)
    assert [p.challenge for p in prompts] == [int(c) for c in order]  # the seed's order, one prompt at a time
    assert [p.index for p in prompts] == [0, 1, 2] and all(p.count == 3 for p in prompts)
    assert outcome.decision == PASS, list(outcome.reasons)
    assert 0.5 <= outcome.score <= 1.0 and not outcome.reasons
    starts = [t.started_s for t in outcome.challenges]
    assert starts == sorted(starts) and all(t.completed for t in outcome.challenges)
    assert all(0 < t.completed_s - t.started_s <= t.window_s for t in outcome.challenges)


# --------------------------------------------------------------------------- attack 1, 2: held pictures


def held(photo: np.ndarray, seconds: float = 4.0, fps: float = 10.0, seed: int = 0) -> list[np.ndarray]:
    """A picture held in front of a camera: a 640x480 frame, the picture ~300 px tall on a grey wall,
    moved by a hand (shift and rotation jitter), tilted in perspective (drifting), with changing
    brightness and contrast and sensor noise."""
    rng = np.random.default_rng(seed)
    h, w = photo.shape[:2]
    scale = 300 / h
    pw, ph = w * scale, h * scale
    frames = []
    for i in range(int(seconds * fps)):
        cx, cy = 320 + rng.normal(0, 6), 240 + rng.normal(0, 6)
        angle = np.radians(rng.normal(0, 2))
        tilt = 0.08 * np.sin(i / 7) + rng.normal(0, 0.01)  # the print turns a little about its vertical axis
        corners = np.array([[-pw / 2 * (1 - tilt), -ph / 2 * (1 + tilt)], [pw / 2 * (1 + tilt), -ph / 2 * (1 - tilt)],
                            [pw / 2 * (1 + tilt), ph / 2 * (1 - tilt)], [-pw / 2 * (1 - tilt), ph / 2 * (1 + tilt)]])
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        dst = (corners @ rot.T + [cx, cy]).astype(np.float32)
        src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
        wall = np.full((480, 640, 3), 110, np.uint8)
        frame = cv2.warpPerspective(photo, cv2.getPerspectiveTransform(src, dst), (640, 480), dst=wall,
                                    borderMode=cv2.BORDER_TRANSPARENT)
        gain, bias = 1 + 0.15 * np.sin(i / 5) + rng.normal(0, 0.02), rng.normal(0, 6)
        noisy = frame.astype(np.float32) * gain + bias + rng.normal(0, 3, frame.shape)
        frames.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return frames


def rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_held_identity_photos_fail(stub, faces, server):
    photos = [p for person in sorted((faces / "identities").iterdir()) if person.is_dir()
              for p in person_photos(faces, person.name)[:1]]
    need(len(photos) >= 26, "the identity photos are absent")
    orders = list(itertools.permutations(list(C), 3))
    for i, path in enumerate(photos):
        _, outcome = run(stub, held(rgb(path), seed=i), 10.0, orders[i * 7 % len(orders)])
        record("1 held identity photo", outcome)
        assert outcome.decision == FAIL, (path, list(outcome.reasons))
        if i == 0:  # a failed ceremony is signed too, with its reasons
            claims = signed_claims(server, outcome)
            assert claims["kind"] == "liveness" and claims["decision"] == "fail"
            assert claims["liveness"]["outcome"] == "fail" and claims["liveness"]["reasons"] == list(outcome.reasons)


def test_real_attack_samples_fail(stub, root):
    samples = sorted((root / "attacks" / "images").glob("*")) + sorted((root / "attacks" / "crops").glob("*")) \
        + sorted((root / "attacks" / "nuaa_print").glob("*"))
    orders = list(itertools.permutations(list(C), 3))
    for i, path in enumerate(samples):
        _, outcome = run(stub, held(rgb(path), seed=100 + i), 10.0, orders[i * 11 % len(orders)])
        record("2 real attack sample (photo/crop)", outcome)
        assert outcome.decision == FAIL, (path, list(outcome.reasons))
    # the screen replays, whole, each for a turn-first seed (a01 replays v01, whose first action is a
    # turn to the subject's left: asked to turn right first, it does the wrong thing)
    for i, path in enumerate(sorted((root / "attacks" / "videos").glob("*.mp4"))):
        frames, fps = decoded(str(path))
        step = max(1, round(fps / 15))
        _, outcome = run(stub, list(frames[::step]), fps / step, (C.TURN_RIGHT, C.LOOK_UP, C.BLINK))
        record("2 real attack sample (replay video)", outcome)
        assert outcome.decision == FAIL, (path, list(outcome.reasons))


# the photos whose face_mesh signals a turned card moves most (bench/turned_photo.py: du or dv past the
# ceremony's thresholds at some angle), and a plain one: the worst case of the attack, not an average
TURNED = ["identities/tony_blair", "identities/vladimir_putin", "identities/rose_leslie",
          "identities/angelina_jolie", "identities/ivan_mtcnn", "identities/kate_siegel", "identities/joe_biden",
          "identities/barack_obama", "liveness/attacks/nuaa_print/nuaa_0007_imposter.jpg",
          "liveness/attacks/crops/tvl_fake_fake_170.png", "liveness/attacks/crops/krzysiek_fake_152.png",
          "liveness/attacks/images/silentface_image_F1_print.jpg"]


def test_photos_turned_like_a_card_fail(stub, faces, root):
    """Attack 7: a photo held and turned in 3-D to answer a draw of three head poses (each of the 6
    orders twice). face_mesh answers a turned photo with the landmarks of a slightly turned head, so the
    nose signals alone can move past the thresholds; the parallax cue (the face stays flat) must stop it."""
    orders = list(itertools.permutations((C.TURN_LEFT, C.TURN_RIGHT, C.LOOK_UP)))
    outcomes = []
    for i, name in enumerate(TURNED):
        path = faces / name
        path = path if path.is_file() else person_photos(faces, path.name)[0]
        need(path.is_file(), f"{path} is absent")
        order = orders[i % len(orders)]
        _, outcome = run(stub, turned_card(rgb(path), order, seed=300 + i), 10.0, order)
        record("7 photo turned like a card (head-pose draw)", outcome)
        done = sum(t.completed for t in outcome.challenges)
        outcomes.append((name, [c.name for c in order], pb.LivenessOutcome.Decision.Name(outcome.decision), done,
                         list(outcome.reasons)))
    print("\n" + "\n".join(map(str, outcomes)))
    assert all(o[2] == "DECISION_FAIL" for o in outcomes), outcomes


# --------------------------------------------------------------------------- attack 3, 4: replays


def test_replay_of_a_real_video_that_does_not_follow_the_challenge_fails(stub, root):
    """v01 as recorded does: turn left (nose to image-right), turn right, (look down), look up. Every
    other order of those three must fail; so must orders with actions it never does."""
    frames, fps = decoded(str(root / "videos" / VIDEOS["v01"][0]))
    frames = list(frames[::2])
    natural = (C.TURN_LEFT, C.TURN_RIGHT, C.LOOK_UP)
    orders = [o for o in itertools.permutations(natural) if o != natural] + [(C.SMILE, C.TURN_LEFT, C.BLINK)]
    for order in orders:
        _, outcome = run(stub, frames, fps / 2, order)
        record("3 replay not following the challenge", outcome)
        assert outcome.decision == FAIL, (order, list(outcome.reasons))


def test_replay_of_a_genuine_ceremony_for_another_seed_fails(stub, root):
    for video in ("v01", "v02", "v09"):
        actions = list(VIDEOS[video][1])
        recorded = tuple(actions)
        frames, fps = splice(root, video, recorded)
        for other in [o for o in itertools.permutations(actions) if o != recorded][::2]:
            _, outcome = run(stub, frames, fps, other)
            record("4 replay of a ceremony for another seed", outcome)
            assert outcome.decision == FAIL, (video, other, list(outcome.reasons))


# --------------------------------------------------------------------------- attack 5: swap, second face


def test_face_swap_and_second_face_fail(stub, root):
    order = (C.TURN_LEFT, C.TURN_RIGHT, C.LOOK_UP)
    a, fps = splice(root, "v01", order)
    b, _ = splice(root, "v03", order)
    # swap: v01's person does the first challenge and its return to neutral, v03's person the rest
    cut = len(a) // 3
    size = (a[0].shape[1], a[0].shape[0])
    swapped = a[:cut] + [cv2.resize(f, size) for f in b[len(b) // 3:]]  # v03 fitted into v01's frame size
    _, outcome = run(stub, swapped, fps, order)
    record("5 face swap mid-ceremony", outcome)
    assert outcome.decision == FAIL, list(outcome.reasons)
    # second face: from the second challenge on, another real person (v05, neutral frames) stands beside
    other, _ = decoded(str(root / "videos" / "v05_pyfeat_webcam_smile.mp4"))
    h = a[0].shape[0]
    guest = cv2.resize(other[5], (other[5].shape[1] * h // other[5].shape[0], h))
    wall = np.full_like(guest, 110)  # before the guest steps in: a plain wall where they will stand
    two = [np.concatenate([f, wall if i < cut else guest], axis=1) for i, f in enumerate(a)]
    _, outcome = run(stub, two, fps, order)
    record("5 second face mid-ceremony", outcome)
    assert outcome.decision == FAIL, list(outcome.reasons)
    assert any("faces in view" in r or "track" in r for r in outcome.reasons), list(outcome.reasons)


# --------------------------------------------------------------------------- protocol, test mode, limits


def test_seeded_ceremony_refused_without_test_mode_and_limits(start_mesh_server, root):
    server = start_mesh_server(liveness_max_failures="2")
    frames, fps = splice(root, "v01", (C.TURN_LEFT, C.TURN_RIGHT, C.LOOK_UP))
    with server.client() as c:
        with pytest.raises(grpc.RpcError) as info:
            ceremony(c.liveness, timed(frames[:3], fps), test_seed=1)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "liveness_test_mode" in info.value.details()
        # a real ceremony: the first message is the first prompt, sent only after the options
        prompts, outcome = ceremony(c.liveness, timed(frames[:40], fps))
        assert len(prompts) >= 1 and prompts[0].index == 0 and prompts[0].challenge in [int(x) for x in C]
        assert outcome.decision == FAIL  # 40 frames cannot finish (the stream ended, or wrong action)
        # capture times running ahead of the clock (a recording sent faster than real time): FAIL
        # (the person stays neutral, frames 0-50 of v01, so that no wrong action can end it first)
        still, still_fps = decoded(str(root / "videos" / VIDEOS["v01"][0]))
        _, outcome = ceremony(c.liveness, timed(list(still[:50]), still_fps * 8))  # 240 frames/s claimed
        assert outcome.decision == FAIL
        assert any("ahead of the server's clock" in r or "frames per second" in r for r in outcome.reasons), \
            list(outcome.reasons)
        # two failures by this client in the window: the third ceremony is refused
        with pytest.raises(grpc.RpcError) as info:
            ceremony(c.liveness, timed(frames[:3], fps))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "2 failed liveness ceremonies" in info.value.details()
        # per identity as well: an identity that does not exist is NOT_FOUND, not counted
        with pytest.raises(grpc.RpcError) as info:
            ceremony(c.liveness, iter([]), identity_id="nobody")
        assert info.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED)


def test_frames_need_capture_times(stub, root):
    frames, fps = splice(root, "v01", (C.TURN_LEFT, C.TURN_RIGHT, C.LOOK_UP))
    with pytest.raises(grpc.RpcError) as info:
        ceremony(stub, iter([(0.0, frames[0])]), test_seed=1)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "capture_time" in info.value.details()


def test_genuine_ceremony_with_a_one_to_one(stub, root, server):
    """v09's person enrolled from one of its own frames: the ceremony passes with a match; against
    another person's reference photo it fails on the 1:1."""
    frames, fps = splice(root, "v09", (C.SMILE, C.BLINK, C.OPEN_MOUTH))
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(decoded(str(root / "videos" / VIDEOS["v09"][0]))[0][140],
                                                 cv2.COLOR_RGB2BGR))
    _, outcome = run(stub, frames, fps, (C.SMILE, C.BLINK, C.OPEN_MOUTH), reference=jpeg.tobytes())
    assert outcome.decision == PASS and outcome.verified and outcome.match, list(outcome.reasons)
    assert outcome.distance <= outcome.threshold
    other = (root / "genuine" / "vietmoney_true_001.jpg").read_bytes()
    _, outcome = run(stub, frames, fps, (C.SMILE, C.BLINK, C.OPEN_MOUTH), reference=other)
    assert outcome.decision == FAIL and outcome.verified and not outcome.match
    assert any("does not match" in r for r in outcome.reasons)


def test_report_error_rates():
    """BPCER over the bona fide ceremonies, APCER per attack type (printed; asserted against the goals)."""
    need("bona fide" in RESULTS, "the ceremonies above did not run")
    lines = []
    for kind, passed in sorted(RESULTS.items()):
        rate = (sum(not p for p in passed) if kind == "bona fide" else sum(passed)) / len(passed)
        lines.append(f"{'BPCER' if kind == 'bona fide' else 'APCER'} {kind}: {rate:.1%} of {len(passed)}")
    print("\n" + "\n".join(lines))
    bona = RESULTS["bona fide"]
    assert sum(not p for p in bona) / len(bona) <= MAX_BPCER, lines
    for kind, passed in RESULTS.items():
        if kind != "bona fide":
            assert sum(passed) / len(passed) <= MAX_APCER, lines


def test_time_a_genuine_user_needs():
    """Median seconds of capture time a genuine ceremony took (printed for docs/LIVENESS.md)."""
    need(bool(DURATIONS), "the genuine ceremonies did not run")
    print(f"\nmedian genuine ceremony: {np.median(DURATIONS):.2f} s over {len(DURATIONS)}")



# --------------------------------------------------------------------------- evidence and the CLI


def server_jwks(server) -> dict:
    with server.client() as c:
        return json.loads(c.gallery.GetEvidenceKeys(pb.GetEvidenceKeysRequest()).jwks)


def signed_claims(server, outcome) -> dict:
    """The outcome's evidence, verified with PyJWT (an independent JWS implementation) against the
    keys the server publishes."""
    import jwt

    header = jwt.get_unverified_header(outcome.evidence)
    assert header["alg"] == "EdDSA" and header["typ"] == "mobidem-evidence+jwt"
    key = next(jwt.PyJWK(k).key for k in server_jwks(server)["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(outcome.evidence, key, algorithms=["EdDSA"])
    assert claims["jti"] == outcome.evidence_record_id
    return claims


def test_outcome_evidence_binds_frames_challenges_one_to_one_and_transaction(stub, root, server):
    """The outcome is signed (PyJWT verifies it) and says what it was decided from: the SHA-256 of
    every frame sent, in order, with its capture time; the challenges the seed asked, in order; the
    1:1 against the reference photo; the partner's transaction_ref; that the ceremony was seeded.
    The audit log holds it and verifies."""
    from mobidem import audit
    from mobidem.evidence import keys as evidence_keys

    order = (C.SMILE, C.BLINK, C.OPEN_MOUTH)
    frames, fps = splice(root, "v09", order)
    reference = cv2.imencode(".jpg", cv2.cvtColor(decoded(str(root / "videos" / VIDEOS["v09"][0]))[0][140],
                                                  cv2.COLOR_RGB2BGR))[1].tobytes()
    doc = hashlib.sha256(b"the contract being signed").hexdigest()
    _, outcome = run(stub, frames, fps, order, reference=reference, transaction_ref=doc)
    assert outcome.decision == PASS and outcome.match, list(outcome.reasons)
    claims = signed_claims(server, outcome)
    assert claims["kind"] == "liveness" and claims["decision"] == "pass" and claims["transaction_ref"] == doc
    live = claims["liveness"]
    assert live["ceremony_id"] == outcome.ceremony_id and live["outcome"] == "pass"
    assert live["seeded"] is True and live["test_seed"] == seed_for(order)  # a relying party must refuse these
    assert [c["challenge"] for c in live["challenges"]] == ["smile", "blink", "open_mouth"]
    assert all(c["completed"] for c in live["challenges"]) and live["one_to_one"] == "reference_image"
    assert claims["distance"] == pytest.approx(outcome.distance) and claims["threshold"] == pytest.approx(outcome.threshold)
    sent = [hashlib.sha256(to_image(f).encoded).hexdigest() for f in frames[:outcome.frames]]
    images = claims["images"]
    assert images[0] == {"role": "reference_image", "sha256": hashlib.sha256(reference).hexdigest()}
    assert [i["sha256"] for i in images[1:]] == sent and [i["index"] for i in images[1:]] == list(range(len(sent)))
    assert [i["t"] for i in images[1:]] == pytest.approx([k / fps for k in range(len(sent))], abs=2e-3)
    path = server.server.audit.path
    rows = [r for r in server.server.audit.records() if r["request_id"] == outcome.ceremony_id]
    assert [(r["kind"], r["decision"]) for r in rows] == [("liveness", "pass")]
    report = audit.check(path, evidence_keys.trusted_keys(json.dumps(server_jwks(server))))
    assert report.ok, report.problems


def _video(path, frames, fps) -> None:
    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for f in frames:
        out.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    out.release()


def test_liveness_cli_passes_a_genuine_video_and_fails_a_held_photo(root, faces, server, tmp_path):
    """`mobidem liveness VIDEO` as a user runs it: prompts printed, exit 0 on PASS with its evidence
    written (and verified offline by `mobidem evidence verify`), exit 1 on FAIL."""
    order = (C.TURN_LEFT, C.TURN_RIGHT, C.LOOK_UP)
    frames, fps = splice(root, "v03", order)
    _video(tmp_path / "genuine.avi", frames, fps)
    _video(tmp_path / "held.avi", held(rgb(person_photos(faces, "barack_obama")[0]), seed=7), 10.0)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MOBIDEM_")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "mobidem.cli", *map(str, args)], capture_output=True, text=True,
                              timeout=180, env=env)

    ok = cli("liveness", tmp_path / "genuine.avi", "--target", server.target, "--test-seed", seed_for(order),
             "--transaction-ref", "doc-1", "--evidence-out", tmp_path / "evidence.jws")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "[1/3] " in ok.stdout and "[3/3] " in ok.stdout and "\nPASS " in ok.stdout and "evidence record " in ok.stdout
    (tmp_path / "jwks.json").write_text(json.dumps(server_jwks(server)))
    checked = cli("evidence", "verify", tmp_path / "evidence.jws", "--jwks", tmp_path / "jwks.json")
    assert checked.returncode == 0 and '"transaction_ref": "doc-1"' in checked.stdout, checked.stdout + checked.stderr
    bad = cli("liveness", tmp_path / "held.avi", "--target", server.target, "--test-seed", seed_for(order))
    assert bad.returncode == 1 and "\nFAIL " in bad.stdout and "reason: " in bad.stdout, bad.stdout + bad.stderr
