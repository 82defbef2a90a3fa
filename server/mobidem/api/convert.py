"""Protobuf <-> core objects. The only module that knows both sides."""

from __future__ import annotations

from functools import partial

import numpy as np

from mobidem.errors import InvalidArgument
from mobidem.evidence.records import MAX_TRANSACTION_REF, image_sha256
from mobidem.imaging import ImageLimits, InvalidImage, decode_reduced, decode_raw
from mobidem.pipeline import ALL_TASKS, Analysis, FaceResult, Match, Task
from mobidem.v1 import mobidem_pb2 as pb


def image_loader(image: pb.Image, limits: ImageLimits, what: str = "image"):
    """A function that decodes ``image`` to RGB (run in a worker thread), or InvalidImage now."""
    kind = image.WhichOneof("source")
    if kind == "encoded":
        return partial(decode_reduced, image.encoded, limits)
    if kind == "raw":
        r = image.raw
        return partial(decode_raw, r.width, r.height, r.format, r.stride, r.data, limits)
    raise InvalidImage(f"{what} is missing: set {what}.encoded (JPEG/PNG bytes) or {what}.raw")


def tasks(values) -> frozenset[Task]:
    chosen = set()
    for v in values:
        if v not in (t.value for t in Task):
            raise InvalidImage(f"unknown task {v}; use TASK_DETECT, TASK_IDENTIFY, TASK_EXPRESSION or TASK_PLUGINS")
        chosen.add(Task(v))
    return frozenset(chosen) or ALL_TASKS


def match_pb(m: Match) -> pb.IdentityMatch:
    return pb.IdentityMatch(
        known=m.known, identity_id=m.identity_id, display_name=m.display_name,
        distance=m.distance if np.isfinite(m.distance) else 0.0, threshold=m.threshold,
        operating_point=m.operating_point, stale_identities=m.stale_identities,
        candidates=[pb.Candidate(identity_id=i, display_name=n, distance=d) for i, n, d in m.candidates],
    )


def _plugin_value(value) -> pb.PluginValue:
    if isinstance(value, str):
        return pb.PluginValue(text=value)
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim == 0:
        return pb.PluginValue(number=float(arr))
    if arr.ndim == 2 and arr.shape[1] == 2:
        return pb.PluginValue(points=pb.Points(points=[pb.Point(x=x, y=y) for x, y in arr]))
    return pb.PluginValue(vector=pb.Vector(values=arr.ravel().tolist()))


def expression_pb(probabilities: np.ndarray, labels: tuple[str, ...]) -> pb.Expression:
    best = int(np.argmax(probabilities))
    return pb.Expression(label=labels[best], confidence=float(probabilities[best]),
                         probabilities=[pb.ClassProbability(label=label, probability=float(p))
                                        for label, p in zip(labels, probabilities)])


def face_pb(face: FaceResult) -> pb.Face:
    out = pb.Face(
        box=pb.Box(x0=face.box[0], y0=face.box[1], x1=face.box[2], y1=face.box[3]),
        landmarks=[pb.Point(x=x, y=y) for x, y in face.landmarks],
        detection_score=face.score,
    )
    if face.match is not None:
        out.identity.CopyFrom(match_pb(face.match))
    if face.expression is not None:
        out.expression.CopyFrom(expression_pb(face.expression, face.expression_labels))
    if face.track_id:
        out.track_id = face.track_id
        out.fresh_embedding = face.fresh_embedding
        out.track_embeddings = face.track_embeddings
        if face.quality is not None:
            out.quality = face.quality
        if face.smoothed_expression is not None:
            out.smoothed_expression.CopyFrom(expression_pb(face.smoothed_expression, face.expression_labels))
    for key, value in face.extensions.items():
        out.extensions[key].CopyFrom(_plugin_value(value))
    return out


def analysis_pb(a: Analysis, sequence: int = 0, capture_time=None) -> pb.FrameResult:
    result = pb.FrameResult(
        sequence=sequence, status=pb.FrameResult.STATUS_OK, width=a.width, height=a.height,
        faces=[face_pb(f) for f in a.faces],
        models=[pb.ModelVersion(role=r, name=n, version=v) for r, n, v in a.models],
        timings=pb.Timings(**{f"{k}_ms": v for k, v in a.timings_ms.items()}),
    )
    if capture_time is not None:
        result.capture_time.CopyFrom(capture_time)
    return result


def transaction_ref(request) -> str:
    """The request's ``transaction_ref`` (signed into the decision's evidence), bounded."""
    ref = request.transaction_ref
    if len(ref) > MAX_TRANSACTION_REF:
        raise InvalidArgument(f"transaction_ref is {len(ref)} characters long; at most {MAX_TRANSACTION_REF} are "
                              f"accepted: send a digest of the document (e.g. its SHA-256 in hex), not the document")
    return ref


def image_digest(image: pb.Image) -> str:
    """SHA-256 of an image as received (its encoded bytes, or its raw pixel data), for the evidence."""
    return image_sha256(image.encoded if image.WhichOneof("source") == "encoded" else image.raw.data)
