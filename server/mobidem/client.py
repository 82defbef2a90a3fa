"""A small Python client for mobidem's gRPC API.

    from mobidem.client import MobidemClient
    with MobidemClient("127.0.0.1:50051") as client:
        result = client.analyze("photo.jpg")
        for r in client.stream(video_frames("clip.mp4")):
            print(r.sequence, [f.identity.display_name for f in r.faces])
"""

from __future__ import annotations

import collections
import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

import cv2
import grpc
import numpy as np

from mobidem.v1 import mobidem_pb2 as pb
from mobidem.v1 import mobidem_pb2_grpc as pb_grpc

STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def to_image(image, raw: bool = False, jpeg_quality: int = 90) -> pb.Image:
    """A path, encoded bytes, or an RGB uint8 array (sent raw or as JPEG) -> pb.Image."""
    if isinstance(image, (str, os.PathLike)):
        return pb.Image(encoded=Path(image).read_bytes())
    if isinstance(image, (bytes, bytearray)):
        return pb.Image(encoded=bytes(image))
    arr = np.ascontiguousarray(image, dtype=np.uint8)
    if raw:
        return pb.Image(raw=pb.RawImage(width=arr.shape[1], height=arr.shape[0], format=pb.PIXEL_FORMAT_RGB8,
                                        data=arr.tobytes()))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(arr, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    if not ok:
        raise ValueError("could not JPEG-encode the frame")
    return pb.Image(encoded=buf.tobytes())


def video_frames(source, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """RGB frames of a video file (path) or camera (int index)."""
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video source {source!r}")
    try:
        n = 0
        while max_frames is None or n < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            n += 1
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def frame_count(path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()


def video_fps(path) -> float | None:
    """A video file's frame rate, None when the container does not say."""
    cap = cv2.VideoCapture(str(path))
    try:
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        return fps if 0 < fps < 1000 else None
    finally:
        cap.release()


def tls_credentials(ca=None, cert=None, key=None) -> grpc.ChannelCredentials:
    """TLS channel credentials from PEM files: ``ca`` verifies the server (None: the system roots);
    ``cert`` + ``key`` are this client's certificate for mutual TLS."""
    def read(path):
        return Path(path).expanduser().read_bytes() if path else None
    if bool(cert) != bool(key):
        raise ValueError("a client certificate needs both cert and key")
    return grpc.ssl_channel_credentials(root_certificates=read(ca), private_key=read(key),
                                        certificate_chain=read(cert))


class _CallDetails(collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                                           "wait_for_ready", "compression")),
                   grpc.ClientCallDetails):
    pass


class _ApiKey(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``x-api-key`` to every call."""

    def __init__(self, key: str):
        self.key = key

    def _details(self, d):
        metadata = [*(d.metadata or ()), ("x-api-key", self.key)]
        return _CallDetails(d.method, d.timeout, metadata, d.credentials, getattr(d, "wait_for_ready", None),
                            getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    intercept_unary_stream = intercept_unary_unary

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    intercept_stream_stream = intercept_stream_unary


def channel_target(target) -> tuple[str, list[tuple[str, object]]]:
    """A target (``host:port``, ``dns:///name:port``, or a list of ``host:port``) -> the gRPC target and the
    channel options that spread calls over every address (``round_robin``; a gateway that is down is skipped).
    A list is resolved here into one ``ipv4:``/``ipv6:`` target; behind TLS prefer ``dns:///`` (one name)."""
    if isinstance(target, str) and "," in target and "://" not in target and not target.startswith(("ipv4:", "ipv6:")):
        target = [t.strip() for t in target.split(",") if t.strip()]
    if isinstance(target, (list, tuple)):
        if len(target) == 1:
            target = target[0]
        else:
            addresses = []
            for item in target:
                host, _, port = item.rpartition(":")
                for family, *_, sockaddr in socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM):
                    addresses.append((family, f"[{sockaddr[0]}]:{port}" if family == socket.AF_INET6
                                      else f"{sockaddr[0]}:{port}"))
            v4 = [a for f, a in addresses if f == socket.AF_INET]
            v6 = [a for f, a in addresses if f == socket.AF_INET6]
            target = "ipv4:" + ",".join(dict.fromkeys(v4)) if v4 else "ipv6:" + ",".join(dict.fromkeys(v6))
            return target, [("grpc.lb_policy_name", "round_robin")]
    if target.startswith(("dns:", "ipv4:", "ipv6:")):
        return target, [("grpc.lb_policy_name", "round_robin")]
    return target, []


RESUMABLE = (grpc.StatusCode.UNAVAILABLE,)  # the gateway died, restarted or closed an aged connection


class MobidemClient:
    def __init__(self, target="127.0.0.1:50051", timeout: float = 60.0,
                 max_message_bytes: int = 64 * 1024 * 1024, credentials: grpc.ChannelCredentials | None = None,
                 api_key: str | None = None):
        """``target``: ``host:port``, ``dns:///name:port`` or several gateways (a list, or comma-separated),
        calls spread over them with ``round_robin``; ``credentials``: TLS (see :func:`tls_credentials`);
        ``api_key``: sent as ``x-api-key`` on every call."""
        target, balancing = channel_target(target)
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes),
                   # a gateway that died is tried again soon, not after gRPC's back-off of up to 120 s
                   ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000), *balancing]
        self.channel = (grpc.secure_channel(target, credentials, options) if credentials
                        else grpc.insecure_channel(target, options))
        calls = grpc.intercept_channel(self.channel, _ApiKey(api_key)) if api_key else self.channel
        self.analysis = pb_grpc.FaceAnalysisStub(calls)
        self.gallery = pb_grpc.GalleryStub(calls)
        self.liveness = pb_grpc.LivenessStub(calls)  # mobidem.liveness.client runs ceremonies on it
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "MobidemClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def wait_ready(self, timeout: float = 60.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def analyze(self, image, tasks=(), min_face_size: int = 0, top_k: int = 1) -> pb.FrameResult:
        return self.analysis.Analyze(pb.AnalyzeRequest(image=to_image(image), tasks=tasks,
                                                       min_face_size=min_face_size, top_k=top_k),
                                     timeout=self.timeout)

    def stream(self, frames: Iterable, tasks=(), min_face_size: int = 0,
               drop_policy: int = pb.DROP_POLICY_NONE, max_in_flight: int = 0, raw: bool = False,
               timeout: float | None = None, tracking: int = pb.TRACKING_UNSPECIFIED,
               fps: float | None = None, resume: bool = False, resume_attempts: int = 5) -> Iterator[pb.FrameResult]:
        """Send frames (RGB arrays, paths or bytes); yields one FrameResult per frame, in order.

        Capture times: the send time, or with ``fps`` (a video file's rate) the video's own timeline
        from now, so that tracking measures time as the camera did, not as fast as the file is read.

        ``resume``: when the stream fails UNAVAILABLE (its gateway died, or closed a connection past
        its maximum age), open a new one (on another gateway when the client has several) with the same
        options, send again the frames that have no result yet, under their own sequence numbers, and go
        on; up to ``resume_attempts`` failures in a row, with back-off, then the error is raised. A new
        stream starts its tracks afresh."""
        options = pb.StreamOptions(tasks=tasks, min_face_size=min_face_size, drop_policy=drop_policy,
                                   max_in_flight=max_in_flight, tracking=tracking)
        start = time.time_ns()

        def frame_message(seq: int, frame) -> pb.Frame:
            msg = pb.Frame(sequence=seq, image=to_image(frame, raw=raw))
            msg.capture_time.FromNanoseconds(start + int((seq - 1) * 1e9 / fps) if fps else time.time_ns())
            return msg

        if not resume:
            def requests():
                yield pb.StreamRequest(options=options)
                for seq, frame in enumerate(frames, 1):
                    yield pb.StreamRequest(frame=frame_message(seq, frame))
            return self.analysis.Stream(requests(), timeout=timeout)
        return _ResumableStream(self.analysis, options, iter(frames), frame_message, timeout, resume_attempts).run()

    def enroll(self, display_name: str, images: Iterable, identity_id: str = "", metadata=None,
               face_index: int | None = None, idempotency_key: str = "",
               replace_metadata: bool = False) -> pb.EnrollResponse:
        request = pb.EnrollRequest(identity_id=identity_id, display_name=display_name, metadata=metadata or {},
                                   images=[to_image(i) for i in images], idempotency_key=idempotency_key,
                                   replace_metadata=replace_metadata)
        if face_index is not None:
            request.face_index = face_index
        return self.gallery.Enroll(request, timeout=self.timeout)

    def verify(self, probe, reference=None, identity_id: str = "", operating_point: str = "",
               probe_face_index: int | None = None, reference_face_index: int | None = None) -> pb.VerifyResponse:
        """1:1. A probe or reference with several faces is refused unless its face index is given."""
        request = pb.VerifyRequest(probe=to_image(probe), operating_point=operating_point)
        if identity_id:
            request.identity_id = identity_id
        else:
            request.image.CopyFrom(to_image(reference))
        if probe_face_index is not None:
            request.probe_face_index = probe_face_index
        if reference_face_index is not None:
            request.reference_face_index = reference_face_index
        return self.gallery.Verify(request, timeout=self.timeout)

    def identify(self, probe, top_k: int = 5, operating_point: str = "",
                 probe_face_index: int | None = None) -> pb.IdentifyResponse:
        request = pb.IdentifyRequest(probe=to_image(probe), top_k=top_k, operating_point=operating_point)
        if probe_face_index is not None:
            request.probe_face_index = probe_face_index
        return self.gallery.Identify(request, timeout=self.timeout)

    def list_identities(self, page_size: int = 100) -> Iterator[pb.Identity]:
        token = ""
        while True:
            page = self.gallery.ListIdentities(pb.ListIdentitiesRequest(page_size=page_size, page_token=token),
                                               timeout=self.timeout)
            yield from page.identities
            token = page.next_page_token
            if not token:
                return

    def get_identity(self, identity_id: str) -> pb.Identity:
        return self.gallery.GetIdentity(pb.GetIdentityRequest(identity_id=identity_id), timeout=self.timeout)

    def delete_identity(self, identity_id: str) -> pb.DeleteIdentityResponse:
        return self.gallery.DeleteIdentity(pb.DeleteIdentityRequest(identity_id=identity_id), timeout=self.timeout)


