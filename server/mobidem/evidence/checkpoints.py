"""Signed checkpoints of the audit log (record count + head hash + time + key id), and the witness hook.

A checkpoint is a compact JWS (``typ`` mobidem-checkpoint+jwt) over ``{"size": N, "head": hash of
record N, "time": ..., "iat": ...}``, in the spirit of C2SP checkpoints / CloudTrail digests: a log
that later holds fewer than N records, or another record N, contradicts a checkpoint its owner signed.

Witness hook: the setting ``audit_witness`` names a Python callable ``module:function``; it gets the
checkpoint's compact JWS (bytes) and returns bytes to store beside it (an RFC 3161 TimeStampResp
over the JWS, a witness cosignature), or None. None is configured by default and none is faked:
no time-stamp authority or witness is reachable from here.
"""

from __future__ import annotations

import importlib
from datetime import datetime, timezone
from typing import Callable

TYP = "mobidem-checkpoint+jwt"

Witness = Callable[[bytes], "bytes | None"]


def claims(size: int, head: str, time: datetime | None = None) -> dict:
    time = time or datetime.now(timezone.utc)
    return {"iss": "mobidem", "size": size, "head": head, "time": time.isoformat(timespec="microseconds"),
            "iat": int(time.timestamp())}


def load_witness(spec: str) -> Witness | None:
    """The callable named ``module:function``; None for an empty spec."""
    if not spec:
        return None
    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"audit_witness must be module:function, got {spec!r}")
    return getattr(importlib.import_module(module), attr)
