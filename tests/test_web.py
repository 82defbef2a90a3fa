"""The live-view web page (issue 17) in a real browser, against a real server on the session's Triton.

Debian's chromium and chromium-driver, driven by Selenium, headless, with Chromium's fake camera fed
from the shared Hamilton clip (converted here to Y4M: never committed). The socket's error handling is
checked with a plain WebSocket client; the listener's TLS and loopback rule without Triton.

Expected values come from the spec (issue 17, docs/WEB.md): each face's line reads
"Face N: <who>, <expression> (track <id>)", the frame rate "<x.y> frames/s", the latency "<n> ms".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import ssl
import time
import urllib.request
from fractions import Fraction
from pathlib import Path

import cv2
import pytest

from conftest import need
from mobidem import auth, certs, config
from mobidem.api.auth import AuthInterceptor
from mobidem.errors import FailedPrecondition

websockets_sync = pytest.importorskip("websockets.sync.client")
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

PEOPLE = {"Lin-Manuel Miranda": "identities/lin_manuel_miranda/facerecognition_1.jpg",
          "Alex Lacamoire": "identities/alex_lacamoire/facerecognition_3.jpg"}
EXPRESSIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
LINE = re.compile(r"^Face (\d+): (.+), (" + "|".join(EXPRESSIONS) + r") \(track (\d+)\)$")
FPS = re.compile(r"^(\d+\.\d) frames/s$")
LATENCY = re.compile(r"^(\d+) ms$")
ARTEFACTS = Path(os.environ.get("MOBIDEM_TEST_ARTEFACTS", "")) if os.environ.get("MOBIDEM_TEST_ARTEFACTS") else None


# --------------------------------------------------------------------------- material and browser


def write_y4m(video: Path, out: Path) -> tuple[int, int, int]:
    """``video`` as an uncompressed YUV4MPEG2 (4:2:0) file, the format Chromium's fake camera reads:
    a header line, then per frame "FRAME\\n" and the Y, U and V planes. Returns (frames, width, height)."""
    cap = cv2.VideoCapture(str(video))
    assert cap.isOpened(), video
    fps = Fraction(cap.get(cv2.CAP_PROP_FPS) or 30).limit_denominator(1001)
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    n = 0
    with open(out, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps.numerator}:{fps.denominator} Ip A1:1 C420jpeg\n".encode())
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())  # Y, then U, then V
            n += 1
    cap.release()
    return n, width, height


@pytest.fixture(scope="module")
def hamilton_y4m(faces, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("camera") / "hamilton.y4m"
    frames, width, height = write_y4m(faces / "videos" / "short_hamilton_clip.mp4", out)
    assert (frames, width, height) == (275, 640, 360)  # the clip as SOURCES.md describes it
    assert out.stat().st_size == len(out.read_bytes().split(b"\n", 1)[0]) + 1 + frames * (6 + 640 * 360 * 3 // 2)
    return out


@pytest.fixture(scope="module")
def chromium():
    found = {name: shutil.which(name) for name in ("chromium", "chromedriver")}
    need(all(found.values()), f"Debian's chromium and chromium-driver are not installed ({found}); "
                              "`make test-system-deps` installs them")
    pytest.importorskip("selenium")
    return found


@pytest.fixture()
def browser(chromium, request):
    """Factory: a headless Chromium with the given extra flags; quit at the end of the test."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers = []

    def start(*flags: str):
        options = webdriver.ChromeOptions()
        options.binary_location = chromium["chromium"]
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=720,1000",
                     "--use-fake-device-for-media-stream", *flags):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(chromium["chromedriver"]))
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()


def screenshot(driver, tmp_path: Path, name: str) -> Path:
    """The page as a person sees it, a test artefact (also copied to $MOBIDEM_TEST_ARTEFACTS when set)."""
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    if ARTEFACTS is not None:
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, ARTEFACTS / path.name)
    return path


def camera_flags(y4m: Path) -> tuple[str, ...]:
    return ("--use-fake-ui-for-media-stream", f"--use-file-for-fake-video-capture={y4m}")


