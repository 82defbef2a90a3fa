"""The liveness ceremony as a web page (issue 17), entered with a one-time link, in a real browser.

A real server (face_multitask + face_mesh on a real Triton, liveness_test_mode, API keys) with the web
listener on loopback; a partner's key (role ``ceremony``) creates each ceremony link with
``Ceremonies/CreateCeremony``; Debian's headless Chromium opens the link with its fake camera playing a
Y4M written here: a genuine ceremony spliced from a real video in the seed's order
(tests/liveness_data.py), or an identity photo held up to the camera (tests/test_liveness.py ``held``).

Expected values come from the spec (issue 17, docs/WEB.md): the page shows each prompt the server sends
and "Challenge N of 3", then "PASS: ..." or "FAIL: ..." with the reasons and the evidence record's id; a
forged, spent or expired token gets the page "This link cannot be used" and UNAUTHENTICATED on the socket.
"""

from __future__ import annotations

import base64
import json
import os
import time
from fractions import Fraction
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from conftest import need, person_photos
from liveness_data import seed_for, splice
from mobidem import auth
from mobidem.errors import NotFound, ResourceExhausted, Unauthenticated
from mobidem.liveness.challenges import Challenge as C
from mobidem.v1 import mobidem_pb2 as pb
from mobidem.v1 import mobidem_pb2_grpc as pb_grpc
from mobidem.web import tokens as links
from mobidem.web.tokens import CeremonyTokens, Grant
from test_liveness import held, rgb  # the held-photo attack frames
from test_web import browser, chromium, screenshot, text  # noqa: F401 - fixtures and helpers

websockets_sync = pytest.importorskip("websockets.sync.client")
from websockets.exceptions import ConnectionClosed  # noqa: E402

ORDER = (C.TURN_LEFT, C.TURN_RIGHT, C.LOOK_UP)  # v03's actions; the CLI test plays the same ceremony
PROMPTS = {"turn_left": "left", "turn_right": "right", "look_up": "up"}  # a word each prompt's text must hold
DOCS = Path(os.environ["MOBIDEM_WEB_SCREENSHOTS"]) if os.environ.get("MOBIDEM_WEB_SCREENSHOTS") else None


# --------------------------------------------------------------------------- the token store, pure logic


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_token_works_once_until_it_expires_and_only_if_issued():
    clock = Clock()
    tokens = CeremonyTokens(ttl_s=300, max_pending=3, clock=clock)
    grant = Grant("doc-sha256", "alice", "far_1e-3", 7, "partner")
    token, ttl, ref = tokens.issue(grant)
    assert ttl == 300 and token.startswith("mbc_") and len(token) >= 4 + 43  # 256 random bits, URL-safe
    assert ref and ref not in token
    assert tokens.status(ref, "partner")[0] == links.WAITING
    with pytest.raises(NotFound):  # another key's ceremony
        tokens.status(ref, "someone-else")
    assert tokens.take(token) == grant
    assert tokens.status(ref, "partner")[0] == links.RUNNING
    with pytest.raises(Unauthenticated, match="already used"):
        tokens.take(token)
    outcome = pb.LivenessOutcome(decision=pb.LivenessOutcome.DECISION_PASS, evidence_record_id="r1")
    tokens.finish(token, outcome)
    tokens.finish(token, error="INTERNAL: too late")  # the first end stands
    state, entry = tokens.status(ref, "partner")
    assert state == links.DONE and entry.outcome.evidence_record_id == "r1" and not entry.error
    short, ttl, short_ref = tokens.issue(grant, ttl_s=60)
    assert ttl == 60 and tokens.issue(grant, ttl_s=9999)[1] == 300  # a request may only shorten the TTL
    tokens.issue(grant)
    with pytest.raises(ResourceExhausted, match="waiting to be opened"):  # 3 pending: max_pending
        tokens.issue(grant)
    clock.now += 61
    assert tokens.status(short_ref, "partner")[0] == links.EXPIRED
    with pytest.raises(Unauthenticated, match="expired"):
        tokens.take(short)
    for bad, reason in (("mbc_" + "A" * 43, "never issued"), ("mbk_" + "A" * 43, "malformed"),
                        ("mbc_" + "A" * 200, "malformed"), ("", "needs a ceremony link")):
        with pytest.raises(Unauthenticated, match=reason):
            tokens.take(bad)
    assert tokens.pending() == 2
    clock.now += 600  # expired or ended, and one more TTL: forgotten at the next issue
    assert tokens.pending() == 0
    tokens.issue(grant)
    assert len(tokens._entries) == 1
    with pytest.raises(Unauthenticated, match="never issued"):
        tokens.take(token)
    with pytest.raises(NotFound):
        tokens.status(ref, "partner")


