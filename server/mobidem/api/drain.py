"""Graceful shutdown of the gRPC API: from SIGTERM on, new calls are refused with UNAVAILABLE (a balancer or
a client sends them to another gateway), calls in flight go on for ``shutdown_grace_s``, and calls still open
when the grace runs out end UNAVAILABLE too, so that a resuming client (``MobidemClient.stream(resume=True)``)
goes on elsewhere. gRPC's own shutdown ends such calls CANCELLED, which no client retries.

    drain = Drain()
    server = grpc.aio.server(interceptors=[ObservingInterceptor(metrics), DrainInterceptor(drain), auth])
    ...
    await drain.run(grace)   # then server.stop(...)

Health calls are left alone: they answer NOT_SERVING during the drain, which is what balancers read.
What this does not do: a stream whose handler is in the middle of sending a result when the grace runs out
still ends CANCELLED (the cancellation lands in gRPC's own code, not in ours).
"""
from __future__ import annotations

import asyncio
import contextlib
import time

from mobidem.api.errors import WrappingInterceptor, stream_items
from mobidem.errors import Unavailable

__all__ = ["Drain", "DrainInterceptor"]

REFUSED = "this gateway is shutting down: call again (a balancer or the client's other addresses reach another gateway)"
ENDED = "this gateway shut down before the call ended: resume it on another gateway (the stream's sequence goes on)"
EXEMPT = ("/grpc.health.v1.Health/",)


class Drain:
    """The calls in flight on one server, and whether it is shutting down."""

    def __init__(self) -> None:
        self.draining = False
        self._ending = False
        self._calls: set[asyncio.Task] = set()

    @property
    def calls(self) -> int:
        return len(self._calls)

    @contextlib.contextmanager
    def call(self):
        """Around one call's handler: refused while draining; UNAVAILABLE if the drain ends it."""
        if self.draining:
            raise Unavailable(REFUSED)
        task = asyncio.current_task()
        self._calls.add(task)
        try:
            yield
        except asyncio.CancelledError:
            if not self._ending:
                raise
            task.uncancel()  # the drain's cancellation, answered with a status instead
            raise Unavailable(ENDED) from None
        finally:
            self._calls.discard(task)

    async def run(self, grace: float, poll_s: float = 0.02) -> None:
        """Refuse new calls, wait up to ``grace`` seconds for those in flight, then end the rest UNAVAILABLE
        (and give them a moment to send that status)."""
        self.draining = True
        end = time.monotonic() + max(0.0, grace)
        while self._calls and time.monotonic() < end:
            await asyncio.sleep(poll_s)
        self._ending = True
        for task in list(self._calls):
            task.cancel()
        settle = time.monotonic() + 1.0
        while self._calls and time.monotonic() < settle:
            await asyncio.sleep(poll_s)


class DrainInterceptor(WrappingInterceptor):
    """Puts every call but health's under a :class:`Drain` (inside ``ObservingInterceptor``, which maps
    the UNAVAILABLE and counts it)."""

    def __init__(self, drain: Drain):
        self.drain = drain

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(EXEMPT):
            return await continuation(handler_call_details)
        return await super().intercept_service(continuation, handler_call_details)

    def _unary(self, behavior, method):
        async def handler(request, context):
            with self.drain.call():
                return await behavior(request, context)
        return handler

    def _stream(self, behavior, method):
        async def handler(request, context):
            with self.drain.call():
                async with contextlib.aclosing(stream_items(behavior(request, context))) as items:
                    async for item in items:
                        yield item
        return handler
