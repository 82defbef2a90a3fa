"""The gateway end to end: real server, real Triton, real models, real images and videos."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import cv2
import time

import grpc
import numpy as np
import pytest

from conftest import person_photos
from mobidem.client import to_image, video_frames
from mobidem.v1 import mobidem_pb2 as pb
from mobidem.v1 import mobidem_pb2_grpc as pb_grpc

REFERENCE = json.loads((Path(__file__).parent / "reference" / "hamilton_facerec.json").read_text())
OK = pb.FrameResult.STATUS_OK


def iou(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box(face) -> tuple:
    return (face.box.x0, face.box.y0, face.box.x1, face.box.y1)


@pytest.fixture(scope="module")
def hamilton(faces, start_server):
    """Enrol the two people of the clip as the face_recognition example does, stream the clip once."""
    server = start_server()
    names = {}
    with server.client() as client:
        for person, rel in REFERENCE["known"].items():
            r = client.enroll(person, [faces / rel], face_index=0)
            names[r.identity.id] = person
        frames = list(video_frames(str(faces / REFERENCE["video"])))
        results = list(client.stream(frames))
    return frames, results, names


def test_one_result_per_frame_in_order(hamilton):
    frames, results, _ = hamilton
    assert [r.sequence for r in results] == list(range(1, len(frames) + 1))
    assert all(r.status == OK for r in results)
    assert all(r.width == 640 and r.height == 360 for r in results)
    r = next(r for r in results if r.faces)
    assert {m.role for m in r.models} == {"detector", "face_model"}
    assert r.timings.total_ms > 0 and r.timings.detect_ms > 0 and r.timings.embed_ms > 0
    face = r.faces[0]
    assert len(face.landmarks) == 6 and 0.5 <= face.detection_score <= 1
    assert len(face.expression.probabilities) == 7
    assert abs(sum(p.probability for p in face.expression.probabilities) - 1) < 1e-3


def test_faces_found_where_face_recognition_finds_them(hamilton):
    _, results, _ = hamilton
    ref_frames = REFERENCE["frames"]
    with_face = [i for i, f in enumerate(ref_frames) if f["faces"]]
    found = sum(1 for i in with_face if any(
        iou(box(face), ref["box"]) > 0.3 for face in results[i].faces for ref in ref_frames[i]["faces"]))
    rate = found / len(with_face)
    print(f"faces found in {found}/{len(with_face)} frames where face_recognition finds one ({rate:.1%})")
    assert rate >= 0.95


def test_enrolled_people_recognised_where_the_library_example_recognises_them(hamilton):
    """Agreement with face_recognition's facerec_from_video_file on the frames where it names someone."""
    _, results, names = hamilton
    named = [(i, f) for i, f in enumerate(REFERENCE["frames"]) if any(x["name"] for x in f["faces"])]
    agree = 0
    for i, ref in named:
        ours = {names.get(face.identity.identity_id) for face in results[i].faces if face.identity.known}
        agree += {x["name"] for x in ref["faces"] if x["name"]} <= ours
    rate = agree / len(named)
    print(f"recognised the same people in {agree}/{len(named)} frames the library example names ({rate:.1%})")
    assert rate >= 0.90
    # and never a wrong name on a frame where the example names someone
    wrong = sum(1 for i, ref in named for face in results[i].faces if face.identity.known
                and names[face.identity.identity_id] not in {x["name"] for x in ref["faces"]} and len(ref["faces"]) == 1)
    assert wrong == 0


