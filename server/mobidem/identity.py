"""Identities: enrolment, 1:1 verification and 1:N identification over the pipeline and the gallery.

Transport-agnostic. Every decision carries the distance, the threshold and the calibrated
operating point it was taken at. Embeddings are compared only with templates made by the same
face model name and version; others are reported as needing re-enrolment, never compared.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from mobidem import calibration
from mobidem.errors import FailedPrecondition, InvalidArgument, NotFound
from mobidem.gallery import Gallery, TemplateIn
from mobidem.pipeline import Match, Pipeline

Loader = Callable[[], np.ndarray]


@dataclass(frozen=True)
class Evidence:
    """A decision's signed evidence (compact JWS) and its record id; empty without an audit log."""

    record_id: str = ""
    jws: str = ""

    @classmethod
    def of(cls, record: dict | None) -> "Evidence":
        return cls(record.get("record_id", ""), record.get("evidence", "")) if record else cls()


@dataclass(frozen=True)
class Decision:
    match: bool
    distance: float
    threshold: float
    operating_point: str
    far_target: float
    embedder: str
    request_id: str
    evidence: Evidence = Evidence()


class IdentityService:
    def __init__(self, gallery: Gallery, pipeline: Pipeline, points: calibration.Calibration,
                 default_operating_point: str = "far_1e-3", metrics=None, audit=None):
        self.gallery = gallery
        self.metrics = metrics  # mobidem.metrics.Metrics or None
        self.pipeline = pipeline
        self.points = points
        self.default_operating_point = default_operating_point
        self.point(default_operating_point)  # fail at start on a bad name
        self.model_name = pipeline.embedder_model if pipeline.embedder is not None else ""
        self.model_version = ""  # learnt from Triton at start
        self.audit = audit  # mobidem.audit.AuditLog: one record per Verify/Identify decision, before it is returned

    def point(self, name: str) -> calibration.OperatingPoint:
        name = name or self.default_operating_point
        try:
            return self.points.operating_points[name]
        except KeyError:
            raise InvalidArgument(
                f"unknown operating point {name!r}; calibrated: {sorted(self.points.operating_points)}"
            ) from None

    async def _embed_one(self, load: Loader, what: str, face_index: int | None = None) -> np.ndarray:
        image = await self.pipeline.run(load)
        faces, embedder = await self.pipeline.embed_faces(image)
        self.model_version = embedder.split(":", 1)[1]
        if not faces:
            raise InvalidArgument(f"{what}: no face found; send a photo with the face clearly visible")
        if face_index is None:
            if len(faces) > 1:
                field = {"probe": "probe_face_index", "reference image": "reference_face_index"}.get(what, "face_index")
                raise InvalidArgument(
                    f"{what}: {len(faces)} faces found; send a photo of one person or set {field} "
                    f"(0 = the largest face)"
                )
            face_index = 0
        if face_index >= len(faces):
            raise InvalidArgument(f"{what}: face_index {face_index} but only {len(faces)} faces were found")
        return faces[face_index].embedding

    @property
    def embedder(self) -> str:
        return f"{self.model_name}:{self.model_version}"

    async def enroll(self, identity_id: str | None, display_name: str | None, metadata: Mapping[str, str],
                     loaders: Sequence[Loader], face_index: int | None, idempotency_key: str | None,
                     request_hash: str | None, replace_metadata: bool = False):
        if not loaders:
            raise InvalidArgument("enrolment needs at least one image")
        embeddings = [await self._embed_one(load, f"images[{i}]", face_index) for i, load in enumerate(loaders)]
        templates = [TemplateIn(e, self.model_name, self.model_version) for e in embeddings]
        # an existing identity keeps its metadata: the request's entries are merged in, unless it asks
        # to replace them all (replace_metadata; an empty map then clears them)
        metadata = dict(metadata) if (metadata or replace_metadata or identity_id is None) else None
        return await asyncio.to_thread(self.gallery.enroll, identity_id, display_name, metadata, templates,
                                       idempotency_key, request_hash, not replace_metadata)

    def match(self, embedding: np.ndarray, top_k: int, operating_point: str = "") -> Match:
        """The Matcher the pipeline calls for every face (Identify uses it too)."""
        point = self.point(operating_point)
        result = self.gallery.search(embedding, k=top_k, model_name=self.model_name,
                                     model_version=self.model_version)
        candidates = [(m.identity_id, self.gallery.display_name(m.identity_id), float(m.distance))
                      for m in result.matches]
        best = candidates[0] if candidates else None
        known = best is not None and best[2] <= point.threshold
        return Match(known=known, identity_id=best[0] if known else "", display_name=best[1] if known else "",
                     distance=best[2] if best else float("inf"), threshold=point.threshold,
                     operating_point=point.name, candidates=candidates,
                     stale_identities=len(result.stale_identities))

    async def identify(self, load: Loader, top_k: int, operating_point: str, face_index: int | None = None,
                       images: Sequence[dict] = (), transaction_ref: str = "") -> tuple[Match, Evidence]:
        """1:N; ``images``: [{"role", "sha256"}] of the photos, for the evidence."""
        embedding = await self._embed_one(load, "probe", face_index)
        match = await asyncio.to_thread(self.match, embedding, top_k, operating_point)
        self._decided("identify", "known" if match.known else "unknown")
        record = None
        if self.audit is not None:
            far = self.point(operating_point).far_target
            record = await asyncio.to_thread(self.audit.identify_decision, match, self.embedder, far, list(images),
                                             transaction_ref)
        return match, Evidence.of(record)

    def _decided(self, kind: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.decisions.labels(kind, outcome).inc()

    async def verify(self, probe: Loader, reference: Loader | None, identity_id: str | None,
                     operating_point: str, probe_face: int | None = None,
                     reference_face: int | None = None, images: Sequence[dict] = (),
                     transaction_ref: str = "") -> Decision:
        """1:1. A probe (or reference photo) with several faces is refused unless the caller names the
        face: in a signing check a second person in the selfie is a warning sign, not a detail."""
        point = self.point(operating_point)
        a = await self._embed_one(probe, "probe", probe_face)
        if reference is not None:
            distance = float(np.linalg.norm(a - await self._embed_one(reference, "reference image", reference_face)))
        else:
            identity = self.gallery.get(identity_id)
            if identity is None:
                raise NotFound(f"identity {identity_id!r} does not exist")
            distance = self.gallery.distance_to_identity(a, identity_id, self.model_name, self.model_version)
            if distance is None:
                raise FailedPrecondition(
                    f"identity {identity_id!r} has no template from {self.embedder}; re-enrol it"
                )
        decision = Decision(distance <= point.threshold, distance, point.threshold, point.name, point.far_target,
                            self.embedder, uuid.uuid4().hex)
        self._decided("verify", "match" if decision.match else "no_match")
        if self.audit is not None:
            record = await asyncio.to_thread(self.audit.verify_decision, decision, identity_id, list(images),
                                             transaction_ref)
            decision = dataclasses.replace(decision, evidence=Evidence.of(record))
        return decision