class _ResumableStream:
    """One logical stream over as many Stream calls as it takes (see ``MobidemClient.stream(resume=True)``).

    gRPC pulls each call's requests on its own thread. Frames are taken from the caller's iterator under a
    lock and recorded as pending (sent, no result yet) before they are sent; a call that failed stops
    taking frames (its generation is over), and the next call first sends again every pending frame."""

    def __init__(self, stub, options, frames, frame_message, timeout, attempts):
        self.stub, self.options, self.frames, self.frame_message = stub, options, frames, frame_message
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.attempts = attempts
        self.lock = threading.Lock()
        self.pending: dict[int, pb.Frame] = {}  # sequence -> frame sent without a result yet
        self.next_seq = 1
        self.generation = 0
        self.resumed = 0  # how many times the stream was resumed (for callers and tests)

    def _requests(self, generation: int):
        yield pb.StreamRequest(options=self.options)
        with self.lock:
            again = [self.pending[s] for s in sorted(self.pending)]
        for msg in again:
            yield pb.StreamRequest(frame=msg)
        while True:
            with self.lock:  # one call at a time takes frames; a superseded call takes none
                if generation != self.generation:
                    return
                try:
                    frame = next(self.frames)
                except StopIteration:
                    return
                msg = self.frame_message(self.next_seq, frame)
                self.pending[self.next_seq] = msg
                self.next_seq += 1
            yield pb.StreamRequest(frame=msg)

    def run(self) -> Iterator[pb.FrameResult]:
        failures = 0
        while True:
            with self.lock:
                generation = self.generation
            remaining = None if self.deadline is None else max(0.001, self.deadline - time.monotonic())
            call = self.stub.Stream(self._requests(generation), timeout=remaining)
            try:
                for result in call:
                    with self.lock:
                        self.pending.pop(result.sequence, None)
                    failures = 0
                    yield result
                return
            except grpc.RpcError as exc:
                if exc.code() not in RESUMABLE or failures >= self.attempts:
                    raise
                failures += 1
                with self.lock:
                    self.generation += 1  # the failed call's request thread takes no further frame
                self.resumed += 1
                time.sleep(min(2.0, 0.2 * 2 ** (failures - 1)))
            finally:
                call.cancel()