def test_concurrent_streams_match_a_single_stream_and_share_batches(faces, server, triton):
    import tritonclient.grpc as grpcclient

    frames = list(video_frames(str(faces / "videos" / "facenet_pytorch_video.mp4"), 24))
    encoded = [to_image(f) for f in frames]  # same bytes for every stream
    with server.client() as client:
        # tracking off: this compares every frame's full work alone and batched with other streams (with
        # tracking, a score that batching moves in the last bits can change where the detector looks)
        alone = list(client.stream([e.encoded for e in encoded], tracking=pb.TRACKING_OFF))
    stats = grpcclient.InferenceServerClient(triton.grpc_url)
    before = _batch_counts(stats)
    outputs = [None] * 4

    def run(k):
        with server.client() as c:
            outputs[k] = list(c.stream([e.encoded for e in encoded], tracking=pb.TRACKING_OFF))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    [t.start() for t in threads]
    [t.join(300) for t in threads]
    after = _batch_counts(stats)
    for out in outputs:
        assert [r.sequence for r in out] == [r.sequence for r in alone]
        for a, b in zip(alone, out):
            assert len(a.faces) == len(b.faces)
            for fa, fb in zip(a.faces, b.faces):
                assert np.allclose(box(fa), box(fb), atol=0.5)
                assert fa.expression.label == fb.expression.label
    assert sum(len(r.faces) for r in alone) >= 2 * len(alone), "several faces per frame expected"
    batched = {m: (after[m][0] - before[m][0]) / max(1, after[m][1] - before[m][1]) for m in after}
    print("average Triton batch sizes during the concurrent run:", batched)
    assert max(batched.values()) > 1.0


def _batch_counts(client) -> dict:
    out = {}
    for s in client.get_inference_statistics("", as_json=True)["model_stats"]:
        out[s["name"]] = (int(s.get("inference_count", 0)), int(s.get("execution_count", 0)))
    return out


@pytest.mark.parametrize("kind", ["noface", "multiface"])
def test_analyze_still_images(faces, client, kind):
    for path in sorted((faces / kind).glob("*.jpg")):
        result = client.analyze(path)
        reference = REFERENCE["images_faces_found"][f"{kind}/{path.name}"]
        if kind == "noface":
            assert len(result.faces) == 0, f"{path.name}: false face"
        else:
            assert len(result.faces) >= reference, f"{path.name}: {len(result.faces)} < library's {reference}"


# ------------------------------------------------------------------------------------------ bad input

