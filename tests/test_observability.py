"""Metrics, health, Prometheus and logs, against the real server and Triton."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO, RunningServer, need, person_photos
from mobidem.client import to_image, video_frames
from mobidem.v1 import mobidem_pb2 as pb

DEPLOY = REPO / "deploy" / "prometheus"


def scrape(port: int) -> dict[tuple, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_and_histograms_move_by_exactly_the_stream(faces, server):
    frames = [to_image(f).encoded for f in video_frames(str(faces / "videos" / "short_hamilton_clip.mp4"), 30)]
    frames.insert(10, b"not an image")
    before = scrape(server.server.metrics_port)
    with server.client() as client:
        results = list(client.stream(frames, tracking=pb.TRACKING_OFF))  # every face embedded in every frame
    after = scrape(server.server.metrics_port)
    d = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
    ok = [r for r in results if r.status == pb.FrameResult.STATUS_OK]
    assert len(results) == 31 and len(ok) == 30
    assert d("mobidem_frames_received_total") == 31
    assert d("mobidem_frames_processed_total") == 30
    assert d("mobidem_frames_failed_total", code="INVALID_ARGUMENT") == 1
    assert d("mobidem_frames_received_total") == (d("mobidem_frames_processed_total")
                                                  + d("mobidem_frames_failed_total", code="INVALID_ARGUMENT"))
    assert d("mobidem_faces_detected_total") == sum(len(r.faces) for r in ok)
    for stage in ("decode", "detect", "total"):
        assert d("mobidem_stage_duration_seconds_count", stage=stage) == 30, stage
    with_faces = sum(1 for r in ok if r.faces)
    assert d("mobidem_stage_duration_seconds_count", stage="embed") == 30
    assert with_faces > 0
    assert d("mobidem_grpc_requests_total", method="Stream", code="OK") == 1
    assert d("mobidem_triton_request_batch_size_count", model="face_multitask") == with_faces
    assert d("mobidem_triton_request_batch_size_sum", model="face_multitask") == sum(len(r.faces) for r in ok)
    assert value(after, "mobidem_frames_in_flight") == 0 and value(after, "mobidem_active_streams") == 0


def test_tracking_counters_move_by_exactly_the_stream(faces, server):
    """With tracking on: every face is either embedded (fresh) or not (skipped), the embedder's batches
    hold exactly the fresh faces and the expression model's exactly the others."""
    frames = [to_image(f).encoded for f in video_frames(str(faces / "videos" / "short_hamilton_clip.mp4"), 60)]
    before = scrape(server.server.metrics_port)
    with server.client() as client:
        results = list(client.stream(frames, tracking=pb.TRACKING_ON, fps=30))
    after = scrape(server.server.metrics_port)
    d = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
    faces_ = [f for r in results for f in r.faces]
    fresh = sum(f.fresh_embedding for f in faces_)
    assert fresh and len(faces_) - fresh  # both kinds happened
    assert d("mobidem_track_embeddings_fresh_total") == fresh
    assert d("mobidem_track_embeddings_skipped_total") == len(faces_) - fresh
    assert d("mobidem_triton_request_batch_size_sum", model="face_multitask") == fresh
    assert d("mobidem_triton_request_batch_size_sum", model="fer_xception") == len(faces_) - fresh
    # every track id issued (new tracks and splits) is in the results of the frame that issued it
    assert d("mobidem_tracks_started_total") == len({f.track_id for f in faces_}) > 0


def test_grpc_errors_and_decisions_are_counted(faces, server):
    obama = person_photos(faces, "barack_obama")
    before = scrape(server.server.metrics_port)
    with server.client() as client:
        with pytest.raises(grpc.RpcError):
            client.analysis.Analyze(pb.AnalyzeRequest(image=pb.Image(encoded=b"")))
        client.verify(obama[0], obama[1])
        client.verify(obama[0], person_photos(faces, "tony_blair")[0], reference_face_index=0)  # a 2nd, cut-off face
    after = scrape(server.server.metrics_port)
    d = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
    assert d("mobidem_grpc_requests_total", method="Analyze", code="INVALID_ARGUMENT") == 1
    assert d("mobidem_grpc_requests_total", method="Verify", code="OK") == 2
    assert d("mobidem_decisions_total", kind="verify", outcome="match") == 1
    assert d("mobidem_decisions_total", kind="verify", outcome="no_match") == 1


def test_no_label_per_stream_or_identity(server):
    names = {labels for (_, labels) in scrape(server.server.metrics_port)}
    keys = {k for labels in names for k, _ in labels}
    # replica: one value per configured Triton URL (a bounded set, like model)
    assert keys <= {"stage", "model", "reason", "code", "method", "kind", "outcome", "le", "replica"}, keys


