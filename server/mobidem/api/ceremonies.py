"""Ceremonies servicer: a partner's backend creates a one-time link to the web ceremony page, then
asks how the ceremony went (GetCeremony: its state, and its outcome with the signed evidence).

The request fixes the ceremony (transaction_ref, the optional identity for the 1:1, the operating
point, a test seed in test mode); the answer is a token (``mobidem.web.tokens``) and the page's path
with it. The person's browser presents the token once on the ceremony socket (``mobidem.web.ceremony``),
which runs the very ``LivenessServicer.Ceremony`` that gRPC clients call. docs/WEB.md, "Ceremony".
"""

from __future__ import annotations

import asyncio
import logging
import time

from google.protobuf.timestamp_pb2 import Timestamp

from mobidem import logs
from mobidem.api import convert
from mobidem.errors import FailedPrecondition, InvalidArgument, NotFound
from mobidem.web import tokens as links
from mobidem.v1 import mobidem_pb2 as pb
from mobidem.v1 import mobidem_pb2_grpc as pb_grpc
from mobidem.web.tokens import Grant

log = logging.getLogger(__name__)
PAGE = "/ceremony"


class CeremoniesServicer(pb_grpc.CeremoniesServicer):
    def __init__(self, identities, test_mode: bool, web=None):
        self.identities = identities  # mobidem.identity.IdentityService: identity and operating-point checks
        self.test_mode = test_mode
        self.web = web  # mobidem.web.WebServer (its tokens and address), None without web_listen

    async def CreateCeremony(self, request: pb.CreateCeremonyRequest, context) -> pb.CreateCeremonyResponse:
        ref = convert.transaction_ref(request)
        if not ref:
            raise InvalidArgument("transaction_ref is required: what the person is signing (e.g. the document's "
                                  "SHA-256), signed into the ceremony's evidence")
        if len(request.identity_id) > 256:
            raise InvalidArgument("identity_id must be at most 256 characters")
        point = self.identities.point(request.operating_point)  # INVALID_ARGUMENT on an unknown name
        seed = request.test_seed if request.HasField("test_seed") else None
        if seed is not None and not self.test_mode:
            raise FailedPrecondition("test_seed is accepted only by a server started with liveness_test_mode: true")
        if self.web is None:
            raise FailedPrecondition("this server has no web page: start it with web_listen (docs/WEB.md) to "
                                     "create ceremony links")
        if request.identity_id and await asyncio.to_thread(self.identities.gallery.get, request.identity_id) is None:
            raise NotFound(f"identity {request.identity_id!r} does not exist")
        grant = Grant(ref, request.identity_id, request.operating_point and point.name, seed, logs.caller.get() or "")
        token, ttl, ref = self.web.tokens.issue(grant, request.ttl_s)
        expires = Timestamp()
        expires.FromNanoseconds(int((time.time() + ttl) * 1e9))
        path = f"{PAGE}#token={token}"
        log.info("ceremony link created by %s for %s (transaction_ref %d characters), valid %.0f s",
                 grant.creator or "(no key)", f"identity {grant.identity_id!r}" if grant.identity_id else "no identity",
                 len(ref), ttl)
        return pb.CreateCeremonyResponse(token=token, path=path, url=self.web.url.rstrip("/") + path,
                                         expires_at=expires, ceremony_ref=ref)

    async def GetCeremony(self, request: pb.GetCeremonyRequest, context) -> pb.CeremonyStatus:
        if not 0 <= request.wait_s <= MAX_WAIT_S:
            raise InvalidArgument(f"wait_s must be 0-{MAX_WAIT_S:g} seconds")
        if not request.ceremony_ref or len(request.ceremony_ref) > 64:
            raise InvalidArgument("ceremony_ref is required: CreateCeremonyResponse.ceremony_ref")
        if self.web is None:
            raise NotFound("no such ceremony: this server has no web page (web_listen), so no ceremony links")
        state, entry = await self.web.tokens.wait(request.ceremony_ref, logs.caller.get() or "", request.wait_s)
        status = pb.CeremonyStatus(state=STATES[state], transaction_ref=entry.grant.transaction_ref,
                                   identity_id=entry.grant.identity_id, error=entry.error)
        if entry.outcome is not None:
            status.outcome.CopyFrom(entry.outcome)
        return status


MAX_WAIT_S = 60.0
STATES = {links.WAITING: pb.CeremonyStatus.STATE_WAITING, links.RUNNING: pb.CeremonyStatus.STATE_RUNNING,
          links.DONE: pb.CeremonyStatus.STATE_DONE, links.EXPIRED: pb.CeremonyStatus.STATE_EXPIRED,
          links.ERROR: pb.CeremonyStatus.STATE_ERROR}