# --------------------------------------------------------------------------- server, links, camera files


@pytest.fixture(scope="module")
def root(faces):
    path = faces / "liveness"
    need((path / "MANIFEST.tsv").is_file(), f"the liveness data is absent ({path})")
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "keys.yaml"
    return path, {"partner": auth.add_key(path, "partner", "ceremony"),
                  "liveness": auth.add_key(path, "signer", "liveness"),
                  "other": auth.add_key(path, "other-partner", "ceremony")}


@pytest.fixture(scope="module")
def server(start_mesh_server, keys):
    return start_mesh_server(web_listen="127.0.0.1:0", api_keys_file=keys[0], liveness_test_mode="true",
                             liveness_max_failures="0")


def create(server, key: str, **fields) -> pb.CreateCeremonyResponse:
    with grpc.insecure_channel(server.target) as channel:
        return pb_grpc.CeremoniesStub(channel).CreateCeremony(pb.CreateCeremonyRequest(**fields),
                                                              metadata=[("x-api-key", key)], timeout=30)


def link(server, keys, **fields) -> pb.CreateCeremonyResponse:
    return create(server, keys[1]["partner"], **{"transaction_ref": "sha256:contract-42", **fields})


def ask(server, key: str, ref: str, wait_s: float = 0.0) -> pb.CeremonyStatus:
    """Ceremonies/GetCeremony as the partner's backend calls it."""
    with grpc.insecure_channel(server.target) as channel:
        return pb_grpc.CeremoniesStub(channel).GetCeremony(pb.GetCeremonyRequest(ceremony_ref=ref, wait_s=wait_s),
                                                           metadata=[("x-api-key", key)], timeout=90)


