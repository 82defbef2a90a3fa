"""Logging set-up: text or JSON lines, with the request id, stream id and frame sequence in context.

Log lines carry identifiers and counts only: never embeddings, image bytes or other biometric data.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
stream_id: contextvars.ContextVar[str] = contextvars.ContextVar("stream_id", default="")
frame_sequence: contextvars.ContextVar[int | None] = contextvars.ContextVar("frame_sequence", default=None)
# Who is calling: the API key's name (set by mobidem.api.auth; "" when authentication is off) and the
# transport peer ("ipv4:10.0.0.7:51234"). For logs, the audit log and per-client limits.
caller: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")
peer: contextvars.ContextVar[str] = contextvars.ContextVar("peer", default="")


def client_id() -> str:
    """The caller's key name, else the peer's host (without the port): who per-client limits count."""
    name = caller.get()
    if name:
        return f"key:{name}"
    host = peer.get().rsplit(":", 1)[0] if peer.get().count(":") >= 2 else peer.get()
    return f"peer:{host}"
# time.monotonic() by which the current RPC must be answered (None: no deadline); Triton calls honour it
deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.stream_id = stream_id.get()
        record.frame_sequence = frame_sequence.get()
        record.caller = caller.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "stream_id", "frame_sequence", "caller"):
            value = getattr(record, key, None)
            if value not in (None, ""):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [req=%(request_id)s stream=%(stream_id)s seq=%(frame_sequence)s] "
            "%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