def text(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent")


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def web(faces, start_server):
    """A server with the web listener on loopback (plain HTTP: a secure context there), both people enrolled."""
    server = start_server(web_listen="127.0.0.1:0")
    with server.client() as client:
        for name, rel in PEOPLE.items():
            client.enroll(name, [faces / rel], face_index=0)
    return server


def socket_url(server) -> str:
    return f"ws://127.0.0.1:{server.server.web_port}/ws/stream"


def hamilton_jpeg(faces) -> bytes:
    cap = cv2.VideoCapture(str(faces / "videos" / "short_hamilton_clip.mp4"))
    for _ in range(30):
        ok, frame = cap.read()
    cap.release()
    assert ok
    return cv2.imencode(".jpg", frame)[1].tobytes()


def receive(ws, timeout: float = 30.0) -> dict:
    return json.loads(ws.recv(timeout=timeout))


@contextlib.contextmanager
def open_stream(server, options: dict | None = None):
    """A socket on the server's stream path with the options sent."""
    with websockets_sync.connect(socket_url(server), max_size=None, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "options", **(options or {})}))
        yield ws


def closed_code(ws, timeout: float = 30.0) -> int:
    """The close code of a socket the server is closing (any further messages are skipped)."""
    deadline = time.monotonic() + timeout
    with pytest.raises(ConnectionClosed) as info:
        while time.monotonic() < deadline:
            ws.recv(timeout=timeout)
    return info.value.rcvd.code if info.value.rcvd else -1


# --------------------------------------------------------------------------- the page in a browser


def test_live_view_names_people_with_expressions_track_ids_rate_and_latency(web, browser, hamilton_y4m, tmp_path):
    driver = browser(*camera_flags(hamilton_y4m))
    driver.get(web.server.web.url)
    loaded = time.monotonic()
    named_at = None
    lines_seen: list[str] = []
    overlay_checks: list[int] = []
    while time.monotonic() - loaded < 30:
        # one synchronous script: the lines and the overlay pixels of the same drawn result
        frame = driver.execute_script("""
            const items = [...document.querySelectorAll('#faces li')];
            const canvas = document.getElementById('overlay'), video = document.getElementById('preview');
            const ctx = canvas.getContext('2d');
            const inked = items.map(li => {
              const [x0, y0, x1, y1] = li.dataset.box.split(',').map(Number);
              const sx = canvas.width / video.videoWidth, sy = canvas.height / video.videoHeight;
              const w = Math.max(1, Math.round((x1 - x0) * sx)), h = Math.max(1, Math.round((y1 - y0) * sy));
              const data = ctx.getImageData(Math.round(x0 * sx), Math.round(y0 * sy), w, h).data;
              let n = 0;
              for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
              return n;
            });
            return {lines: items.map(li => li.textContent), inked,
                    video: [video.videoWidth, video.videoHeight]};
        """)
        lines_seen += frame["lines"]
        overlay_checks += frame["inked"]
        if named_at is None and any("Lin-Manuel Miranda" in line for line in frame["lines"]):
            named_at = time.monotonic() - loaded
            screenshot(driver, tmp_path, "live-view")
        if named_at is not None and len(lines_seen) >= 20 and FPS.match(text(driver, "fps")):
            break
        time.sleep(0.1)
    status = text(driver, "status")
    assert frame["video"] == [640, 360], "the fake camera plays the clip at its own size"
    assert lines_seen, f"no face line in the page within 30 s; status: {status!r}"
    bad = [line for line in lines_seen if not LINE.match(line)]
    assert not bad, f"lines not of the form 'Face N: who, expression (track id)': {bad[:5]}"
    assert named_at is not None and named_at <= 10, \
        f"Lin-Manuel Miranda not named within 10 s of the page loading ({named_at}); lines: {set(lines_seen)}"
    names = {LINE.match(line).group(2) for line in lines_seen}
    assert names <= {*PEOPLE, "unknown"}, names
    assert all(int(LINE.match(line).group(4)) > 0 for line in lines_seen)
    assert overlay_checks and min(overlay_checks) > 0, "every face's box region on the overlay has drawn pixels"
    fps, latency = FPS.match(text(driver, "fps")), LATENCY.match(text(driver, "latency"))
    print(f"named after {named_at:.1f} s; {text(driver, 'fps')}, latency {text(driver, 'latency')}; "
          f"{len(lines_seen)} lines seen: {sorted(set(lines_seen))[:8]}")
    assert fps and 0 < float(fps.group(1)) <= 15.5, text(driver, "fps")  # web_max_fps is 15 by default
    assert latency and 0 < int(latency.group(1)) < 10_000, text(driver, "latency")
    assert "Live" in status


def test_camera_denied_is_said_plainly(web, browser, tmp_path):
    driver = browser("--deny-permission-prompts")
    driver.get(web.server.web.url)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "denied" not in text(driver, "status"):
        time.sleep(0.1)
    screenshot(driver, tmp_path, "camera-denied")
    assert "Camera access was denied" in text(driver, "status")
    assert driver.execute_script("return document.getElementById('status').getAttribute('role')") == "alert"


