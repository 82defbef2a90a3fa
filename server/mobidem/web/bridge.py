"""One WebSocket is one FaceAnalysis stream, through the very servicer gRPC clients call.

The page's messages become ``StreamRequest`` messages for ``FaceAnalysisServicer.Stream``: the same
StreamSession, pipeline, tracking and limits (max_streams, max_streams_per_client,
stream_idle_timeout_s, ImageLimits) as a gRPC stream, so there is no second inference path; each
FrameResult goes back as JSON (``wire``).

Protocol (docs/WEB.md):
- page -> server, first: a text message ``{"type": "options", "api_key": ..., "tracking": true,
  "min_face_size": 0, "top_k": 1}`` (every field but ``type`` optional; ``api_key`` only where the server
  has api_keys_file); then each frame as one binary message, a JPEG. The server numbers the binary
  messages 1, 2, 3, ...: that is each result's ``sequence``. Streams are always latest-frame-wins.
- server -> page: one ``{"type": "result", ...}`` per frame, in order, except that a frame over
  ``web_max_fps`` is answered DROPPED at once, unprocessed; ``{"type": "error", "code", "message"}``
  just before the server closes the socket (bad options, a bad key, a limit, an idle stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time

import grpc
from websockets.exceptions import ConnectionClosed

from mobidem import logs
from mobidem.api.errors import status_for
from mobidem.errors import DeadlineExceeded, InvalidArgument, MobidemError, Unauthenticated
from mobidem.v1 import mobidem_pb2 as pb
from mobidem.web import wire

log = logging.getLogger(__name__)

STREAM_METHOD = "/mobidem.v1.FaceAnalysis/Stream"  # its role (mobidem.auth.METHOD_ROLES) is the page's
OPTIONS = {"type": str, "api_key": str, "tracking": bool, "min_face_size": int, "top_k": int}
# WebSocket close codes (RFC 6455): policy violation, internal error, try again later
CLOSE_CODES = {grpc.StatusCode.INTERNAL: 1011, grpc.StatusCode.UNAVAILABLE: 1013,
               grpc.StatusCode.RESOURCE_EXHAUSTED: 1013, grpc.StatusCode.DEADLINE_EXCEEDED: 1013}


class _Context:
    """What FaceAnalysisServicer.Stream asks of its gRPC context: who is calling (per-client limits)."""

    def __init__(self, peer: str):
        self._peer = peer

    def peer(self) -> str:
        return self._peer


class RateBound:
    """At most ``rate`` frames a second, with bursts of one second's worth (a token bucket); 0: no bound."""

    def __init__(self, rate: float, clock=time.monotonic):
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.clock = clock
        self.last = clock()

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def parse_options(message) -> tuple[pb.StreamOptions, str]:
    """The stream's options and the API key ("" when none) from the page's first message."""
    how = ('the first message must be a text message with the stream options as JSON, e.g. '
           '{"type": "options"}; frames (binary JPEG messages) follow it')
    if not isinstance(message, str):
        raise InvalidArgument(how)
    try:
        data = json.loads(message)
    except ValueError:
        raise InvalidArgument(f"the options are not JSON: {how}") from None
    if not isinstance(data, dict) or data.get("type") != "options":
        raise InvalidArgument(how)
    for name, value in data.items():
        kind = OPTIONS.get(name)
        if kind is None:
            raise InvalidArgument(f"unknown option {name[:40]!r}; known: {', '.join(OPTIONS)}")
        if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or not 0 <= value < 2**31)):
            raise InvalidArgument(f"option {name!r} must be {'a non-negative ' if kind is int else 'a '}"
                                  f"{kind.__name__}")
    options = pb.StreamOptions(drop_policy=pb.DROP_POLICY_LATEST_FRAME_WINS,
                               tracking=pb.TRACKING_ON if data.get("tracking", True) else pb.TRACKING_OFF,
                               min_face_size=data.get("min_face_size", 0), top_k=data.get("top_k", 0))
    return options, data.get("api_key", "")


class StreamBridge:
    def __init__(self, servicer, auth, max_fps: float, first_message_timeout_s: float = 30.0):
        self.servicer = servicer  # mobidem.api.analysis.FaceAnalysisServicer: the gRPC streams' own
        self.auth = auth  # mobidem.api.auth.AuthInterceptor: the gRPC calls' key store and role policy
        self.max_fps = max_fps
        self.first_message_timeout_s = first_message_timeout_s

    @property
    def key_required(self) -> bool:
        return self.auth.keys is not None

    def authenticate(self, api_key: str) -> str:
        """The key's name ("" with authentication off); Unauthenticated / PermissionDenied as for gRPC."""
        if not self.key_required:
            return ""
        if not api_key:
            raise Unauthenticated("this server needs an API key with the 'stream' role: give it as the options' "
                                  "api_key (the page asks for it)")
        return self.auth.authenticate(STREAM_METHOD, [("x-api-key", api_key)])

    async def handle(self, ws) -> None:
        remote = ws.remote_address or ("unknown", 0)
        peer = f"web:{remote[0]}:{remote[1]}"
        lock = asyncio.Lock()

        async def send(text: str) -> None:
            async with lock:  # a rate-dropped frame's answer and the results share the socket
                await ws.send(text)

        tokens = None
        try:
            try:
                first = await asyncio.wait_for(ws.recv(), self.first_message_timeout_s)
            except asyncio.TimeoutError:
                raise DeadlineExceeded(f"no options message within {self.first_message_timeout_s:g} s") from None
            options, api_key = parse_options(first)
            tokens = logs.caller.set(self.authenticate(api_key)), logs.peer.set(peer)
            requests = self._requests(ws, options, send)
            async with contextlib.aclosing(self.servicer.Stream(requests, _Context(peer))) as results:
                async for result in results:
                    await send(wire.result(result))
            await ws.close(1000, "stream ended")
        except ConnectionClosed:
            return
        except MobidemError as exc:
            await self._fail(ws, send, status_for(exc) or grpc.StatusCode.INTERNAL, str(exc))
        except Exception:  # noqa: BLE001 - a bug ends this socket, never the server
            ref = secrets.token_hex(6)
            log.exception("web stream failed (ref %s)", ref)
            await self._fail(ws, send, grpc.StatusCode.INTERNAL,
                             f"internal error (ref {ref}); the server log has details")
        finally:
            if tokens is not None:
                for var, token in zip((logs.caller, logs.peer), tokens):
                    var.reset(token)

    async def _requests(self, ws, options: pb.StreamOptions, send):
        """The page's messages as the servicer's StreamRequests: the options, then one Frame per binary message."""
        yield pb.StreamRequest(options=options)
        sequence = 0
        rate = RateBound(self.max_fps)
        try:
            async for message in ws:
                if isinstance(message, str):
                    raise InvalidArgument("after the options only frames are taken: one binary message "
                                          "(JPEG bytes) per frame")
                sequence += 1
                if not rate.take():
                    await send(wire.dropped(sequence, f"too many frames: at most {self.max_fps:g} a second "
                                                      "(web_max_fps); this one was not processed"))
                    continue
                yield pb.StreamRequest(frame=pb.Frame(sequence=sequence, image=pb.Image(encoded=message)))
        except ConnectionClosed:
            return  # the page went away: the stream ends, its frames' work is cancelled

    @staticmethod
    async def _fail(ws, send, code: grpc.StatusCode, message: str) -> None:
        log.info("web stream refused or ended: %s: %s", code.name, message[:200])
        with contextlib.suppress(ConnectionClosed):
            await send(wire.error(code, message))
            await ws.close(CLOSE_CODES.get(code, 1008), code.name)
