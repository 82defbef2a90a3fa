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


class MobidemClient:
    def __init__(self, target: str = "127.0.0.1:50051", timeout: float = 60.0,
                 max_message_bytes: int = 64 * 1024 * 1024, credentials: grpc.ChannelCredentials | None = None,
                 api_key: str | None = None):
        """``credentials``: TLS (see :func:`tls_credentials`); ``api_key``: sent as ``x-api-key`` on every call."""
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
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
               fps: float | None = None) -> Iterator[pb.FrameResult]:
        """Send frames (RGB arrays, paths or bytes); yields one FrameResult per frame, in order.

        Capture times: the send time, or with ``fps`` (a video file's rate) the video's own timeline
        from now, so that tracking measures time as the camera did, not as fast as the file is read."""
        def requests():
            yield pb.StreamRequest(options=pb.StreamOptions(tasks=tasks, min_face_size=min_face_size,
                                                            drop_policy=drop_policy, max_in_flight=max_in_flight,
                                                            tracking=tracking))
            start = time.time_ns()
            for seq, frame in enumerate(frames, 1):
                msg = pb.Frame(sequence=seq, image=to_image(frame, raw=raw))
                msg.capture_time.FromNanoseconds(start + int((seq - 1) * 1e9 / fps) if fps else time.time_ns())
                yield pb.StreamRequest(frame=msg)
        return self.analysis.Stream(requests(), timeout=timeout)

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