def describe(result: pb.FrameResult) -> str:
    """One line per frame: faces with identity and expression."""
    if result.status == pb.FrameResult.STATUS_DROPPED:
        return f"frame {result.sequence}: dropped ({result.drop_reason})"
    if result.status == pb.FrameResult.STATUS_FAILED:
        return f"frame {result.sequence}: failed ({STATUS_NAMES.get(result.error_code)}: {result.error_message})"
    parts = []
    for f in result.faces:
        who = f.identity.display_name if f.identity.known else ("unknown" if f.HasField("identity") else "-")
        if f.track_id:
            who = f"#{f.track_id} {who}" + ("" if f.fresh_embedding else " (tracked)")
        dist = f" d={f.identity.distance:.3f}" if f.HasField("identity") and f.identity.candidates else ""
        expr = f" {f.expression.label} {f.expression.confidence:.2f}" if f.HasField("expression") else ""
        if f.HasField("smoothed_expression") and f.smoothed_expression.label != f.expression.label:
            expr += f" (track: {f.smoothed_expression.label})"
        box = f"[{f.box.x0:.0f},{f.box.y0:.0f},{f.box.x1:.0f},{f.box.y1:.0f}]"
        parts.append(f"{who}{dist}{expr} {box}")
    faces = "; ".join(parts) if parts else "no face"
    return f"frame {result.sequence}: {len(result.faces)} face(s): {faces} ({result.timings.total_ms:.0f} ms)"