def _status(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def jpeg(faces) -> bytes:
    return (person_photos(faces, "barack_obama")[0]).read_bytes()


@pytest.mark.parametrize("make, code, words", [
    (lambda d: pb.Image(encoded=b"\xff\xd8\xff\xe0 not really a jpeg" * 10), "INVALID_ARGUMENT", "could not be decoded"),
    (lambda d: pb.Image(encoded=d[: len(d) // 3]), None, None),  # truncated: decodes partly or is refused
    (lambda d: pb.Image(encoded=b""), "INVALID_ARGUMENT", "empty"),
    (lambda d: pb.Image(), "INVALID_ARGUMENT", "image is missing"),
    (lambda d: pb.Image(raw=pb.RawImage(width=64, height=64, format=pb.PIXEL_FORMAT_RGB8, data=b"\0" * 100)),
     "INVALID_ARGUMENT", "needs 12288 bytes"),
    (lambda d: pb.Image(raw=pb.RawImage(width=0, height=0, format=pb.PIXEL_FORMAT_RGB8)), "INVALID_ARGUMENT", "positive"),
    (lambda d: pb.Image(raw=pb.RawImage(width=50000, height=50000, format=pb.PIXEL_FORMAT_RGB8)),
     "RESOURCE_EXHAUSTED", "at most"),
    (lambda d: pb.Image(raw=pb.RawImage(width=8, height=8, data=b"\0" * 192)), "INVALID_ARGUMENT", "pixel format"),
])
def test_bad_images_get_a_clear_status(faces, client, server, make, code, words):
    err = None
    try:
        client.analysis.Analyze(pb.AnalyzeRequest(image=make(jpeg(faces))), timeout=30)
    except grpc.RpcError as exc:
        err = exc
    if code is None:  # a truncated JPEG: OpenCV may recover part of it; either way the server answers
        assert err is None or err.code() == grpc.StatusCode.INVALID_ARGUMENT
    else:
        assert err is not None and err.code().name == code, err
        assert words in err.details()
    assert client.analyze(person_photos(faces, "barack_obama")[0]).faces  # still serving


def test_oversized_message_is_refused(client, server):
    big = pb.Image(encoded=b"\xff" * (server.server.settings.max_message_bytes + 128 * 1024))
    err = _status(lambda: client.analysis.Analyze(pb.AnalyzeRequest(image=big), timeout=30))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_png_header_bomb_refused_before_decoding(client):
    import struct
    import zlib

    header = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)
    data = header + struct.pack(">I", zlib.crc32(header[12:]) & 0xFFFFFFFF)
    err = _status(lambda: client.analysis.Analyze(pb.AnalyzeRequest(image=pb.Image(encoded=data)), timeout=30))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "50000x50000" in err.details()


def test_stream_must_start_with_options(client, faces):
    frame = pb.StreamRequest(frame=pb.Frame(sequence=1, image=pb.Image(encoded=jpeg(faces))))
    err = _status(lambda: list(client.analysis.Stream(iter([frame]), timeout=30)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "first message" in err.details()


def test_stream_sequence_must_increase(client, faces):
    def requests():
        yield pb.StreamRequest(options=pb.StreamOptions())
        for seq in (1, 2, 2):
            yield pb.StreamRequest(frame=pb.Frame(sequence=seq, image=pb.Image(encoded=jpeg(faces))))
    err = _status(lambda: list(client.analysis.Stream(requests(), timeout=60)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "must increase" in err.details()


def test_bad_frame_fails_alone_and_the_stream_goes_on(client, faces):
    images = [jpeg(faces), b"garbage", jpeg(faces)]
    results = list(client.stream(images, tracking=pb.TRACKING_OFF))  # unrelated photos, not a video
    assert [r.status for r in results] == [OK, pb.FrameResult.STATUS_FAILED, OK]
    assert results[1].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "format not accepted" in results[1].error_message and "JPEG, PNG, WebP or HEIC" in results[1].error_message


def test_latest_frame_wins_drops_with_a_reason(client, faces):
    frames = [jpeg(faces)] * 40
    results = list(client.stream(frames, drop_policy=pb.DROP_POLICY_LATEST_FRAME_WINS, max_in_flight=1))
    assert [r.sequence for r in results] == list(range(1, 41))
    dropped = [r for r in results if r.status == pb.FrameResult.STATUS_DROPPED]
    # 40 frames sent at once to a stream that holds one: most wait while one is analysed, and each newer
    # frame supersedes the one waiting (nothing dropped would mean the policy was not applied)
    assert len(dropped) >= 10, f"only {len(dropped)} of 40 frames dropped"
    for r in dropped:
        assert "latest-frame-wins" in r.drop_reason
        newer = int(re.search(r"superseded by frame (\d+)", r.drop_reason).group(1))
        assert r.sequence < newer <= 40, r.drop_reason
    assert {r.status for r in results} == {OK, pb.FrameResult.STATUS_DROPPED}
    assert results[-1].status == OK, "the newest frame must win"


def test_health_and_reflection(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "mobidem.v1.FaceAnalysis", "mobidem.v1.Gallery"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
                health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in responses for s in r.list_services_response.service}
        assert {"mobidem.v1.FaceAnalysis", "mobidem.v1.Gallery", "grpc.health.v1.Health"} <= names


def test_stub_works_without_the_client_library(server, faces):
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.FaceAnalysisStub(channel)
        result = stub.Analyze(pb.AnalyzeRequest(image=pb.Image(encoded=jpeg(faces)), tasks=[pb.TASK_DETECT]))
        assert result.faces and not result.faces[0].HasField("expression")


@pytest.mark.parametrize("policy", [pb.DROP_POLICY_NONE, pb.DROP_POLICY_LATEST_FRAME_WINS])
def test_the_server_holds_at_most_max_in_flight_frames_of_a_stream(client, server, faces, policy):
    import threading

    stats = server.server.stats
    frames = [jpeg(faces)] * 30
    peak, done = [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], stats.in_flight)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        results = list(client.stream(frames, max_in_flight=2, drop_policy=policy))
    finally:
        done.set()
        watcher.join()
    assert len(results) == 30
    assert 1 <= peak[0] <= 2, f"{peak[0]} frames in flight with max_in_flight 2"
