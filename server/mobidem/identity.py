"""Identities: enrolment, 1:1 verification and 1:N identification over the pipeline and the gallery.

Transport-agnostic. Every decision carries the distance, the threshold and the calibrated
operating point it was taken at. Embeddings are compared only with templates made by the same
face model name and version; others are reported as needing re-enrolment, never compared.

Each embedder has its own calibration (thresholds) and metric (Euclidean for dlib, 1 - cosine for
SFace). During a migration the server runs two (``fallback_embedder``): enrolment stores templates
of both; Identify and Verify decide with the primary one, and with the fallback one only for
identities that have no template of the primary (the decision names the embedder that took it).
A probe is never compared with a template of another embedder, and the distances of two embedders
are never compared with each other: when both find a match, the one further inside its own
threshold (the smaller distance / threshold) wins. Streams use the primary embedder alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Callable, Mapping, Sequence

import cv2
import numpy as np

from mobidem import calibration
from mobidem.errors import FailedPrecondition, InvalidArgument, NotFound
from mobidem.gallery import Gallery, TemplateIn
from mobidem.gallery.index import distance as embedding_distance
from mobidem.imaging import Decoded, decode_encoded
from mobidem.pipeline import FaceResult, Match, Pipeline

Loader = Callable[[], np.ndarray]


def _png(image) -> bytes:
    """A decoded enrolment photo as PNG (lossless: re-embedding sees the pixels the enrolment saw)."""
    pixels = Decoded.of(image).pixels
    ok, data = cv2.imencode(".png", cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.ndim == 3 else pixels)
    if not ok:
        raise InvalidArgument("the enrolment photo could not be encoded to be kept")
    return data.tobytes()


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


@dataclass
class Embedder:
    """An embedder the service compares with: its Triton model, its calibration (thresholds and metric),
    its plugin and the version Triton serves (learnt at start)."""

    model_name: str
    points: calibration.Calibration
    plugin: object = None  # mobidem.plugins.FacePlugin
    version: str = ""

    @property
    def metric(self) -> str:
        return self.points.metric

    @property
    def label(self) -> str:
        return f"{self.model_name}:{self.version}"

    def point(self, name: str) -> calibration.OperatingPoint:
        try:
            return self.points.operating_points[name]
        except KeyError:
            raise InvalidArgument(
                f"unknown operating point {name!r}; calibrated for {self.model_name}: "
                f"{sorted(self.points.operating_points)}"
            ) from None


class IdentityService:
    def __init__(self, gallery: Gallery, pipeline: Pipeline, points: calibration.Calibration,
                 default_operating_point: str = "far_1e-3", metrics=None, audit=None,
                 fallback_points: calibration.Calibration | None = None, keep_enrolment_images: bool = False):
        self.gallery = gallery
        self.metrics = metrics  # mobidem.metrics.Metrics or None
        self.pipeline = pipeline
        self.points = points
        self.default_operating_point = default_operating_point
        self.primary = Embedder(pipeline.embedder_model if pipeline.embedder is not None else "", points,
                                pipeline.embedder)
        fallback = getattr(pipeline.plugins, "fallback_embedder", None)
        if (fallback is None) != (fallback_points is None):
            raise FailedPrecondition("a fallback embedder needs its own calibration, and a calibration a fallback")
        self.fallback = (Embedder(fallback.models[0].name, fallback_points, fallback)
                         if fallback is not None else None)
        for embedder in self.embedders:
            embedder.point(default_operating_point)  # fail at start on a bad name
            gallery.metrics[embedder.model_name] = embedder.metric
        self.audit = audit  # mobidem.audit.AuditLog: one record per Verify/Identify decision, before it is returned
        # keep each enrolment photo (PNG of the decoded image, sealed like the templates) for `reembed`
        self.keep_enrolment_images = keep_enrolment_images

    @property
    def embedders(self) -> list[Embedder]:
        return [self.primary] + ([self.fallback] if self.fallback is not None else [])

    # the primary embedder, under the names the rest of the server uses
    @property
    def model_name(self) -> str:
        return self.primary.model_name

    @property
    def model_version(self) -> str:
        return self.primary.version

    @model_version.setter
    def model_version(self, version: str) -> None:
        self.primary.version = version

    @property
    def embedder(self) -> str:
        return self.primary.label

    def point(self, name: str) -> calibration.OperatingPoint:
        return self.primary.point(name or self.default_operating_point)

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """The distance of two embeddings of the primary embedder, in its metric."""
        return embedding_distance(a, b, self.primary.metric)

    async def _embed_face(self, load: Loader, what: str, face_index: int | None = None,
                          embedders: Sequence[Embedder] | None = None) -> FaceResult:
        """The chosen face of one image, embedded by ``embedders`` (default: the primary one)."""
        embedders = [self.primary] if embedders is None else list(embedders)
        image = await self.pipeline.run(load)
        faces, label = await self.pipeline.embed_faces(image, [e.plugin for e in embedders])
        self.model_version = label.split(":", 1)[1]
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
        return faces[face_index]

    async def _embed_one(self, load: Loader, what: str, face_index: int | None = None) -> np.ndarray:
        """The chosen face's embedding by the primary embedder."""
        return (await self._embed_face(load, what, face_index)).embeddings[self.primary.model_name]

    async def enroll(self, identity_id: str | None, display_name: str | None, metadata: Mapping[str, str],
                     loaders: Sequence[Loader], face_index: int | None, idempotency_key: str | None,
                     request_hash: str | None, replace_metadata: bool = False):
        if not loaders:
            raise InvalidArgument("enrolment needs at least one image")
        faces, kept = [], []
        for i, load in enumerate(loaders):
            image = await self.pipeline.run(load)
            faces.append(await self._embed_face(lambda: image, f"images[{i}]", face_index, self.embedders))
            if self.keep_enrolment_images:
                kept.append((await self.pipeline.run(_png, image), face_index))
        # one template per image and embedder (a migration enrols with the old embedder too)
        templates = [TemplateIn(f.embeddings[e.model_name], e.model_name, e.version)
                     for f in faces for e in self.embedders]
        # an existing identity keeps its metadata: the request's entries are merged in, unless it asks
        # to replace them all (replace_metadata; an empty map then clears them)
        metadata = dict(metadata) if (metadata or replace_metadata or identity_id is None) else None
        result = await asyncio.to_thread(self.gallery.enroll, identity_id, display_name, metadata, templates,
                                         idempotency_key, request_hash, not replace_metadata)
        if kept and not result.replayed:
            await asyncio.to_thread(self.gallery.add_enrolment_images, result.identity.id, kept)
        return result

    async def reembed(self, identity_id: str) -> int:
        """Templates of every embedder the identity lacks (the primary after a migration), made from its kept
        enrolment photos (keep_enrolment_images). Returns how many templates were added (0: nothing kept, or
        nothing missing)."""
        identity = await asyncio.to_thread(self.gallery.get, identity_id)
        if identity is None:
            raise NotFound(f"identity {identity_id!r} does not exist")
        held = {(v.model_name, v.model_version) for v in identity.model_versions}
        missing = [e for e in self.embedders if (e.model_name, e.version) not in held]
        photos = await asyncio.to_thread(self.gallery.enrolment_images, identity_id) if missing else []
        templates = []
        for i, (data, face_index) in enumerate(photos):
            face = await self._embed_face(partial(decode_encoded, data), f"{identity_id} kept photo {i}", face_index,
                                          missing)
            templates += [TemplateIn(face.embeddings[e.model_name], e.model_name, e.version) for e in missing]
        if templates:
            await asyncio.to_thread(self.gallery.enroll, identity_id, None, None, templates)
        return len(templates)

    def _search(self, embedder: Embedder, embedding: np.ndarray, top_k: int, point: calibration.OperatingPoint,
                only=None) -> tuple[Match, frozenset[str]]:
        result = self.gallery.search(embedding, k=top_k, model_name=embedder.model_name,
                                     model_version=embedder.version, metric=embedder.metric, only=only)
        candidates = [(m.identity_id, self.gallery.display_name(m.identity_id), float(m.distance))
                      for m in result.matches]
        best = candidates[0] if candidates else None
        known = best is not None and best[2] <= point.threshold
        match = Match(known=known, identity_id=best[0] if known else "", display_name=best[1] if known else "",
                      distance=best[2] if best else float("inf"), threshold=point.threshold,
                      operating_point=point.name, candidates=candidates,
                      stale_identities=len(result.stale_identities), embedder=embedder.label)
        return match, result.stale_identities

    def match(self, embedding: np.ndarray, top_k: int, operating_point: str = "") -> Match:
        """The Matcher the pipeline calls for every face: the primary embedder's templates."""
        return self._search(self.primary, embedding, top_k, self.point(operating_point))[0]

    def match_face(self, face: FaceResult, top_k: int, operating_point: str = "") -> Match:
        """1:N for a face embedded by every embedder: the primary's templates, then, during a migration,
        the fallback's templates of the identities that have none of the primary's."""
        name = operating_point or self.default_operating_point
        match, stale = self._search(self.primary, face.embeddings[self.primary.model_name], top_k,
                                    self.primary.point(name))
        if self.fallback is None or not stale:
            return match
        old, still_stale = self._search(self.fallback, face.embeddings[self.fallback.model_name], top_k,
                                        self.fallback.point(name), only=stale)
        uncompared = len(stale & still_stale)  # identities that neither embedder could compare
        match.stale_identities = old.stale_identities = uncompared
        if old.known and (not match.known or old.distance / old.threshold < match.distance / match.threshold):
            return old
        return match

    async def identify(self, load: Loader, top_k: int, operating_point: str, face_index: int | None = None,
                       images: Sequence[dict] = (), transaction_ref: str = "") -> tuple[Match, Evidence]:
        """1:N; ``images``: [{"role", "sha256"}] of the photos, for the evidence."""
        self.point(operating_point)  # INVALID_ARGUMENT before any work
        face = await self._embed_face(load, "probe", face_index, self.embedders)
        match = await asyncio.to_thread(self.match_face, face, top_k, operating_point)
        self._decided("identify", "known" if match.known else "unknown")
        record = None
        if self.audit is not None:
            far = self.point(operating_point).far_target
            record = await asyncio.to_thread(self.audit.identify_decision, match, match.embedder, far, list(images),
                                             transaction_ref)
        return match, Evidence.of(record)

    def _decided(self, kind: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.decisions.labels(kind, outcome).inc()

    def _embedder_for(self, identity_id: str) -> Embedder:
        """The embedder that verifies against ``identity_id``: the primary when the identity has a template
        of it, else (a migration) the fallback when it has one of that."""
        identity = self.gallery.get(identity_id)
        if identity is None:
            raise NotFound(f"identity {identity_id!r} does not exist")
        held = {(v.model_name, v.model_version) for v in identity.model_versions}
        for embedder in self.embedders:
            if (embedder.model_name, embedder.version) in held:
                return embedder
        raise FailedPrecondition(
            f"identity {identity_id!r} has no template from {' or '.join(e.label for e in self.embedders)}; "
            "re-enrol it" + (" or re-embed it (`mobidem gallery reembed`)" if self.fallback is not None else "")
        )

    async def verify(self, probe: Loader, reference: Loader | None, identity_id: str | None,
                     operating_point: str, probe_face: int | None = None,
                     reference_face: int | None = None, images: Sequence[dict] = (),
                     transaction_ref: str = "") -> Decision:
        """1:1. A probe (or reference photo) with several faces is refused unless the caller names the
        face: in a signing check a second person in the selfie is a warning sign, not a detail."""
        self.point(operating_point)
        if reference is not None:
            embedder = self.primary
            a = await self._embed_one(probe, "probe", probe_face)
            distance = embedding_distance(a, await self._embed_one(reference, "reference image", reference_face),
                                          embedder.metric)
        else:
            embedder = await asyncio.to_thread(self._embedder_for, identity_id)
            face = await self._embed_face(probe, "probe", probe_face, [embedder])
            distance = self.gallery.distance_to_identity(face.embeddings[embedder.model_name], identity_id,
                                                         embedder.model_name, embedder.version, embedder.metric)
            if distance is None:  # deleted or re-embedded meanwhile
                raise FailedPrecondition(f"identity {identity_id!r} has no template from {embedder.label}; re-enrol it")
        point = embedder.point(operating_point or self.default_operating_point)
        decision = Decision(distance <= point.threshold, distance, point.threshold, point.name, point.far_target,
                            embedder.label, uuid.uuid4().hex)
        self._decided("verify", "match" if decision.match else "no_match")
        if self.audit is not None:
            record = await asyncio.to_thread(self.audit.verify_decision, decision, identity_id, list(images),
                                             transaction_ref)
            decision = dataclasses.replace(decision, evidence=Evidence.of(record))
        return decision