def test_unreachable_server_is_said_plainly(start_server, browser, hamilton_y4m, tmp_path):
    server = start_server(web_listen="127.0.0.1:0")
    driver = browser(*camera_flags(hamilton_y4m))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # a phone's narrow screen
                           {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True})
    driver.get(server.server.web.url)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "Live" not in text(driver, "status"):
        time.sleep(0.1)
    assert "Live" in text(driver, "status"), text(driver, "status")
    width, scroll = driver.execute_script("return [window.innerWidth, document.documentElement.scrollWidth]")
    assert width <= 400 and scroll <= width, "the page fits a narrow phone screen without sideways scrolling"
    server.call(server.server.web.stop())  # the listener goes away under the open page
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "Cannot reach" not in text(driver, "status"):
        time.sleep(0.1)
    screenshot(driver, tmp_path, "unreachable")
    assert "Cannot reach the mobidem server" in text(driver, "status")


# --------------------------------------------------------------------------- the socket, without a browser


def test_a_real_frame_over_the_socket_gets_the_grpc_stream_answer(web, faces):
    with open_stream(web) as ws:
        ws.send(hamilton_jpeg(faces))
        result = receive(ws)
    assert result["type"] == "result" and result["sequence"] == 1 and result["status"] == "OK"
    assert (result["width"], result["height"]) == (640, 360) and result["total_ms"] > 0
    assert result["faces"], result
    face = result["faces"][0]
    assert face["track_id"] > 0 and face["fresh_embedding"] is True  # a new track is embedded at once
    assert face["expression"] in EXPRESSIONS and face["name"] in {*PEOPLE, "unknown"}


def test_garbage_gets_clear_errors_and_the_server_stays_up(web, faces):
    # a frame before the options
    with websockets_sync.connect(socket_url(web)) as ws:
        ws.send(b"\x00\xffnot options")
        error = receive(ws)
        assert error["type"] == "error" and error["code"] == "INVALID_ARGUMENT"
        assert "options" in error["message"]
        assert closed_code(ws) == 1008
    # options that are not JSON, and options with an unknown field
    for bad in ("{not json", json.dumps({"type": "options", "tasks": "everything"})):
        with websockets_sync.connect(socket_url(web)) as ws:
            ws.send(bad)
            error = receive(ws)
            assert error["type"] == "error" and error["code"] == "INVALID_ARGUMENT", error
            assert closed_code(ws) == 1008
    # non-image bytes fail that frame only: the stream goes on with a real frame
    with open_stream(web) as ws:
        ws.send(os.urandom(5000))
        failed = receive(ws)
        assert failed["sequence"] == 1 and failed["status"] == "FAILED" and failed["code"] == "INVALID_ARGUMENT"
        assert failed["error"]
        ws.send(hamilton_jpeg(faces))
        ok = receive(ws)
        assert ok["sequence"] == 2 and ok["status"] == "OK" and ok["faces"]
        # a text message after the options ends the stream with a reason
        ws.send("hello")
        error = receive(ws)
        assert error["type"] == "error" and error["code"] == "INVALID_ARGUMENT"
        assert closed_code(ws) == 1008
    # a message over web_max_message_bytes (4 MiB by default) closes the socket with 1009, unread
    with open_stream(web) as ws:
        try:
            ws.send(b"\xff" * (4 * 1024 * 1024 + 1))
        except ConnectionClosed:
            pass
        assert closed_code(ws) == 1009
    # too many frames: over web_max_fps (15 a second) they are answered DROPPED, unprocessed
    with open_stream(web) as ws:
        started = time.monotonic()
        for _ in range(40):
            ws.send(b"garbage")
        results = [receive(ws) for _ in range(40)]
        elapsed = time.monotonic() - started
        assert sorted(r["sequence"] for r in results) == list(range(1, 41))
        too_many = [r for r in results if r["status"] == "DROPPED" and "too many frames" in r["reason"]]
        taken = 40 - len(too_many)  # a second's worth at once, then 15 a second
        assert 15 <= taken <= 15 + 15 * elapsed + 1, (taken, elapsed)
        for r in results:
            if r not in too_many:  # processed: failed as not an image, or superseded (latest-frame-wins)
                assert (r["status"], r.get("code")) == ("FAILED", "INVALID_ARGUMENT") or \
                    (r["status"] == "DROPPED" and "latest-frame-wins" in r["reason"]), r
    # a socket opened from another site's page is refused
    with pytest.raises(InvalidStatus) as info:
        websockets_sync.connect(socket_url(web), origin="https://evil.example")
    assert info.value.response.status_code == 403
    # after all that: the web page and gRPC both still serve
    with open_stream(web) as ws:
        ws.send(hamilton_jpeg(faces))
        assert receive(ws)["status"] == "OK"
    with web.client() as client:
        assert client.analyze(hamilton_jpeg(faces)).faces


