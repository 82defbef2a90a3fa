"""Holes an outside probe found, closed and shown closed against the real server and Triton.

The managed Triton refuses model control and anonymous inference; two servers start on one host;
exactly one credential per call; client strings are bounded before they are echoed or logged;
template files are private.
"""

from __future__ import annotations

import socket
import stat

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import RunningServer, memory_kb, person_photos, spawn_server
from mobidem.v1 import mobidem_pb2 as pb


@pytest.fixture(scope="module")
def two_managed(model_repository, tmp_path_factory):
    """Two `mobidem serve`-style servers, each with its own managed Triton, all ports by default."""
    from mobidem import config

    servers = []
    for n in range(2):
        env = {"MOBIDEM_DATA_DIR": str(tmp_path_factory.mktemp(f"managed{n}")), "MOBIDEM_LISTEN": "127.0.0.1:0",
               "MOBIDEM_METRICS_LISTEN": "127.0.0.1:0"}  # triton_metrics_port left at its default
        servers.append(RunningServer(config.load(None, environ=env)))
    yield servers
    for s in servers:
        s.stop()


def test_two_servers_start_on_one_host(two_managed, faces):
    a, b = two_managed
    assert a.server.managed.metrics_port != b.server.managed.metrics_port
    photo = person_photos(faces, "barack_obama")[0]
    for s in (a, b):
        with s.client() as c:
            assert len(c.analyze(photo).faces) == 1


def test_the_managed_triton_takes_no_orders_from_other_local_processes(two_managed, faces):
    server = two_managed[0]
    managed = server.server.managed
    with grpcclient.InferenceServerClient(managed.grpc_url) as triton:
        assert triton.is_server_ready()  # health and metadata stay open
        for attempt in (lambda: triton.unload_model("face_multitask"),
                        lambda: triton.load_model("face_multitask"),
                        lambda: triton.load_model("evil", config='{"backend": "python"}',
                                                  files={"file:1/model.py": b"import os\n"}),
                        lambda: triton.get_model_repository_index()):
            with pytest.raises(InferenceServerException) as info:
                attempt()
            assert "restricted" in str(info.value).lower() or "header" in str(info.value).lower(), info.value
        image = grpcclient.InferInput("image", [1, 128, 128, 3], "UINT8")
        image.set_data_from_numpy(np.zeros((1, 128, 128, 3), np.uint8))
        with pytest.raises(InferenceServerException):  # inference needs the gateway's secret too
            triton.infer("blazeface_short", [image])
        assert triton.is_model_ready("face_multitask")  # still loaded
    with socket.socket() as probe:  # no HTTP endpoint at all
        assert probe.connect_ex(("127.0.0.1", managed.http_port)) != 0
    with server.client() as c:  # the gateway itself is unaffected
        assert c.identify(person_photos(faces, "barack_obama")[0]).match is not None


