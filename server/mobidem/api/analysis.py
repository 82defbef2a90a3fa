"""FaceAnalysis servicer: Stream (bidirectional, one result per frame) and Analyze (one image)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from mobidem.api import convert
from mobidem.api.errors import status_for
from mobidem.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from mobidem.imaging import ImageLimits
from mobidem.logs import deadline, frame_sequence, stream_id
from mobidem.metrics import Metrics
from mobidem.pipeline import Pipeline, Task
from mobidem.streaming import DropPolicy, StreamFrame, StreamSession, StreamStats, Turn, idle_bounded
from mobidem.tracking import StreamTracks, TrackingConfig
from mobidem.v1 import mobidem_pb2 as pb
from mobidem.v1 import mobidem_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class FaceAnalysisServicer(pb_grpc.FaceAnalysisServicer):
    def __init__(self, pipeline: Pipeline, limits: ImageLimits, default_in_flight: int = 8,
                 max_in_flight: int = 32, stats: StreamStats | None = None, metrics: Metrics | None = None,
                 max_streams_per_client: int = 16, default_in_flight_latest: int = 4, *,
                 max_streams: int = 256, idle_timeout_s: float = 0.0, tracking: TrackingConfig = TrackingConfig()):
        self.pipeline = pipeline
        self.tracking = tracking  # streams with tracking on (the default)
        self.limits = limits
        self.default_in_flight = default_in_flight  # DROP_POLICY_NONE
        self.default_in_flight_latest = default_in_flight_latest  # DROP_POLICY_LATEST_FRAME_WINS
        self.max_in_flight = max_in_flight
        self.stats = stats or StreamStats()
        self.metrics = metrics or Metrics()
        self.max_streams_per_client = max_streams_per_client
        self.max_streams = max_streams  # all clients together
        self.idle_timeout_s = idle_timeout_s  # a stream that sends nothing for this long is closed; 0: never
        self.streams_by_client: dict[str, int] = {}
        self.metrics.active_streams.set_function(lambda: self.stats.active_streams)
        self.metrics.in_flight.set_function(lambda: self.stats.in_flight)

    async def Analyze(self, request: pb.AnalyzeRequest, context) -> pb.FrameResult:
        load = convert.image_loader(request.image, self.limits)
        analysis = await self.pipeline.analyze(load, convert.tasks(request.tasks), request.min_face_size,
                                               request.top_k or 1)
        return convert.analysis_pb(analysis)

    async def Stream(self, request_iterator, context):
        client = client_name(context)
        if sum(self.streams_by_client.values()) >= self.max_streams:
            raise ResourceExhausted(f"the server has {self.max_streams} open streams, the most it takes "
                                    "(max_streams); retry later")
        if self.streams_by_client.get(client, 0) >= self.max_streams_per_client:
            raise ResourceExhausted(f"client {client} already has {self.max_streams_per_client} open streams, "
                                    "the most allowed; close one first")
        self.streams_by_client[client] = self.streams_by_client.get(client, 0) + 1
        try:
            async for result in self._stream(request_iterator, context):
                yield result
        finally:
            self.streams_by_client[client] -= 1
            if not self.streams_by_client[client]:
                del self.streams_by_client[client]

    def in_flight(self, requested: int, policy: DropPolicy) -> int:
        """Frames a stream may hold: what the client asked for, else this server's default for its policy."""
        if requested:
            return requested
        return self.default_in_flight_latest if policy == DropPolicy.LATEST_FRAME_WINS else self.default_in_flight

    async def _stream(self, request_iterator, context):
        request_iterator = idle_bounded(request_iterator, self.idle_timeout_s)
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        if first.WhichOneof("message") != "options":
            raise InvalidArgument("the first message of a stream must be StreamOptions (set `options`), "
                                  "frames follow it")
        opts = first.options
        tasks = convert.tasks(opts.tasks)
        if opts.max_in_flight > self.max_in_flight:
            raise InvalidArgument(f"max_in_flight {opts.max_in_flight} is above this server's limit "
                                  f"of {self.max_in_flight}")
        policy = DropPolicy(opts.drop_policy) if opts.drop_policy in (1, 2) else DropPolicy.NONE
        top_k = opts.top_k or 1
        in_flight = self.in_flight(opts.max_in_flight, policy)

        tracked = opts.tracking != pb.TRACKING_OFF
        tracks = (StreamTracks(self.tracking, self.pipeline.matcher, top_k, identify=Task.IDENTIFY in tasks,
                               metrics=self.metrics) if tracked else None)

        stream_id.set(uuid.uuid4().hex[:12])
        log.info("stream opened: tasks=%s drop_policy=%s max_in_flight=%d tracking=%s",
                 sorted(t.name for t in tasks), policy.name, in_flight, "on" if tracked else "off")
        counts = {"ok": 0, "dropped": 0, "failed": 0}

        async def frames():
            async for message in request_iterator:
                if message.WhichOneof("message") != "frame":
                    raise InvalidArgument("StreamOptions may only be sent once, as the first message")
                self.metrics.frames_received.inc()
                captured = Timestamp()  # a copy: a sub-message would keep the whole request (its image) alive
                captured.CopyFrom(message.frame.capture_time)
                yield StreamFrame(message.frame.sequence, message.frame, captured)

        async def process(frame: StreamFrame, turn: Turn):
            frame_sequence.set(frame.sequence)
            load = convert.image_loader(frame.payload.image, self.limits, "frame.image")
            if tracks is None:
                analysis = await self.pipeline.analyze(load, tasks, opts.min_face_size, top_k)
            else:
                captured = frame.tag.ToNanoseconds() / 1e9 if frame.tag.seconds or frame.tag.nanos else 0.0
                analysis = await self.pipeline.analyze_tracked(load, tasks, opts.min_face_size, tracks, turn,
                                                               captured or frame.received)
            log.debug("frame analysed: %d face(s) in %.1f ms", len(analysis.faces), analysis.timings_ms["total"])
            return analysis

        session = StreamSession(process, in_flight, policy, self.stats, sections=2 if tracked else 0)
        try:
            async with contextlib.aclosing(session.results(frames())) as outcomes:
                async for outcome in outcomes:
                    if outcome.status == "failed" and _call_deadline_passed(outcome.error):
                        # the frame ran out of the call's own time: the call is over, not just this frame
                        raise DeadlineExceeded("the stream's deadline passed")
                    counts[outcome.status] += 1
                    yield self._result(outcome)
        finally:
            log.info("stream closed: %d ok, %d dropped, %d failed", counts["ok"], counts["dropped"], counts["failed"])

    def _result(self, outcome) -> pb.FrameResult:
        frame = outcome.frame  # its payload is gone by now; sequence and capture time (tag) stay
        if outcome.status == "ok":
            result = convert.analysis_pb(outcome.value, frame.sequence, frame.tag)
            result.timings.total_ms = (time.perf_counter() - outcome.frame.received) * 1000
            self.metrics.frames_processed.inc()
        elif outcome.status == "dropped":
            result = pb.FrameResult(sequence=frame.sequence, status=pb.FrameResult.STATUS_DROPPED,
                                    drop_reason=outcome.drop_reason, capture_time=frame.tag)
            self.metrics.frames_dropped.labels("latest_frame_wins").inc()
        else:
            code = status_for(outcome.error) or grpc.StatusCode.INTERNAL
            result = pb.FrameResult(sequence=frame.sequence, status=pb.FrameResult.STATUS_FAILED,
                                    capture_time=frame.tag, error_code=code.value[0],
                                    error_message=str(outcome.error))
            self.metrics.frames_failed.labels(code.name).inc()
        return result


def _call_deadline_passed(error: BaseException | None) -> bool:
    """Whether a frame failed because the stream call's own deadline ran out (its Triton work is bounded
    by it), rather than for a reason of its own."""
    ends = deadline.get()
    return isinstance(error, DeadlineExceeded) and ends is not None and time.monotonic() >= ends - 0.05


def client_name(context) -> str:
    """Who is calling: the authenticated key's name, else the peer's connection (host and port): without
    keys, the clients behind one address (a NAT, a proxy) are not one client, so one connection's idle
    streams cannot lock the others out; ``max_streams`` bounds them all together."""
    from mobidem.logs import caller

    name = caller.get()
    if name:
        return name
    return context.peer() or "unknown"
