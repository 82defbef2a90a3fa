"""Gallery servicer: enrol, list, get, delete, verify, identify."""

from __future__ import annotations

import asyncio
import hashlib
import json

from google.protobuf.timestamp_pb2 import Timestamp

from mobidem.api import convert
from mobidem.errors import FailedPrecondition, InvalidArgument, NotFound
from mobidem.gallery import Identity
from mobidem.identity import IdentityService
from mobidem.imaging import ImageLimits
from mobidem.logs import request_id
from mobidem.v1 import mobidem_pb2 as pb
from mobidem.v1 import mobidem_pb2_grpc as pb_grpc


def _ts(epoch: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(epoch * 1e9))
    return ts


def identity_pb(identity: Identity, current: str) -> pb.Identity:
    return pb.Identity(
        id=identity.id, display_name=identity.display_name, metadata=identity.metadata,
        created=_ts(identity.created_at), updated=_ts(identity.updated_at),
        template_count=identity.template_count,
        # no template of the server's (primary) embedder: it cannot be compared with it (a migration's
        # fallback embedder may still verify it)
        reenrolment_needed=not any(f"{v.model_name}:{v.model_version}" == current for v in identity.model_versions),
    )


MAX_ID = 128  # identity ids are 32 hex characters; anything longer is refused before it is echoed or logged
MAX_OPERATING_POINT = 64


def bounded(value: str, field: str, limit: int = MAX_ID) -> str:
    """``value``, unless it is longer than ``limit``: then INVALID_ARGUMENT, without echoing it."""
    if len(value) > limit:
        raise InvalidArgument(f"{field} is {len(value)} characters long; at most {limit} are accepted")
    return value


def _optional(request, field: str) -> int | None:
    return getattr(request, field) if request.HasField(field) else None


def _digests(**images: pb.Image) -> list[dict]:
    """SHA-256 of each image as received, for the evidence."""
    return [{"role": role, "sha256": convert.image_digest(img)} for role, img in images.items() if img is not None]


def _request_hash(request: pb.EnrollRequest) -> str:
    copy = pb.EnrollRequest()
    copy.CopyFrom(request)
    copy.idempotency_key = ""
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


class GalleryServicer(pb_grpc.GalleryServicer):
    def __init__(self, identities: IdentityService, limits: ImageLimits, jwks=None):
        self.identities = identities
        self.gallery = identities.gallery
        self.limits = limits
        self.jwks = jwks  # () -> (JWK Set dict, active kid): the evidence keys; None: no evidence

    async def Enroll(self, request: pb.EnrollRequest, context) -> pb.EnrollResponse:
        bounded(request.identity_id, "identity_id")
        loaders = [convert.image_loader(img, self.limits, f"images[{i}]") for i, img in enumerate(request.images)]
        result = await self.identities.enroll(
            request.identity_id or None, request.display_name or None, dict(request.metadata), loaders,
            request.face_index if request.HasField("face_index") else None,
            request.idempotency_key or None, _request_hash(request), request.replace_metadata,
        )
        return pb.EnrollResponse(identity=identity_pb(result.identity, self.identities.embedder),
                                 templates_added=result.templates_added, replayed=result.replayed)

    async def EnrollStream(self, request_iterator, context) -> pb.EnrollResponse:
        merged = pb.EnrollRequest()
        first = True
        async for message in request_iterator:
            if first:
                merged.CopyFrom(message)
                first = False
            else:
                if message.identity_id or message.display_name or message.metadata or message.idempotency_key:
                    raise InvalidArgument("only the first EnrollStream message may name the identity; "
                                          "later messages carry images only")
                merged.images.extend(message.images)
        if first:
            raise InvalidArgument("EnrollStream received no message")
        return await self.Enroll(merged, context)

    async def ListIdentities(self, request: pb.ListIdentitiesRequest, context) -> pb.ListIdentitiesResponse:
        identities, token = await asyncio.to_thread(self.gallery.list, request.page_size or 100,
                                                    request.page_token or None)
        current = self.identities.embedder
        return pb.ListIdentitiesResponse(identities=[identity_pb(i, current) for i in identities],
                                         next_page_token=token or "")

    async def GetIdentity(self, request: pb.GetIdentityRequest, context) -> pb.Identity:
        bounded(request.identity_id, "identity_id")
        identity = await asyncio.to_thread(self.gallery.get, request.identity_id)
        if identity is None:
            raise NotFound(f"identity {request.identity_id!r} does not exist")
        return identity_pb(identity, self.identities.embedder)

    async def DeleteIdentity(self, request: pb.DeleteIdentityRequest, context) -> pb.DeleteIdentityResponse:
        bounded(request.identity_id, "identity_id")
        deleted = await asyncio.to_thread(self.gallery.delete, request.identity_id)
        return pb.DeleteIdentityResponse(templates_deleted=deleted)

    async def Verify(self, request: pb.VerifyRequest, context) -> pb.VerifyResponse:
        bounded(request.identity_id, "identity_id")
        bounded(request.operating_point, "operating_point", MAX_OPERATING_POINT)
        probe = convert.image_loader(request.probe, self.limits, "probe")
        which = request.WhichOneof("reference")
        if which is None:
            raise InvalidArgument("set the reference: image (1:1 against a photo) or identity_id")
        reference = convert.image_loader(request.image, self.limits, "image") if which == "image" else None
        ref = convert.transaction_ref(request)
        images = await asyncio.to_thread(_digests, probe=request.probe,
                                         reference=request.image if which == "image" else None)
        d = await self.identities.verify(probe, reference, request.identity_id if which == "identity_id" else None,
                                         request.operating_point, _optional(request, "probe_face_index"),
                                         _optional(request, "reference_face_index"), images, ref)
        return pb.VerifyResponse(match=d.match, distance=d.distance, threshold=d.threshold,
                                 operating_point=d.operating_point, far_target=d.far_target,
                                 embedder=d.embedder, request_id=d.request_id, evidence=d.evidence.jws,
                                 evidence_record_id=d.evidence.record_id)

    async def Identify(self, request: pb.IdentifyRequest, context) -> pb.IdentifyResponse:
        bounded(request.operating_point, "operating_point", MAX_OPERATING_POINT)
        probe = convert.image_loader(request.probe, self.limits, "probe")
        ref = convert.transaction_ref(request)
        images = await asyncio.to_thread(_digests, probe=request.probe)
        match, evidence = await self.identities.identify(probe, request.top_k or 5, request.operating_point,
                                                         _optional(request, "probe_face_index"), images, ref)
        return pb.IdentifyResponse(match=convert.match_pb(match), embedder=match.embedder or self.identities.embedder,
                                   request_id=request_id.get(),  # the audit record's request id
                                   evidence=evidence.jws, evidence_record_id=evidence.record_id)

    async def GetEvidenceKeys(self, request: pb.GetEvidenceKeysRequest, context) -> pb.EvidenceKeys:
        if self.jwks is None:
            raise FailedPrecondition("this server signs no evidence (no evidence key is configured)")
        jwks, kid = await asyncio.to_thread(self.jwks)
        return pb.EvidenceKeys(jwks=json.dumps(jwks), active_kid=kid)