def test_exactly_one_credential_per_call(start_server, tmp_path, faces):
    from mobidem import auth

    path = tmp_path / "keys.yaml"
    verify = auth.add_key(path, "partner", ["verify"])
    admin = auth.add_key(path, "ops", ["admin"])
    server = start_server(api_keys_file=path)
    from mobidem.v1 import mobidem_pb2_grpc as pb_grpc

    with grpc.insecure_channel(server.target) as channel:
        gallery = pb_grpc.GalleryStub(channel)
        request = pb.ListIdentitiesRequest()
        assert gallery.ListIdentities(request, metadata=[("x-api-key", admin)], timeout=10) is not None
        for metadata in ([("x-api-key", verify), ("x-api-key", admin)],
                         [("x-api-key", admin), ("x-api-key", admin)],
                         [("authorization", f"Bearer {verify}"), ("authorization", f"Bearer {admin}")],
                         [("x-api-key", admin), ("authorization", f"Bearer {admin}")]):
            with pytest.raises(grpc.RpcError) as info:
                gallery.ListIdentities(request, metadata=metadata, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
            assert "send exactly one" in info.value.details()


def test_client_strings_are_bounded_before_they_are_echoed(client, server, faces, caplog):
    huge = "x" * 1_000_000
    photo = person_photos(faces, "barack_obama")[0]
    calls = {
        "GetIdentity": lambda: client.gallery.GetIdentity(pb.GetIdentityRequest(identity_id=huge), timeout=30),
        "DeleteIdentity": lambda: client.gallery.DeleteIdentity(pb.DeleteIdentityRequest(identity_id=huge), timeout=30),
        "Verify": lambda: client.verify(photo, identity_id=huge),
        "Verify operating point": lambda: client.verify(photo, photo, operating_point=huge),
    }
    with caplog.at_level("INFO"):
        for name, call in calls.items():
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            assert "1000000 characters" in info.value.details() and len(info.value.details()) < 200, name
    assert max(len(r.getMessage()) for r in caplog.records) < 2000


def test_template_files_are_private(server):
    data = server.server.settings.data_path
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    files = [p for p in data.iterdir() if p.name.startswith(("gallery.db", "audit.db"))]
    assert {p.name for p in files} >= {"gallery.db", "gallery.db-wal", "audit.db"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, (p.name, oct(p.stat().st_mode))


def test_verify_and_identify_refuse_a_probe_with_several_faces_unless_told_which(client, faces):
    group = faces / "multiface" / "facerecognition_1.jpg"  # two people
    single = person_photos(faces, "barack_obama")[0]
    for call, field in ((lambda **kw: client.verify(group, single, **kw), "probe_face_index"),
                        (lambda **kw: client.verify(single, group, **kw), "reference_face_index"),
                        (lambda **kw: client.identify(group, **kw), "probe_face_index")):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "2 faces found" in info.value.details()
        assert field in info.value.details()
        assert call(**{field: 0}) is not None  # named: answered


def test_adding_a_photo_keeps_the_identitys_metadata(client, faces):
    photos = person_photos(faces, "colin_powell")
    first = client.enroll("Colin Powell", [photos[0]], metadata={"employee": "42", "site": "north"}, face_index=0)
    ident = first.identity.id
    more = client.enroll("", [photos[1]], identity_id=ident, face_index=0)  # no metadata: kept
    assert dict(more.identity.metadata) == {"employee": "42", "site": "north"}
    merged = client.enroll("", [photos[2]], identity_id=ident, metadata={"site": "south"}, face_index=0)
    assert dict(merged.identity.metadata) == {"employee": "42", "site": "south"}  # merged in
    replaced = client.enroll("", [photos[3]], identity_id=ident, metadata={"badge": "7"}, replace_metadata=True,
                             face_index=0)
    assert dict(replaced.identity.metadata) == {"badge": "7"}
    assert dict(client.get_identity(ident).metadata) == {"badge": "7"} and replaced.identity.template_count == 4


def test_an_idempotency_key_replayed_after_a_deletion_creates_nothing(client, faces):
    photo = person_photos(faces, "tony_blair")[1]
    first = client.enroll("Blair", [photo], face_index=0, idempotency_key="signup-123")
    client.delete_identity(first.identity.id)
    count = sum(1 for _ in client.list_identities())
    with pytest.raises(grpc.RpcError) as info:
        client.enroll("Blair", [photo], face_index=0, idempotency_key="signup-123")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "deleted" in info.value.details()
    assert sum(1 for _ in client.list_identities()) == count  # no second identity


def test_idle_streams_end_and_one_connection_cannot_lock_out_the_others(start_server, faces):
    import threading
    import time

    from mobidem.client import to_image

    server = start_server(max_streams_per_client=2, max_streams=3, stream_idle_timeout_s=3)
    image = to_image(person_photos(faces, "barack_obama")[0])
    release = threading.Event()

    def requests(frames: int):
        yield pb.StreamRequest(options=pb.StreamOptions())
        for seq in range(1, frames + 1):
            yield pb.StreamRequest(frame=pb.Frame(sequence=seq, image=image))
        release.wait(30)  # then idle: nothing more is sent

    def code_of_next(call):
        try:
            next(call)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    from mobidem.v1 import mobidem_pb2_grpc as pb_grpc

    # three connections (gRPC shares one between channels to the same target unless told not to)
    a, b, c = (grpc.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)])
               for _ in range(3))
    try:
        started = time.monotonic()
        idle = [pb_grpc.FaceAnalysisStub(a).Stream(requests(1), timeout=30) for _ in range(2)]
        assert [code_of_next(call) for call in idle] == [grpc.StatusCode.OK] * 2  # open, one frame answered
        third = pb_grpc.FaceAnalysisStub(a).Stream(requests(1), timeout=30)
        assert code_of_next(third) == grpc.StatusCode.RESOURCE_EXHAUSTED  # this connection's two
        other = pb_grpc.FaceAnalysisStub(b).Stream(requests(1), timeout=30)
        assert code_of_next(other) == grpc.StatusCode.OK  # another connection is not locked out
        full = pb_grpc.FaceAnalysisStub(c).Stream(requests(1), timeout=30)
        assert code_of_next(full) == grpc.StatusCode.RESOURCE_EXHAUSTED  # three in all
        assert time.monotonic() - started < 3, "too slow to check before the idle timeout"
        for call in (*idle, other):  # idle for 3 s: closed by the server
            assert code_of_next(call) == grpc.StatusCode.DEADLINE_EXCEEDED
        later = pb_grpc.FaceAnalysisStub(c).Stream(requests(1), timeout=30)
        assert code_of_next(later) == grpc.StatusCode.OK  # the places are free again
    finally:
        release.set()
        for ch in (a, b, c):
            ch.close()


