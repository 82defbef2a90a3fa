"""One WebSocket is one liveness ceremony, through the very ``LivenessServicer.Ceremony`` gRPC clients call.

The page presents a one-time token (``tokens``) instead of an API key; the ceremony's options come
from what the partner fixed when it created the link (``api/ceremonies.py``), never from the page.
The decision, the limits, the 1:1 and the signed evidence are the servicer's: no second path.

Protocol (docs/WEB.md, "Ceremony"):
- page -> server, first: a text message ``{"type": "start", "token": "mbc_..."}`` (the token may be left
  out only when the server has no api_keys_file: development on localhost); then each frame as one
  binary message: 8 bytes of capture time (milliseconds since the Unix epoch, IEEE-754 double,
  big-endian), then the JPEG.
- server -> page: ``{"type": "prompt", ...}`` when the ceremony starts and at each next challenge;
  ``{"type": "progress", "frames": n, "dropped": false}`` once frame n is decided (or dropped over
  web_max_fps), so the page keeps at most two frames unanswered; ``{"type": "outcome", ...}`` at the
  end; ``{"type": "error", "code", "message"}`` before the server closes the socket (a bad, spent or
  expired token: UNAUTHENTICATED).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
import struct

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from websockets.exceptions import ConnectionClosed

from mobidem import logs
from mobidem.api.errors import status_for
from mobidem.errors import DeadlineExceeded, InvalidArgument, MobidemError
from mobidem.v1 import mobidem_pb2 as pb
from mobidem.web import wire
from mobidem.web.bridge import CLOSE_CODES, RateBound

log = logging.getLogger(__name__)

HEADER = struct.Struct(">d")  # capture time, ms since the epoch


class _Context:
    """What LivenessServicer.Ceremony asks of its gRPC context: the peer, in gRPC's form. The caller
    (``mobidem.logs.caller``) is the partner's key that created the link, so the audit record and the
    evidence name it; the failure limits count the phone (``limit_client``: its address, as for a
    gRPC client without a key), so one phone's failures cannot lock out the partner's other users."""

    def __init__(self, peer: str):
        self._peer = peer

    def peer(self) -> str:
        return self._peer

    def limit_client(self) -> str:
        return self._peer


def grpc_peer(remote) -> str:
    host, port = (remote or ("unknown", 0))[:2]
    return f"ipv6:[{host}]:{port}" if ":" in str(host) else f"ipv4:{host}:{port}"


def parse_start(message) -> str:
    """The token ("" when none) from the page's first message."""
    how = 'the first message must be a text message {"type": "start", "token": "..."}; frames follow the first prompt'
    if not isinstance(message, str):
        raise InvalidArgument(how)
    try:
        data = json.loads(message)
    except ValueError:
        raise InvalidArgument(f"the start message is not JSON: {how}") from None
    if not isinstance(data, dict) or data.get("type") != "start" or set(data) - {"type", "token"} \
            or not isinstance(data.get("token", ""), str):
        raise InvalidArgument(how)
    return data.get("token", "")


def frame_request(sequence: int, message: bytes) -> pb.LivenessRequest:
    if len(message) <= HEADER.size:
        raise InvalidArgument("a ceremony frame is 8 bytes of capture time (ms since the epoch, big-endian double) "
                              "followed by the JPEG")
    (ms,) = HEADER.unpack_from(message)
    if not (math.isfinite(ms) and 0 < ms < 2**52):
        raise InvalidArgument("a ceremony frame's capture time must be milliseconds since the epoch")
    stamp = Timestamp()
    stamp.FromNanoseconds(int(ms * 1e6))
    return pb.LivenessRequest(frame=pb.Frame(sequence=sequence, image=pb.Image(encoded=message[HEADER.size:]),
                                             capture_time=stamp))


