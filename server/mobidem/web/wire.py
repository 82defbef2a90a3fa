"""A FrameResult (protobuf) as the small JSON object the page reads; errors as JSON messages."""

from __future__ import annotations

import json

import grpc

from mobidem.v1 import mobidem_pb2 as pb

_STATUS = {pb.FrameResult.STATUS_OK: "OK", pb.FrameResult.STATUS_DROPPED: "DROPPED",
           pb.FrameResult.STATUS_FAILED: "FAILED"}
_CODES = {code.value[0]: code.name for code in grpc.StatusCode}
MAX_TEXT = 500  # an error message echoes nothing the client sent at length


def _round(v: float, digits: int = 1) -> float:
    return round(float(v), digits)


def face(f: pb.Face) -> dict:
    out = {"box": [_round(f.box.x0), _round(f.box.y0), _round(f.box.x1), _round(f.box.y1)],
           "score": _round(f.detection_score, 3)}
    if f.HasField("identity"):
        out["known"] = f.identity.known
        out["name"] = f.identity.display_name if f.identity.known else "unknown"
        out["distance"] = _round(f.identity.distance, 3)
    if f.HasField("expression"):
        out["expression"] = f.expression.label
        out["expression_confidence"] = _round(f.expression.confidence, 2)
    if f.track_id:
        out["track_id"] = f.track_id
        out["fresh_embedding"] = f.fresh_embedding
        if f.HasField("smoothed_expression"):
            out["smoothed_expression"] = f.smoothed_expression.label
    return out


def result(r: pb.FrameResult) -> str:
    """One frame's answer: ``{"type": "result", "sequence": n, "status": "OK" | "DROPPED" | "FAILED", ...}``."""
    out: dict = {"type": "result", "sequence": r.sequence, "status": _STATUS.get(r.status, "UNKNOWN")}
    if r.status == pb.FrameResult.STATUS_OK:
        out.update(width=r.width, height=r.height, total_ms=_round(r.timings.total_ms),
                   faces=[face(f) for f in r.faces])
    elif r.status == pb.FrameResult.STATUS_DROPPED:
        out["reason"] = r.drop_reason
    else:
        out.update(code=_CODES.get(r.error_code, "UNKNOWN"), error=_clip(r.error_message))
    return json.dumps(out, separators=(",", ":"))


def dropped(sequence: int, reason: str) -> str:
    return json.dumps({"type": "result", "sequence": sequence, "status": "DROPPED", "reason": reason},
                      separators=(",", ":"))


def error(code: grpc.StatusCode | str, message: str) -> str:
    """A stream-ending error: ``{"type": "error", "code": "UNAUTHENTICATED", "message": ...}``."""
    name = code if isinstance(code, str) else code.name
    return json.dumps({"type": "error", "code": name, "message": _clip(message)}, separators=(",", ":"))


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + f"... ({len(text)} characters)"


def _challenge(value: int) -> str:
    return pb.Challenge.Name(value).removeprefix("CHALLENGE_").lower()


def prompt(p: pb.ChallengePrompt) -> str:
    """A ceremony's next challenge: ``{"type": "prompt", "index": 0, "count": 3, "challenge": "turn_left",
    "text": "...", "window_s": 6.0, "ceremony_id": "..."}``."""
    return json.dumps({"type": "prompt", "index": p.index, "count": p.count, "challenge": _challenge(p.challenge),
                       "text": p.text, "window_s": _round(p.window_s), "ceremony_id": p.ceremony_id},
                      separators=(",", ":"))


def outcome(o: pb.LivenessOutcome) -> str:
    """A ceremony's outcome: ``{"type": "outcome", "decision": "PASS" | "FAIL", "reasons": [...], ...}``, with the
    1:1 when one was made and the signed evidence's record id when the server signs evidence."""
    out = {"type": "outcome", "decision": "PASS" if o.decision == pb.LivenessOutcome.DECISION_PASS else "FAIL",
           "reasons": [_clip(r) for r in o.reasons], "score": _round(o.score, 3), "ceremony_id": o.ceremony_id,
           "frames": o.frames, "duration_s": _round(o.duration_s, 2),
           "challenges": [{"challenge": _challenge(t.challenge), "completed": t.completed} for t in o.challenges],
           "evidence_record_id": o.evidence_record_id}
    if o.verified:
        out.update(verified=True, match=o.match, distance=_round(o.distance, 3), threshold=_round(o.threshold, 3))
    return json.dumps(out, separators=(",", ":"))


def progress(frames: int, dropped: bool = False) -> str:
    """A ceremony frame taken (decided, or dropped over web_max_fps): the page may send the next one."""
    return json.dumps({"type": "progress", "frames": frames, "dropped": dropped}, separators=(",", ":"))