def test_a_wedged_managed_triton_is_noticed_and_restarted(model_repository, tmp_path, faces):
    """A Triton that still runs but answers nothing (SIGSTOP: every request hangs, as after the
    short-deadline burst an outside probe saw) turns health NOT_SERVING through the probe inference,
    and the managed one is restarted; the gateway then serves again."""
    import os
    import signal
    import time

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from mobidem import config

    env = {"MOBIDEM_DATA_DIR": str(tmp_path), "MOBIDEM_LISTEN": "127.0.0.1:0", "MOBIDEM_METRICS_LISTEN": "",
           "MOBIDEM_TRITON_PROBE_INTERVAL_S": "1", "MOBIDEM_TRITON_PROBE_TIMEOUT_S": "2",
           "MOBIDEM_TRITON_PROBE_FAILURES": "2"}
    server = RunningServer(config.load(None, environ=env))
    try:
        photo = person_photos(faces, "barack_obama")[0]
        with server.client(timeout=60) as c:
            assert len(c.analyze(photo).faces) == 1
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status():
                return health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status

            wedged = server.server.managed.process.pid
            os.kill(wedged, signal.SIGSTOP)
            deadline = time.monotonic() + 30
            while status() == health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline, "a wedged Triton still reads as SERVING"
                time.sleep(0.2)
            deadline = time.monotonic() + 120
            while status() != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline, "the wedged Triton was not restarted"
                time.sleep(0.5)
        assert server.server.managed.process.pid != wedged
        with server.client(timeout=60) as c:
            assert len(c.analyze(photo).faces) == 1
    finally:
        server.stop()


def test_a_burst_of_short_deadlines_leaves_inference_working(server, faces):
    """200 Analyze calls with 5 ms deadlines (what wedged Triton once, after other load; this runs late
    in the suite, on the shared server and Triton), then normal calls answer in normal time."""
    import time

    from mobidem.client import to_image

    request = pb.AnalyzeRequest(image=to_image(person_photos(faces, "barack_obama")[0]))
    with server.client() as c:
        for _ in range(3):
            futures = [c.analysis.Analyze.future(request, timeout=0.005) for _ in range(200)]
            codes = set()
            for f in futures:
                try:
                    f.result()
                    codes.add(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.add(exc.code())
            assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}, codes
            started = time.monotonic()
            assert len(c.analysis.Analyze(request, timeout=20).faces) == 1
            assert time.monotonic() - started < 10


