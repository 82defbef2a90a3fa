"""Mapping core exceptions to gRPC status codes, in one place, for every RPC.

Servicers raise (or let through) :mod:`mobidem.errors` exceptions; :class:`ErrorInterceptor`
turns them into a status with the message unchanged. Anything else is a bug: it becomes
INTERNAL with a request id that the log line carries too, never a stack trace to the client.
"""

from __future__ import annotations

import logging
import uuid

import grpc

from mobidem import errors
from mobidem.gallery.errors import GalleryCorrupt

log = logging.getLogger(__name__)

STATUS = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    GalleryCorrupt: grpc.StatusCode.DATA_LOSS,
}


def status_for(exc: BaseException) -> grpc.StatusCode | None:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return None


async def abort_for(exc: BaseException, context: grpc.aio.ServicerContext, method: str) -> None:
    code = status_for(exc)
    if code is None:
        ref = uuid.uuid4().hex[:12]
        log.exception("internal error in %s (ref %s)", method, ref)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (ref {ref}); the server log has details")
    await context.abort(code, str(exc))


def _wrap_unary(behavior, method):
    async def handler(request, context):
        try:
            return await behavior(request, context)
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError) or context.code() is not None:
                raise
            await abort_for(exc, context, method)
    return handler


def _wrap_stream(behavior, method):
    async def handler(request, context):
        try:
            async for item in behavior(request, context):
                yield item
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError) or context.code() is not None:
                raise
            await abort_for(exc, context, method)
    return handler


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return handler._replace(unary_unary=_wrap_unary(handler.unary_unary, method))
        if handler.stream_unary:
            return handler._replace(stream_unary=_wrap_unary(handler.stream_unary, method))
        if handler.unary_stream:
            return handler._replace(unary_stream=_wrap_stream(handler.unary_stream, method))
        if handler.stream_stream:
            return handler._replace(stream_stream=_wrap_stream(handler.stream_stream, method))
        return handler