def test_alert_rules_pass_promtool():
    need(shutil.which("promtool") is not None, "promtool (Debian package prometheus) is not installed")
    out = subprocess.run(["promtool", "check", "rules", str(DEPLOY / "alerts.yml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="module")
def managed_server(model_repository, tmp_path_factory):
    """A server on its embedded default (managed Triton), every port a free one (never the fixed 9095 and
    8002 that the committed scrape config names: another process may hold them)."""
    from mobidem import config

    env = {"MOBIDEM_DATA_DIR": str(tmp_path_factory.mktemp("managed")), "MOBIDEM_LISTEN": "127.0.0.1:0",
           "MOBIDEM_METRICS_LISTEN": "127.0.0.1:0", "MOBIDEM_TRITON_METRICS_PORT": "0"}
    server = RunningServer(config.load(None, environ=env))
    yield server
    server.stop()


def test_prometheus_scrapes_gateway_and_triton(managed_server, tmp_path, faces):
    need(shutil.which("prometheus") is not None, "prometheus (Debian package) is not installed")
    with managed_server.client() as client:
        client.analyze(person_photos(faces, "barack_obama")[0])
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the committed config (its jobs, paths, rules), its two targets moved to this server's free ports
    committed = (DEPLOY / "prometheus.yml").read_text()
    assert committed.count('"127.0.0.1:9095"') == 1 and committed.count('"127.0.0.1:8002"') == 1
    scrape_config = tmp_path / "prometheus.yml"
    scrape_config.write_text(committed.replace("127.0.0.1:9095", f"127.0.0.1:{managed_server.server.metrics_port}")
                             .replace("127.0.0.1:8002", f"127.0.0.1:{managed_server.server.managed.metrics_port}"))
    shutil.copy(DEPLOY / "alerts.yml", tmp_path / "alerts.yml")
    prom = subprocess.Popen(["prometheus", f"--config.file={scrape_config}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
    try:
        api = f"http://127.0.0.1:{port}/api/v1"
        deadline, health, series = time.monotonic() + 60, {}, []
        while time.monotonic() < deadline:
            try:
                targets = json.load(urllib.request.urlopen(f"{api}/targets", timeout=5))["data"]["activeTargets"]
                health = {t["labels"]["job"]: t["health"] for t in targets}
                series = json.load(urllib.request.urlopen(
                    f"{api}/query?query=mobidem_frames_received_total", timeout=5))["data"]["result"]
                if health == {"mobidem": "up", "triton": "up"} and series:
                    break
            except OSError:
                pass
            time.sleep(1)
        assert health == {"mobidem": "up", "triton": "up"}, (health, (tmp_path / "prometheus.log").read_text()[-1500:])
        assert series and series[0]["metric"]["job"] == "mobidem"
        triton_series = json.load(urllib.request.urlopen(
            f"{api}/query?query=nv_inference_request_success", timeout=5))["data"]["result"]
        assert triton_series, "no Triton series scraped"
    finally:
        prom.terminate()
        prom.wait(20)


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


def _readyz(port: int) -> int:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5).status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_health_follows_the_managed_triton(managed_server, faces):
    server = managed_server.server
    assert _health(managed_server.target) == health_pb2.HealthCheckResponse.SERVING
    assert _readyz(server.metrics_port) == 200
    server.managed.kill()
    deadline, seen_down = time.monotonic() + 20, False
    while time.monotonic() < deadline and not seen_down:
        seen_down = _health(managed_server.target) == health_pb2.HealthCheckResponse.NOT_SERVING
        time.sleep(0.1)
    assert seen_down, "health did not flip to NOT_SERVING after Triton died"
    assert _readyz(server.metrics_port) == 503 or server.ready
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _health(managed_server.target) != health_pb2.HealthCheckResponse.SERVING:
        time.sleep(0.5)
    assert _health(managed_server.target) == health_pb2.HealthCheckResponse.SERVING, "Triton did not come back"
    assert _readyz(server.metrics_port) == 200
    with managed_server.client() as client:
        assert client.analyze(person_photos(faces, "barack_obama")[0]).faces


def test_logs_carry_ids_but_no_biometric_data(faces, server):
    from mobidem.logs import ContextFilter, JsonFormatter

    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        frames = list(video_frames(str(faces / "videos" / "short_hamilton_clip.mp4"), 20))
        with server.client() as client:
            client.enroll("Lin", [faces / "identities" / "lin_manuel_miranda" / "facerecognition_1.jpg"], face_index=0)
            assert len(list(client.stream(frames + [b"\xff\xd8garbage"]))) == 21
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    lines = [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]
    mine = [entry for entry in lines if entry["logger"].startswith("mobidem")]
    assert any("stream opened" in e["message"] and e.get("stream_id") for e in mine)
    assert any(e.get("frame_sequence") for e in mine), "frame-level lines carry the sequence number"
    text = buffer.getvalue()
    # eight or more numbers in a row, however printed: "0.1, 0.2", numpy's "[ 0.1  -0.2 ...", "1e-03 2e-03"
    number = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:e[-+]?\d+)?"
    # read in the decoded messages too: JSON writes numpy's line breaks as "\n", which would split a run
    messages = "\n".join(f"{e['message']} {e.get('exception', '')}" for e in lines)
    for where in (text, messages):
        assert not re.search(rf"(?:{number}[,;\s]+){{7,}}{number}", where, re.IGNORECASE), \
            "a vector of numbers (an embedding?) was logged"
    assert not re.search(r"\\x[0-9a-f]{2}.*\\x[0-9a-f]{2}", text), "bytes were logged"
    assert "/9j/" not in text and "garbage" not in text, "image bytes were logged"