def test_short_deadlines_and_cancelled_calls_never_cancel_a_triton_inference(model_repository, tmp_path):
    """The wedge's cause (docs/RELIABILITY.md, tools/triton_wedge.py): Triton 2.41 loses one of its two
    ModelInfer accept slots for good when a ModelInfer RPC is cancelled just as its handler thread takes
    it up, and after two such losses accepts no inference at all. The gateway's client must therefore
    never cancel a ModelInfer RPC, by deadline or by a caller that goes away, while still answering each
    caller within its own deadline. Triton's verbose log names every cancellation it is notified of:
    bursts of calls with 1-60 ms deadlines and of cancelled calls must leave none; with Triton stopped,
    callers still get DEADLINE_EXCEEDED at their deadline; Triton drops the requests it could not start
    in time (the model refuses a request past the deadline the gateway sends with it) instead of running
    them all; a normal call answers at the end. With the old client (gRPC deadline = the call's, cancelled with its caller)
    this saw hundreds of cancellations and, in 2 of 3 runs, the wedge itself."""
    import asyncio
    import os
    import random
    import re
    import signal
    import time

    from mobidem.errors import DeadlineExceeded
    from mobidem.logs import deadline
    from mobidem.managed_triton import ManagedTriton
    from mobidem.triton_client import TritonClient

    model = "blazeface_short"
    image = np.zeros((1, 128, 128, 3), np.uint8)
    triton = ManagedTriton(model_repository, tmp_path / "triton", models=[model], log_verbose=1).start()

    async def scenario():
        client = TritonClient(triton.grpc_url, shared_memory=True)
        await client.plan([model])
        rng = random.Random(20)

        async def short_call(budget=None):
            token = deadline.set(time.monotonic() + (budget or rng.uniform(0.001, 0.060)))
            try:
                await client.infer(model, {"image": image}, ["regressors", "scores"])
                return "OK"
            except DeadlineExceeded:
                return "DEADLINE_EXCEEDED"
            finally:
                deadline.reset(token)

        try:
            sent = 0
            for _ in range(4):
                codes = await asyncio.gather(*(short_call() for _ in range(300)))
                assert set(codes) <= {"OK", "DEADLINE_EXCEEDED"}
                tasks = [asyncio.ensure_future(client.infer(model, {"image": image}, ["regressors", "scores"]))
                         for _ in range(30)]
                await asyncio.sleep(rng.uniform(0, 0.005))
                for task in tasks:  # callers that go away (a killed client's stream)
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                sent += 330
            # a Triton that answers nothing (stopped): callers still get DEADLINE_EXCEEDED at their deadline
            os.kill(triton.process.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                stuck = await asyncio.gather(*(short_call(0.05) for _ in range(20)))
                waited = time.monotonic() - started
            finally:
                os.kill(triton.process.pid, signal.SIGCONT)
            assert stuck == ["DEADLINE_EXCEEDED"] * 20 and waited < 1.5, (stuck, waited)
            sent += 20
            started = time.monotonic()
            out = await client.infer(model, {"image": image}, ["regressors", "scores"], timeout_s=10)
            assert out["scores"].shape == (1, 896, 1) and time.monotonic() - started < 5
            await asyncio.sleep(1)  # the calls nobody waits for end
            stats = (await client.statistics(model))["model_stats"][0]
            return sent, int(stats.get("inference_count", 0))
        finally:
            await client.close()

    try:
        sent, ran = asyncio.run(scenario())
    finally:
        triton.stop()
    print(f"\nTriton ran {ran} of {sent} requests whose callers had gone or given up")
    log = triton.log_path.read_text(errors="replace")
    cancellations = re.findall(r"Cancellation notification received for ModelInferHandler.*step (\w+)", log)
    assert not cancellations, f"Triton was told of {len(cancellations)} cancelled ModelInfer calls (steps " \
                              f"{sorted(set(cancellations))}): each can cost it an accept slot for good"
    assert ran < sent / 2, (f"Triton ran {ran} of {sent} requests whose callers had gone: the deadline sent with "
                            "each request is ignored")


def test_a_client_that_never_reads_its_results_cannot_grow_the_gateway(triton, tmp_path, faces):
    """A latest-frame-wins client that sends 1080p frames as fast as it can and never reads a result
    (an outside probe saw 516 -> 2241 MiB in 45 s): the gateway's memory stays bounded, and the
    stream's memory is released after the cancel."""
    import time

    from mobidem.client import to_image, video_frames
    from mobidem.v1 import mobidem_pb2_grpc as pb_grpc
    proc, target = spawn_server(triton.grpc_url, tmp_path / "data", tmp_path / "serve.log")
    try:
        frames = [to_image(f).encoded for f in video_frames(str(faces / "videos" / "facenet_pytorch_video.mp4"), 8)]
        sent = [0]

        def requests():
            yield pb.StreamRequest(options=pb.StreamOptions(drop_policy=pb.DROP_POLICY_LATEST_FRAME_WINS))
            for seq in range(1, 100_000):
                sent[0] = seq
                yield pb.StreamRequest(frame=pb.Frame(sequence=seq, image=pb.Image(encoded=frames[seq % 8])))

        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.FaceAnalysisStub(channel)
            list(stub.Stream(iter([pb.StreamRequest(options=pb.StreamOptions()),  # warm: one normal frame
                                   pb.StreamRequest(frame=pb.Frame(sequence=1, image=pb.Image(encoded=frames[0])))]),
                             timeout=60))
            before = memory_kb(proc.pid, "VmRSS")
            call = stub.Stream(requests(), timeout=120)  # results never read
            peak = before
            for _ in range(20):
                time.sleep(0.5)
                peak = max(peak, memory_kb(proc.pid, "VmRSS"))
            call.cancel()
            time.sleep(3)
            after = memory_kb(proc.pid, "VmRSS")
        grown = (peak - before) / 1024
        print(f"\nsent {sent[0]} frames; gateway RSS {before / 1024:.0f} -> peak {peak / 1024:.0f} -> {after / 1024:.0f} MiB")
        assert grown < 150, f"the gateway grew by {grown:.0f} MiB for a client that reads nothing"
        assert (after - before) / 1024 < 100, "the stream's memory was not released after the cancel"
    finally:
        proc.terminate()
        proc.wait(30)