def test_with_api_keys_the_page_needs_a_stream_key_and_the_stream_limits_hold(start_server, faces, tmp_path):
    keys = tmp_path / "keys.yaml"
    stream_key = auth.add_key(keys, "phone", "stream")
    verify_key = auth.add_key(keys, "partner", "verify")
    server = start_server(web_listen="127.0.0.1:0", api_keys_file=keys, max_streams_per_client=1,
                          stream_idle_timeout_s=3)
    page = urllib.request.urlopen(server.server.web.url.rstrip("/") + "/config.json", timeout=10)
    assert json.loads(page.read())["key_required"] is True
    for options, code in (({}, "UNAUTHENTICATED"), ({"api_key": "mbk_forged"}, "UNAUTHENTICATED"),
                          ({"api_key": verify_key}, "PERMISSION_DENIED")):
        with open_stream(server, options) as ws:
            error = receive(ws)
            assert error["type"] == "error" and error["code"] == code, (options, error)
            assert closed_code(ws) == 1008
    with open_stream(server, {"api_key": stream_key}) as first:
        first.send(hamilton_jpeg(faces))
        started = time.monotonic()  # the stream's last message
        assert receive(first)["status"] == "OK"
        # the key's second stream is over max_streams_per_client: the same limit as its gRPC streams
        with open_stream(server, {"api_key": stream_key}) as second:
            error = receive(second)
            assert error["code"] == "RESOURCE_EXHAUSTED" and "open streams" in error["message"]
            assert closed_code(second) == 1013
        # and an idle stream is closed after stream_idle_timeout_s
        error = receive(first, timeout=15)
        assert error["code"] == "DEADLINE_EXCEEDED" and 2.5 <= time.monotonic() - started <= 10, error
        assert closed_code(first) == 1013


# --------------------------------------------------------------------------- the listener, without Triton


def _settings(tmp_path, **values) -> config.Settings:
    env = {"MOBIDEM_DATA_DIR": str(tmp_path), **{f"MOBIDEM_{k.upper()}": str(v) for k, v in values.items()}}
    return config.load(None, environ=env)


def test_plain_http_is_refused_off_loopback(tmp_path):
    from mobidem.web import WebServer

    for listen in ("0.0.0.0:0", "192.0.2.7:8443", "example.org:443"):
        with pytest.raises(FailedPrecondition, match="browsers give the camera only to https"):
            WebServer(_settings(tmp_path, web_listen=listen), None, AuthInterceptor(None))
    for listen in ("127.0.0.1:0", "localhost:0", "[::1]:0"):
        WebServer(_settings(tmp_path, web_listen=listen), None, AuthInterceptor(None))


def test_https_with_the_servers_certificate_and_strict_headers(tmp_path):
    from mobidem.web import WebServer

    pki = certs.make_dev(tmp_path / "pki")
    settings = _settings(tmp_path, web_listen="127.0.0.1:0", tls_cert=pki["server"], tls_key=pki["server-key"])

    async def fetch():
        web = WebServer(settings, None, AuthInterceptor(None))
        await web.start()
        try:
            assert web.url.startswith("https://127.0.0.1:")
            context = ssl.create_default_context(cafile=str(pki["ca"]))

            def get(path):
                return urllib.request.urlopen(web.url.rstrip("/") + path, context=context, timeout=10)

            page, script, missing = await asyncio.to_thread(lambda: (get("/"), get("/live.js"), _status(get, "/x")))
            return page.headers, page.read(), script.headers, missing
        finally:
            await web.stop()

    headers, body, script_headers, missing = asyncio.run(fetch())
    assert b'<video id="preview"' in body and b'<script type="module" src="live.js">' in body
    static = Path(__file__).resolve().parents[1] / "server" / "mobidem" / "web" / "static"
    for f in static.iterdir():  # offline: nothing loaded from another origin (no CDN)
        assert not re.search(r"(src|href|import)[=\s(]*[\"'](https?:)?//", f.read_text()), f
    assert headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"
    assert script_headers["Content-Type"].startswith("text/javascript")
    assert missing == 404


def _status(get, path) -> int:
    try:
        return get(path).status
    except urllib.error.HTTPError as exc:
        return exc.code
