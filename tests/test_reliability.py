"""Bad input, faults and limits, through the real gRPC server and Triton."""

from __future__ import annotations

import contextlib
import itertools
import logging
import signal
import sqlite3
import threading
import time

import cv2
import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RunningServer, person_photos, spawn_server
from mobidem.client import to_image, video_frames
from mobidem.v1 import mobidem_pb2 as pb

OK, FAILED = pb.FrameResult.STATUS_OK, pb.FrameResult.STATUS_FAILED
DOCUMENTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.fixture(scope="module")
def hamilton_jpegs(faces):
    return [to_image(f).encoded for f in video_frames(str(faces / "videos" / "short_hamilton_clip.mp4"), 120)]


# ------------------------------------------------------------------------------------------ faults

@pytest.fixture()
def managed(model_repository, tmp_path):
    from mobidem import config

    env = {"MOBIDEM_DATA_DIR": str(tmp_path), "MOBIDEM_LISTEN": "127.0.0.1:0", "MOBIDEM_METRICS_LISTEN": "",
           "MOBIDEM_TRITON_METRICS_PORT": "0"}
    server = RunningServer(config.load(None, environ=env))
    yield server
    server.stop()


def test_triton_killed_during_four_streams(managed, faces, hamilton_jpegs):
    """SIGKILL the managed Triton in the middle of 4 paced streams: every frame gets a result
    (OK, or FAILED with UNAVAILABLE), no stream hangs, the streams resume after the restart, and
    the gallery is intact."""
    with managed.client() as client:
        enrolled = client.enroll("Lin", [faces / "identities/lin_manuel_miranda/facerecognition_1.jpg"], face_index=0)
    frames = hamilton_jpegs
    results: list[list] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def paced():  # the clip over and over, until the restarted Triton has served a while
        for i in itertools.count():
            if stop.is_set():
                return
            time.sleep(1 / 12)
            yield frames[i % len(frames)]

    def run(k):
        try:
            with managed.client() as c:
                results[k] = list(c.stream(paced(), timeout=180))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    [t.start() for t in threads]
    time.sleep(2.0)
    managed.server.managed.kill()
    # however long the restart takes on this machine (seconds when idle, more under load), the
    # streams must see it and resume: run on until health is SERVING again, then 3 s more
    time.sleep(1.5)
    deadline = time.monotonic() + 120
    while not managed.server.ready:
        assert time.monotonic() < deadline, "the killed Triton was not restarted"
        time.sleep(0.2)
    time.sleep(3.0)
    stop.set()
    [t.join(150) for t in threads]
    assert not any(t.is_alive() for t in threads), "a stream hung"
    assert not errors, errors
    unavailable = grpc.StatusCode.UNAVAILABLE.value[0]
    for out in results:
        assert [r.sequence for r in out] == list(range(1, len(out) + 1)) and len(out) > 36
        failed = [r for r in out if r.status == FAILED]
        assert failed, "Triton's death was not noticed"
        assert all(r.error_code in (unavailable, grpc.StatusCode.DEADLINE_EXCEEDED.value[0]) for r in failed)
        last_failure = max(r.sequence for r in failed)
        assert any(r.status == OK for r in out if r.sequence > last_failure), "the stream did not resume"
        assert {r.status for r in out} <= {OK, FAILED}
    with managed.client() as client:
        assert client.get_identity(enrolled.identity.id).template_count == 1
        assert client.identify(faces / "identities/lin_manuel_miranda/facerecognition_1.jpg").match.known
    db = sqlite3.connect(managed.server.settings.data_path / "gallery.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_client_disconnect_frees_resources(server, hamilton_jpegs):
    stats = server.server.stats
    with server.client() as client:
        call = client.stream(iter(hamilton_jpegs * 3), max_in_flight=8)
        for _ in range(5):
            next(call)
        assert stats.active_streams >= 1
        call.cancel()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (stats.in_flight or stats.active_streams):
        time.sleep(0.05)
    assert stats.in_flight == 0 and stats.active_streams == 0, (
        f"in flight {stats.in_flight}, streams {stats.active_streams} 10 s after the cancel; the server's tasks:\n"
        + _tasks(server.loop))


def _tasks(loop) -> str:
    """Where each task of the server's event loop waits (for a failure's message)."""
    import asyncio
    import io

    async def dump():
        out = io.StringIO()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.print_stack(limit=6, file=out)
        return out.getvalue()

    return asyncio.run_coroutine_threadsafe(dump(), loop).result(10)[-6000:]


def test_streams_per_client_are_limited(start_server, hamilton_jpegs):
    server = start_server(max_streams_per_client=2)
    gate = threading.Event()

    def slow():
        yield hamilton_jpegs[0]
        gate.wait(30)

    with server.client() as client:
        open_calls = [client.stream(slow()) for _ in range(2)]
        for call in open_calls:
            next(call)
        with pytest.raises(grpc.RpcError) as info:
            list(client.stream(iter(hamilton_jpegs[:1])))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "open streams" in info.value.details()
        gate.set()
        for call in open_calls:
            call.cancel()


def _scrape(port: int) -> dict[tuple, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _metric(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _settled(port: int, check, timeout: float = 10.0) -> dict:
    """The server's metrics once ``check(samples)`` holds (they are updated as the call's handler ends)."""
    end = time.monotonic() + timeout
    while True:
        samples = _scrape(port)
        if check(samples) or time.monotonic() > end:
            return samples
        time.sleep(0.1)


def test_a_deadline_that_runs_out_inside_the_server(server, faces):
    """Analyze of a 12-MP photo with a deadline a third of what its analysis takes: the call reaches the
    server (a 1 ms deadline would be answered by the client library alone), the server ends it at the
    deadline instead of finishing the work, counts it as DEADLINE_EXCEEDED, and answers normally after."""
    photo = person_photos(faces, "barack_obama")[0]
    big = cv2.imencode(".jpg", cv2.resize(cv2.imread(str(photo)), (4032, 3024), interpolation=cv2.INTER_CUBIC),
                       [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
    port = server.server.metrics_port
    with server.client() as client:
        full = []
        for _ in range(2):
            started = time.monotonic()
            assert client.analyze(big).faces
            full.append(time.monotonic() - started)
        full = min(full)
        before = _scrape(port)
        with pytest.raises(grpc.RpcError) as info:
            client.analysis.Analyze(pb.AnalyzeRequest(image=pb.Image(encoded=big)), timeout=full / 3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        after = _settled(port, lambda s: _metric(s, "mobidem_grpc_request_duration_seconds_count", method="Analyze")
                         > _metric(before, "mobidem_grpc_request_duration_seconds_count", method="Analyze"))

        def delta(name, **labels):
            return _metric(after, name, **labels) - _metric(before, name, **labels)

        assert delta("mobidem_grpc_requests_total", method="Analyze", code="DEADLINE_EXCEEDED") == 1
        assert delta("mobidem_grpc_requests_total", method="Analyze", code="OK") == 0
        assert delta("mobidem_grpc_requests_total", method="Analyze", code="CANCELLED") == 0
        # the server's own handling ended at the deadline, not when the work would have been done
        assert delta("mobidem_grpc_request_duration_seconds_sum", method="Analyze") < full / 3 + full / 2, full
        assert client.analyze(person_photos(faces, "barack_obama")[0]).faces  # healthy after


def test_a_stream_deadline_reached_with_frames_in_flight(start_server, hamilton_jpegs, caplog):
    """A stream that sends frames faster than they are analysed, with a 2 s deadline: it ends with
    DEADLINE_EXCEEDED after an unbroken run of results; the server cancels the frames it still held
    (received, never answered), its in-flight and open-stream counters return to zero, it counts the call
    as DEADLINE_EXCEEDED and logs the stream's end, and the client's stream place is free again (one
    stream per client on this server)."""
    server = start_server(max_streams_per_client=1)
    port = server.server.metrics_port
    stop = threading.Event()

    def endless():
        for i in itertools.count():
            if stop.is_set():
                return
            yield hamilton_jpegs[i % len(hamilton_jpegs)]

    before = _scrape(port)
    got = []
    with server.client() as client, caplog.at_level(logging.INFO, logger="mobidem.api.analysis"):
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            for result in client.stream(endless(), timeout=2.0, max_in_flight=8):
                got.append(result)
        elapsed = time.monotonic() - started
        stop.set()
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and 1.9 <= elapsed < 6, (info.value, elapsed)
        assert got and [r.sequence for r in got] == list(range(1, len(got) + 1))
        assert {r.status for r in got} == {OK}
        after = _settled(port, lambda s: _metric(s, "mobidem_frames_in_flight") == 0
                         and _metric(s, "mobidem_active_streams") == 0
                         and _metric(s, "mobidem_grpc_requests_total", method="Stream", code="DEADLINE_EXCEEDED") >= 1)
        assert _metric(after, "mobidem_frames_in_flight") == 0 and _metric(after, "mobidem_active_streams") == 0
        assert server.server.stats.in_flight == 0 and server.server.stats.active_streams == 0

        def delta(name, **labels):
            return _metric(after, name, **labels) - _metric(before, name, **labels)

        assert delta("mobidem_grpc_requests_total", method="Stream", code="DEADLINE_EXCEEDED") == 1
        received, answered = delta("mobidem_frames_received_total"), delta("mobidem_frames_processed_total")
        assert delta("mobidem_frames_failed_total", code="DEADLINE_EXCEEDED") == 0
        assert len(got) <= answered < received, (len(got), answered, received)  # held frames were cancelled
        closed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stream closed")]
        assert closed == [f"stream closed: {int(answered)} ok, 0 dropped, 0 failed"], closed
        # the same connection (the same client) may open its one stream again, and it works
        again = list(client.stream(iter(hamilton_jpegs[:3]), timeout=60))
        assert [(r.sequence, r.status) for r in again] == [(1, OK), (2, OK), (3, OK)]


def test_sigterm_finishes_accepted_frames_refuses_new_calls_and_exits_within_the_grace(triton, tmp_path, faces,
                                                                                       hamilton_jpegs):
    """SIGTERM with two streams open (docs/RELIABILITY.md: SIGTERM stops new calls, lets in-flight ones
    finish within shutdown_grace_s): new calls are refused at once; stream A, held open across the
    signal, goes on being served and gets every one of its 32 frames back OK; stream B never ends by
    itself, so the grace runs out: B's results are an unbroken OK run, then the call ends UNAVAILABLE (what
    a resuming client resumes on; the frames it still had in flight get no result), and the server exits 0
    when the configured grace is over, not after a built-in 10 s; the gallery is intact."""
    from mobidem.client import MobidemClient

    grace = 5.0
    log = tmp_path / "serve.log"
    proc, target = spawn_server(triton.grpc_url, tmp_path / "data", log, shutdown_grace_s=grace)
    released, stop = threading.Event(), threading.Event()

    def held_open():  # 16 frames, then nothing until the drain has been checked, then 16 more and the end
        yield from hamilton_jpegs[:16]
        released.wait(60)
        yield from hamilton_jpegs[16:32]

    def endless():
        for i in itertools.count():
            if stop.is_set():
                return
            time.sleep(0.1)
            yield hamilton_jpegs[i % len(hamilton_jpegs)]

    results: dict[str, list] = {"A": [], "B": []}
    ended: dict[str, object] = {}

    def run(name, frames):
        try:
            with MobidemClient(target) as c:
                for r in c.stream(frames, max_in_flight=8, timeout=120):
                    results[name].append(r)
            ended[name] = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            ended[name] = exc.code()

    stack = contextlib.ExitStack()
    try:
        with MobidemClient(target) as client:
            client.enroll("Obama", [person_photos(faces, "barack_obama")[0]], face_index=0)
        threads = {name: threading.Thread(target=run, args=(name, frames))
                   for name, frames in (("A", held_open()), ("B", endless()))}
        for thread in threads.values():
            thread.start()
        wait_until = time.monotonic() + 60
        while not (len(results["A"]) >= 8 and results["B"]) and time.monotonic() < wait_until:
            time.sleep(0.05)
        assert len(results["A"]) >= 8 and results["B"], (len(results["A"]), len(results["B"]))
        connected = stack.enter_context(MobidemClient(target))
        connected.analysis.Analyze(pb.AnalyzeRequest(image=to_image(hamilton_jpegs[0])), timeout=30)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        refused = None  # a new call during the drain (the signal is handled within moments), on a
        while refused is None and time.monotonic() < signalled + 3:  # connection made before the signal
            try:
                connected.analysis.Analyze(pb.AnalyzeRequest(image=to_image(hamilton_jpegs[0])), timeout=5)
                time.sleep(0.05)
            except grpc.RpcError as exc:
                refused = exc
        # a call that arrives at a server shutting down is refused UNAVAILABLE (retried elsewhere), never
        # served, with a message that says why (gRPC's own shutdown would close the listener, and say less)
        assert refused is not None and refused.code() == grpc.StatusCode.UNAVAILABLE, refused
        assert "shutting down" in refused.details(), refused.details()
        assert proc.poll() is None, "the server did not wait for the streams in flight"
        released.set()
        threads["A"].join(60)
        rc = proc.wait(grace + 30)
        exited = time.monotonic() - signalled
        stop.set()
        threads["B"].join(30)
    finally:
        released.set()
        stop.set()
        stack.close()
        if proc.poll() is None:
            proc.kill()
    assert rc == 0, log.read_text()[-2000:]
    assert ended["A"] == grpc.StatusCode.OK, ended
    assert [(r.sequence, r.status) for r in results["A"]] == [(i, OK) for i in range(1, 33)]
    assert ended["B"] == grpc.StatusCode.UNAVAILABLE, ended
    assert [(r.sequence, r.status) for r in results["B"]] == [(i, OK) for i in range(1, len(results["B"]) + 1)]
    # B kept the server busy until the grace ran out; then it closed promptly
    assert grace - 0.5 <= exited <= grace + 4, exited
    db = sqlite3.connect(tmp_path / "data" / "gallery.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM identities").fetchone()[0] == 1


# ------------------------------------------------------------------------------------------ bad input

def test_malformed_protobuf_bytes(server):
    with grpc.insecure_channel(server.target) as channel:
        for method in ("/mobidem.v1.FaceAnalysis/Analyze", "/mobidem.v1.Gallery/Enroll", "/mobidem.v1.Gallery/Verify"):
            call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            with pytest.raises(grpc.RpcError) as info:
                call(b"\x0a\xff\xff\xff\xff\x0f garbage", timeout=10)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, info.value)
            assert "not a valid protobuf" in info.value.details()
        stream = channel.stream_stream("/mobidem.v1.FaceAnalysis/Stream", request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as info:
            list(stream(iter([b"\x12\xff\xff\xff"]), timeout=10))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_message_of_the_wrong_type(server, faces):
    """A VerifyRequest sent to Analyze parses (protobuf ignores unknown fields) but names no image."""
    with grpc.insecure_channel(server.target) as channel:
        call = channel.unary_unary("/mobidem.v1.FaceAnalysis/Analyze", request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        wrong = pb.VerifyRequest(identity_id="x", operating_point="far_1e-3").SerializeToString()
        with pytest.raises(grpc.RpcError) as info:
            call(wrong, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_long_stream_of_tiny_frames(server):
    tiny = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    with server.client() as client:
        out = list(client.stream(iter([tiny] * 500)))
    assert [r.sequence for r in out] == list(range(1, 501)) and all(r.status == OK and not r.faces for r in out)


@pytest.mark.parametrize("name, metadata", [
    ("Robert'); DROP TABLE identities;--", {"note": "' OR 1=1 --", "x\"y": "<script>alert(1)</script>"}),
    ("Zoë Ŝtraße 王小明 🙂", {"città": "Zürich ☃", "emoji": "👩🏽‍💻"}),
    ("\u202eevil\u200b name", {"nul?": "tab\there"}),
])
def test_unicode_and_injection_in_names_and_metadata(start_server, faces, name, metadata):
    server = start_server()
    with server.client() as client:
        r = client.enroll(name, [person_photos(faces, "colin_powell")[0]], face_index=0, metadata=metadata)
        got = client.get_identity(r.identity.id)
        assert got.display_name == name and dict(got.metadata) == metadata
        assert [i.id for i in client.list_identities()] == [r.identity.id]


def test_absurd_field_values(server, faces):
    photo = person_photos(faces, "colin_powell")[0]
    with server.client() as client:
        for call, code in [
            (lambda: client.enroll("x" * 10_000, [photo], face_index=0), grpc.StatusCode.INVALID_ARGUMENT),
            (lambda: client.enroll("ok", [photo], face_index=0, metadata={f"k{i}": "v" for i in range(1000)}),
             grpc.StatusCode.INVALID_ARGUMENT),
            (lambda: client.enroll("ok", [photo], identity_id="../../etc/passwd"), grpc.StatusCode.INVALID_ARGUMENT),
            (lambda: client.identify(photo, top_k=10**9), None),
            (lambda: list(client.list_identities(page_size=10**9)), None),
        ]:
            try:
                call()
                assert code is None
            except grpc.RpcError as exc:
                assert exc.code() == code, exc


# ------------------------------------------------------------------------------------------ fuzz

def _mutations(seed_jpeg: bytes):
    flip = st.tuples(st.integers(0, len(seed_jpeg) - 1), st.integers(0, 255))
    return st.one_of(
        st.binary(max_size=512).map(lambda b: pb.Image(encoded=b)),
        st.lists(flip, min_size=1, max_size=8).map(
            lambda fl: pb.Image(encoded=bytes(_flipped(seed_jpeg, fl)))),
        st.integers(0, len(seed_jpeg)).map(lambda n: pb.Image(encoded=seed_jpeg[:n])),
        st.builds(lambda w, h, f, s, n: pb.Image(raw=pb.RawImage(width=w, height=h, format=f, stride=s, data=b"\x80" * n)),
                  st.integers(0, 70000), st.integers(0, 70000), st.integers(0, 8), st.integers(0, 300),
                  st.integers(0, 4096)),
        st.builds(lambda w, h, f: pb.Image(raw=pb.RawImage(width=w, height=h, format=f,
                                                           data=b"\x10" * (w * h * (4 if f in (3, 4) else 1 if f == 5 else 3)))),
                  st.integers(1, 40), st.integers(1, 40), st.integers(1, 5)),
        st.just(pb.Image()),
    )


def _flipped(data: bytes, flips) -> bytearray:
    out = bytearray(data)
    for pos, byte in flips:
        out[pos] = byte
    return out


def test_fuzz_analyze_10000_inputs(server, faces):
    """10 000 generated images (random bytes, bit-flipped and truncated JPEGs, raw frames with
    random dimensions, formats, strides and lengths) through Analyze: only documented statuses,
    no hang, the server healthy after."""
    small = cv2.resize(cv2.imread(str(person_photos(faces, "barack_obama")[0])), (64, 64))
    seed = cv2.imencode(".jpg", small)[1].tobytes()
    seen: dict[str, int] = {}
    channel = grpc.insecure_channel(server.target)
    from mobidem.v1 import mobidem_pb2_grpc as pb_grpc

    stub = pb_grpc.FaceAnalysisStub(channel)

    @settings(max_examples=10_000, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(_mutations(seed))
    def one(image):
        try:
            stub.Analyze(pb.AnalyzeRequest(image=image, tasks=[pb.TASK_DETECT]), timeout=20)
            seen["OK"] = seen.get("OK", 0) + 1
        except grpc.RpcError as exc:
            assert exc.code() in DOCUMENTED, (exc.code(), exc.details())
            seen[exc.code().name] = seen.get(exc.code().name, 0) + 1

    one()
    channel.close()
    print("fuzz outcomes:", seen)
    assert sum(seen.values()) >= 10_000
    with server.client() as client:
        assert client.analyze(person_photos(faces, "barack_obama")[0]).faces
