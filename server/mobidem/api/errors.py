"""One interceptor for every RPC: error -> status mapping, request ids in logs, gRPC metrics.

Servicers raise (or let through) :mod:`mobidem.errors` exceptions; :class:`ObservingInterceptor`
turns them into a status with the message unchanged. Anything else is a bug: it becomes
INTERNAL with a reference that the log line carries too, never a stack trace to the client.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid

import grpc

from mobidem import errors
from mobidem.gallery.errors import GalleryCorrupt
from mobidem.logs import deadline, request_id
from mobidem.metrics import Metrics

log = logging.getLogger(__name__)

STATUS = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Internal: grpc.StatusCode.INTERNAL,
    GalleryCorrupt: grpc.StatusCode.DATA_LOSS,
}


MAX_MESSAGE = 1000
DEADLINE_SKEW_S = 0.05  # a call cancelled with less time than this left ended at its deadline


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return None


async def _abort_for(exc: BaseException, context, method: str) -> None:
    code = status_for(exc)
    if code is None:
        ref = uuid.uuid4().hex[:12]
        log.exception("internal error in %s (ref %s)", method, ref)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (ref {ref}); the server log has details")
    message = str(exc)
    if len(message) > MAX_MESSAGE:  # whatever a client sent, it is not echoed or logged at length
        message = message[:MAX_MESSAGE] + f"... ({len(message)} characters)"
    log.info("%s -> %s: %s", method, code.name, message)
    await context.abort(code, message)


def _code(context, exc: BaseException | None, finished: bool) -> str:
    """The status the call ended with, as a label value."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if exc is not None:
        return (status_for(exc) or grpc.StatusCode.INTERNAL).name
    if finished:
        return "OK"
    # ended without a status of ours: gRPC cancelled the handler, because the call's deadline passed (the
    # client sees DEADLINE_EXCEEDED; the client's clock runs out a moment before the server's, so its
    # cancellation may arrive with a few milliseconds left here) or because the client went away
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= DEADLINE_SKEW_S else "CANCELLED"


class _Malformed:
    """A request message that did not parse; the handler answers INVALID_ARGUMENT for it."""

    def __init__(self, error: Exception):
        self.error = error


def _tolerant(deserialize):
    def parse(data: bytes):
        try:
            return deserialize(data)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the client's
            return _Malformed(exc)
    return parse


def _check(request):
    if isinstance(request, _Malformed):
        raise errors.InvalidArgument(f"the request is not a valid protobuf message for this method: {request.error}")
    return request


async def _checked(requests):
    async for request in requests:
        yield _check(request)


def _checked_request(request):
    """The request, or for client-streaming calls its messages, with malformed ones refused."""
    return _checked(request) if hasattr(request, "__aiter__") else _check(request)


def _set_deadline(context) -> None:
    remaining = context.time_remaining()
    deadline.set(time.monotonic() + remaining if remaining is not None else None)


async def stream_items(result):
    """Items of a streaming handler's result: an async generator, or a coroutine that writes with
    ``context.write`` (e.g. grpc.health.v1 Watch), which yields nothing here."""
    if hasattr(result, "__aiter__"):
        # closed here, at once, when this generator is closed (a cancelled call): otherwise the handler's
        # ``finally`` (its frames in flight, its counters) waits for the garbage collector
        async with contextlib.aclosing(result) as items:
            async for item in items:
                yield item
    else:
        await result


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Base for interceptors that wrap every RPC's behaviour: subclasses give ``_unary`` and
    ``_stream`` (each ``(behavior, method) -> handler``) and may adjust the handler in ``_prepare``."""

    def _prepare(self, handler):
        return handler

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        handler = self._prepare(handler)
        method = handler_call_details.method
        if handler.unary_unary:
            return handler._replace(unary_unary=self._unary(handler.unary_unary, method))
        if handler.stream_unary:
            return handler._replace(stream_unary=self._unary(handler.stream_unary, method))
        if handler.unary_stream:
            return handler._replace(unary_stream=self._stream(handler.unary_stream, method))
        if handler.stream_stream:
            return handler._replace(stream_stream=self._stream(handler.stream_stream, method))
        return handler


class ObservingInterceptor(WrappingInterceptor):
    def __init__(self, metrics: Metrics | None = None):
        self.metrics = metrics

    def _record(self, method: str, code: str, started: float) -> None:
        if self.metrics is not None:
            short = method.rsplit("/", 1)[-1]
            self.metrics.grpc_requests.labels(short, code).inc()
            self.metrics.grpc_seconds.labels(short).observe(time.perf_counter() - started)

    @contextlib.asynccontextmanager
    async def _observed(self, method: str, context):
        """Around one RPC: request id, deadline, error -> status, metrics."""
        started, state = time.perf_counter(), {"exc": None, "finished": False}
        token = request_id.set(uuid.uuid4().hex[:16])
        _set_deadline(context)
        try:
            yield
            state["finished"] = True
        except Exception as e:  # noqa: BLE001 - mapped to a status below
            state["exc"] = e
            if isinstance(e, grpc.aio.AbortError) or context.code() is not None:
                raise
            await _abort_for(e, context, method)
        finally:
            self._record(method, _code(context, state["exc"], state["finished"]), started)
            request_id.reset(token)

    def _unary(self, behavior, method):
        async def handler(request, context):
            async with self._observed(method, context):
                return await behavior(_checked_request(request), context)
        return handler

    def _stream(self, behavior, method):
        async def handler(request, context):
            async with self._observed(method, context):
                async for item in stream_items(behavior(_checked_request(request), context)):
                    yield item
        return handler

    def _prepare(self, handler):
        if handler.request_deserializer is not None:
            handler = handler._replace(request_deserializer=_tolerant(handler.request_deserializer))
        return handler