def write_y4m(frames: list[np.ndarray], fps: float, out: Path) -> Path:
    """RGB frames as YUV4MPEG2 4:2:0 (Chromium's fake camera plays it, in a loop), at most 640 px wide."""
    h, w = frames[0].shape[:2]
    scale = min(1.0, 640 / w)
    size = (int(w * scale) // 2 * 2, int(h * scale) // 2 * 2)
    rate = Fraction(fps).limit_denominator(1001)
    with open(out, "wb") as f:
        f.write(f"YUV4MPEG2 W{size[0]} H{size[1]} F{rate.numerator}:{rate.denominator} Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            f.write(b"FRAME\n" + cv2.cvtColor(small, cv2.COLOR_RGB2YUV_I420).tobytes())
    return out


@pytest.fixture(scope="module")
def genuine_y4m(root, tmp_path_factory) -> Path:
    """v03's genuine ceremony for ORDER, with 1.5 s of its neutral frames before (the page starts the
    ceremony a moment after the camera) and 4 s after (the decision comes before the file loops)."""
    frames, fps = splice(root, "v03", ORDER)
    neutral = [f for f in splice(root, "v03", ())[0]]  # its first neutral segment
    lead = (neutral * 10)[:int(1.5 * fps)]
    tail = (neutral * 20)[:int(4 * fps)]
    return write_y4m(lead + frames + tail, fps, tmp_path_factory.mktemp("camera") / "genuine.y4m")


@pytest.fixture(scope="module")
def held_y4m(faces, tmp_path_factory) -> Path:
    photo = rgb(person_photos(faces, "barack_obama")[0])
    h, w = photo.shape[:2]
    photo = photo[h // 5:h - h // 5, w // 5:w - w // 5]  # a print of the face, filling the hand-held picture
    return write_y4m(held(photo, seconds=4.0, fps=10.0, seed=3), 10.0,
                     tmp_path_factory.mktemp("camera") / "held.y4m")


def phone(driver) -> None:
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})


def docs_shot(driver, name: str, blur_video: bool = False) -> None:
    """A screenshot for docs/WEB.md, written to $MOBIDEM_WEB_SCREENSHOTS when set. The camera preview
    is blurred: the test videos' people never agreed to be published (shared/data/faces/SOURCES.md)."""
    if DOCS is None:
        return
    if blur_video:
        driver.execute_script("document.getElementById('preview').style.filter = 'blur(24px)'")
    DOCS.mkdir(parents=True, exist_ok=True)
    png = np.frombuffer(driver.get_screenshot_as_png(), np.uint8)
    image = cv2.imdecode(png, cv2.IMREAD_COLOR)
    cv2.imwrite(str(DOCS / f"{name}.png"), image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if blur_video:
        driver.execute_script("document.getElementById('preview').style.filter = ''")


def run_page(driver, url: str, tmp_path: Path, name: str, timeout: float = 60.0) -> dict:
    """Open the link, press Start, follow the page until its outcome; what the page showed on the way."""
    driver.get("about:blank")
    driver.get(url)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and driver.execute_script("return document.getElementById('start').hidden"):
        time.sleep(0.05)
    address = driver.current_url
    driver.find_element("id", "start").click()
    prompts: list[str] = []
    progress: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = driver.execute_script("""
            const $ = (id) => document.getElementById(id);
            return {prompt: $('prompt').textContent, progress: $('progress-text').textContent,
                    ceremony: !$('ceremony').hidden, outcome: !$('outcome').hidden, error: !$('error').hidden};
        """)
        if state["ceremony"] and (not prompts or prompts[-1] != state["prompt"]):
            prompts.append(state["prompt"])
            progress.append(state["progress"])
            if len(prompts) == 2:
                screenshot(driver, tmp_path, f"{name}-challenge")
                docs_shot(driver, f"ceremony-{name}-challenge", blur_video=True)
        if state["outcome"] or state["error"]:
            break
        time.sleep(0.05)
    screenshot(driver, tmp_path, f"{name}-outcome")
    return {"address": address, "prompts": prompts, "progress": progress, "state": state,
            "decision": text(driver, "decision"), "reasons": driver.execute_script(
                "return [...document.querySelectorAll('#reasons li')].map(li => li.textContent)"),
            "evidence_id": text(driver, "evidence-id"), "ceremony_id": text(driver, "ceremony-id"),
            "status": text(driver, "status")}


def claims(server, record_id: str) -> dict:
    jws = server.server.audit.evidence(record_id)
    assert jws, f"no evidence {record_id!r} in the audit log"
    payload = jws.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def camera(y4m: Path) -> tuple[str, ...]:
    return ("--use-fake-ui-for-media-stream", f"--use-file-for-fake-video-capture={y4m}")


# --------------------------------------------------------------------------- the page in a browser


def test_genuine_ceremony_passes_in_the_browser_and_its_link_then_is_spent(server, keys, browser, genuine_y4m,
                                                                            tmp_path):
    made = link(server, keys, test_seed=seed_for(ORDER))
    assert made.path.startswith("/ceremony#token=mbc_") and made.url.endswith(made.path)
    assert made.url.startswith(server.server.web.url.rstrip("/"))
    assert 0 < made.expires_at.ToSeconds() - time.time() <= 300  # web_ceremony_ttl_s: 5 minutes
    assert ask(server, keys[1]["partner"], made.ceremony_ref).state == pb.CeremonyStatus.STATE_WAITING
    driver = browser(*camera(genuine_y4m))
    phone(driver)
    seen = run_page(driver, made.url, tmp_path, "pass")
    assert "#token" not in seen["address"] and "mbc_" not in seen["address"], "the token leaves the address bar"
    assert seen["state"]["outcome"], seen
    words = [PROMPTS[c.name.lower()] for c in ORDER]
    assert len(seen["prompts"]) == 3 and all(w in p.lower() for w, p in zip(words, seen["prompts"])), seen["prompts"]
    assert seen["progress"] == ["Challenge 1 of 3", "Challenge 2 of 3", "Challenge 3 of 3"]
    assert seen["decision"].startswith("PASS"), seen
    assert seen["reasons"] == []
    record = claims(server, seen["evidence_id"])  # the id the page shows is the signed record's
    assert record["jti"] == seen["evidence_id"] and record["kind"] == "liveness" and record["decision"] == "pass"
    assert record["transaction_ref"] == "sha256:contract-42"  # fixed by the partner, not by the page
    assert record["caller_key"] == "partner"  # the key that created the link, not the phone
    assert record["liveness"]["ceremony_id"] == seen["ceremony_id"]
    assert record["liveness"]["test_seed"] == seed_for(ORDER)
    # the partner's backend learns the same outcome, with the signed evidence itself
    status = ask(server, keys[1]["partner"], made.ceremony_ref)
    assert status.state == pb.CeremonyStatus.STATE_DONE and status.transaction_ref == "sha256:contract-42"
    assert status.outcome.decision == pb.LivenessOutcome.DECISION_PASS
    assert status.outcome.evidence_record_id == seen["evidence_id"]
    assert status.outcome.ceremony_id == seen["ceremony_id"]
    assert status.outcome.evidence == server.server.audit.evidence(seen["evidence_id"])
    with pytest.raises(grpc.RpcError) as info:  # another partner's key cannot read it
        ask(server, keys[1]["other"], made.ceremony_ref)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert driver.execute_script("return [window.innerWidth, document.documentElement.scrollWidth]")[1] <= 390
    docs_shot(driver, "ceremony-pass")
    # the same link again: spent
    again = run_error_page(driver, made.url)
    screenshot(driver, tmp_path, "reused")
    assert again["heading"] == "This link cannot be used" and "already used" in again["message"], again
    docs_shot(driver, "ceremony-link-used")


def test_held_photo_fails_in_the_browser(server, keys, browser, held_y4m, tmp_path):
    made = link(server, keys, test_seed=seed_for(ORDER))
    driver = browser(*camera(held_y4m))
    phone(driver)
    seen = run_page(driver, made.url, tmp_path, "fail")
    assert seen["state"]["outcome"], seen
    assert seen["decision"].startswith("FAIL"), seen
    assert seen["reasons"] and all(r.strip() for r in seen["reasons"])
    print(f"held photo: {seen['decision']}: {seen['reasons']}")
    record = claims(server, seen["evidence_id"])  # a FAIL is signed and recorded too
    assert record["decision"] == "fail" and record["liveness"]["reasons"] == seen["reasons"]
    docs_shot(driver, "ceremony-fail")


def run_error_page(driver, url: str) -> dict:
    driver.get("about:blank")
    driver.get(url)
    deadline = time.monotonic() + 15
    clicked = False
    while time.monotonic() < deadline:
        if not clicked and not driver.execute_script("return document.getElementById('start').hidden"):
            driver.find_element("id", "start").click()
            clicked = True
        if driver.execute_script("return !document.getElementById('error').hidden"):
            break
        time.sleep(0.05)
    return {"heading": text(driver, "error-heading"), "message": text(driver, "error-message"),
            "note": text(driver, "error-note"), "focused": driver.execute_script("return document.activeElement.id"),
            "camera": driver.execute_script("return !!document.getElementById('preview').srcObject")}


def test_forged_expired_and_missing_tokens_get_the_error_page(server, keys, browser, tmp_path):
    expiring = link(server, keys, ttl_s=1).url
    driver = browser("--use-fake-ui-for-media-stream")
    base = server.server.web.url.rstrip("/") + "/ceremony"
    time.sleep(1.2)
    expired = run_error_page(driver, expiring)
    assert expired["heading"] == "This link cannot be used" and "has expired" in expired["message"], expired
    forged = run_error_page(driver, base + "#token=mbc_" + "x" * 43)
    screenshot(driver, tmp_path, "forged")
    assert forged["heading"] == "This link cannot be used" and "never issued" in forged["message"], forged
    assert "UNAUTHENTICATED" in forged["message"] and forged["focused"] == "error-heading"
    assert forged["camera"] is False and "no camera image was sent" in forged["note"]
    missing = run_error_page(driver, base)  # keys are on: the page needs a link
    assert missing["heading"] == "This page needs a ceremony link", missing


# --------------------------------------------------------------------------- the socket and the RPC


def ceremony_socket(server):
    return websockets_sync.connect(f"ws://127.0.0.1:{server.server.web_port}/ws/ceremony", open_timeout=10)


def start(server, token: str | None) -> dict:
    """The server's first answer to a start message with ``token``; the socket's close code after an error."""
    with ceremony_socket(server) as ws:
        ws.send(json.dumps({"type": "start"} if token is None else {"type": "start", "token": token}))
        first = json.loads(ws.recv(timeout=30))
        if first["type"] == "error":
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=30)
            first["close"] = info.value.rcvd.code if info.value.rcvd else -1
        return first


def test_socket_refuses_forged_spent_expired_and_missing_tokens(server, keys):
    made = link(server, keys, test_seed=seed_for(ORDER))
    used, used_ref = made.token, made.ceremony_ref
    prompt = start(server, used)  # accepted: the ceremony starts with its first prompt (the seed's first challenge)
    assert prompt["type"] == "prompt" and prompt["index"] == 0 and prompt["count"] == 3, prompt
    assert prompt["challenge"] == ORDER[0].name.lower() and prompt["ceremony_id"]
    made = link(server, keys, ttl_s=1)
    expiring, expiring_ref = made.token, made.ceremony_ref
    time.sleep(1.3)
    status = ask(server, keys[1]["partner"], used_ref, wait_s=30)  # the page went away after the first prompt
    assert status.state == pb.CeremonyStatus.STATE_DONE and status.outcome.decision == pb.LivenessOutcome.DECISION_FAIL
    assert status.outcome.reasons and status.outcome.evidence_record_id, status
    assert ask(server, keys[1]["partner"], expiring_ref).state == pb.CeremonyStatus.STATE_EXPIRED
    for token, reason in ((used, "already used"), (expiring, "expired"), ("mbc_" + "x" * 43, "never issued"),
                          ("", "needs a ceremony link"), (None, "needs a ceremony link")):
        error = start(server, token)
        assert error["type"] == "error" and error["code"] == "UNAUTHENTICATED", (token, error)
        assert reason in error["message"] and error["close"] == 1008, (token, error)


def test_create_ceremony_checks_its_request(server, keys, start_mesh_server):
    def code(**fields):
        with pytest.raises(grpc.RpcError) as info:
            link(server, keys, **fields)
        return info.value.code(), info.value.details()

    assert code(transaction_ref="")[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code(transaction_ref="x" * 257)[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code(identity_id="nobody")[0] == grpc.StatusCode.NOT_FOUND
    assert code(operating_point="far_0")[0] == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:  # a signing client's key may run ceremonies, not create links
        create(server, keys[1]["liveness"], transaction_ref="t")
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # no test mode: no seed; no web listener: no links; no keys: the page works on loopback without a link
    plain = start_mesh_server(web_listen="127.0.0.1:0")
    with grpc.insecure_channel(plain.target) as channel:
        stub = pb_grpc.CeremoniesStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.CreateCeremony(pb.CreateCeremonyRequest(transaction_ref="t", test_seed=1), timeout=30)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "liveness_test_mode" in info.value.details()
    first = start(plain, None)
    assert first["type"] == "prompt" and first["count"] == 3, first
    plain.stop()


def test_without_the_face_mesh_plugin_the_page_is_told_why(start_server):
    """A server without face_mesh (the session's plain one) cannot run ceremonies: the socket says so
    (FAILED_PRECONDITION naming the plugin), which the page shows as "This check cannot be run"."""
    plain = start_server(web_listen="127.0.0.1:0")
    error = start(plain, None)
    assert error["type"] == "error" and error["code"] == "FAILED_PRECONDITION", error
    assert "face_mesh" in error["message"] and error["close"] == 1008