class CeremonyBridge:
    def __init__(self, liveness, tokens, key_required: bool, max_fps: float, idle_timeout_s: float = 30.0):
        self.liveness = liveness  # mobidem.api.liveness.LivenessServicer: the gRPC ceremonies' own
        self.tokens = tokens  # mobidem.web.tokens.CeremonyTokens
        self.key_required = key_required  # with api_keys_file, a token is required
        self.max_fps = max_fps
        self.idle_timeout_s = idle_timeout_s

    def options(self, token: str) -> pb.LivenessOptions | None:
        """The ceremony's options: the token's grant (spent here), or None in development without a token.
        The grant's creator (the partner's key) becomes the call's caller."""
        if not token and not self.key_required:
            return None
        grant = self.tokens.take(token)  # Unauthenticated: unknown, spent or expired
        logs.caller.set(grant.creator)
        options = pb.LivenessOptions(transaction_ref=grant.transaction_ref, operating_point=grant.operating_point)
        if grant.identity_id:
            options.identity_id = grant.identity_id
        if grant.test_seed is not None:
            options.test_seed = grant.test_seed
        return options

    async def handle(self, ws) -> None:
        peer = grpc_peer(ws.remote_address)
        lock = asyncio.Lock()

        async def send(text: str) -> None:
            async with lock:
                await ws.send(text)

        reset = None
        token = ""  # once spent here: the ceremony the partner may ask about (GetCeremony)
        try:
            try:
                first = await asyncio.wait_for(ws.recv(), self.idle_timeout_s)
            except asyncio.TimeoutError:
                raise DeadlineExceeded(f"no start message within {self.idle_timeout_s:g} s") from None
            reset = logs.caller.set(""), logs.peer.set(peer)
            presented = parse_start(first)
            options = self.options(presented)
            token = presented if options is not None else ""
            requests = self._requests(ws, options or pb.LivenessOptions(), send)
            async with contextlib.aclosing(self.liveness.Ceremony(requests, _Context(peer))) as responses:
                async for response in responses:
                    if response.WhichOneof("message") == "prompt":
                        await send(wire.prompt(response.prompt))
                    else:
                        if token:  # recorded for the partner before the page is told (it may be gone)
                            self.tokens.finish(token, response.outcome)
                        await send(wire.outcome(response.outcome))
            await ws.close(1000, "ceremony ended")
        except ConnectionClosed:
            return
        except MobidemError as exc:
            code = status_for(exc) or grpc.StatusCode.INTERNAL
            if token:
                self.tokens.finish(token, error=f"{code.name}: {exc}")
            await _fail(ws, send, code, str(exc))
        except Exception:  # noqa: BLE001 - a bug ends this socket, never the server
            ref = secrets.token_hex(6)
            log.exception("web ceremony failed (ref %s)", ref)
            await _fail(ws, send, grpc.StatusCode.INTERNAL, f"internal error (ref {ref}); the server log has details")
        finally:
            if token:  # no-op when an outcome or an error was recorded
                self.tokens.finish(token, error="INTERNAL: the ceremony ended without an outcome")
            if reset is not None:
                for var, token in zip((logs.caller, logs.peer), reset):
                    var.reset(token)

    async def _requests(self, ws, options: pb.LivenessOptions, send):
        """The options, then one Frame per binary message; each frame acknowledged once the servicer asks
        for the next (it decides frames one after another). A page that goes quiet for idle_timeout_s, or
        goes away, ends the ceremony: the servicer then decides (FAIL: the stream ended) and records it."""
        yield pb.LivenessRequest(options=options)
        sequence = 0
        rate = RateBound(self.max_fps)
        while True:
            try:
                message = await asyncio.wait_for(ws.recv(), self.idle_timeout_s)
            except (asyncio.TimeoutError, ConnectionClosed):
                return
            if isinstance(message, str):
                raise InvalidArgument("after the start message only frames are taken: one binary message per frame")
            sequence += 1
            if not rate.take():
                with contextlib.suppress(ConnectionClosed):
                    await send(wire.progress(sequence, dropped=True))
                continue
            yield frame_request(sequence, message)
            with contextlib.suppress(ConnectionClosed):  # gone: the next recv ends the ceremony
                await send(wire.progress(sequence))


async def _fail(ws, send, code: grpc.StatusCode, message: str) -> None:
    log.info("web ceremony refused or ended: %s: %s", code.name, message[:200])
    with contextlib.suppress(ConnectionClosed):
        await send(wire.error(code, message))
        await ws.close(CLOSE_CODES.get(code, 1008), code.name)
