"""Liveness servicer: the challenge ceremony (docs/LIVENESS.md) over the tracked streaming pipeline.

Thin: protobuf in and out, the abuse limits, the optional 1:1; the frames go through
``Pipeline.analyze_tracked`` with a ``StreamTracks`` of their own (one continuous track, identity
over it), the signals come from ``mobidem.liveness.headpose`` and the decision from
``mobidem.liveness.decision``. Frames are decided one after another, in order. Every outcome, PASS
or FAIL, is written to the audit log with its signed evidence (the SHA-256 of every frame decided
from, the challenges, the 1:1 and the partner's transaction_ref) before it is returned.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid

import numpy as np

from mobidem.api import convert
from mobidem.evidence.records import liveness_claim
from mobidem.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from mobidem.identity import IdentityService
from mobidem.imaging import Decoded, ImageLimits
from mobidem.liveness import challenges as ch
from mobidem.liveness import parallax
from mobidem.liveness.decision import Ceremony, FaceSignals, Observation, Outcome, Prompt, Rules
from mobidem.liveness.headpose import affine_pose, mouth_open_ratio
from mobidem.liveness.limits import FailureLimiter
from mobidem.logs import stream_id
from mobidem.pipeline import Pipeline, Task
from mobidem.streaming import Turn
from mobidem.tracking import StreamTracks, TrackingConfig
from mobidem.v1 import mobidem_pb2 as pb
from mobidem.v1 import mobidem_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

TASKS = frozenset({Task.DETECT, Task.IDENTIFY, Task.EXPRESSION, Task.PLUGINS})
MESH, EYE, PRESENCE = "face_mesh.mesh", "face_mesh.eye_openness", "face_mesh.face_presence"


class LivenessServicer(pb_grpc.LivenessServicer):
    def __init__(self, pipeline: Pipeline, identities: IdentityService, limits: ImageLimits, rules: Rules,
                 challenges: int = 3, tracking: TrackingConfig = TrackingConfig(), *, test_mode: bool = False,
                 limiter: FailureLimiter | None = None, clock_slack_s: float = 1.0, client_name=None, audit=None):
        self.pipeline = pipeline
        self.identities = identities
        self.limits = limits
        self.rules = rules
        self.count = challenges
        self.tracking = tracking
        self.test_mode = test_mode
        self.limiter = limiter or FailureLimiter()
        self.clock_slack_s = clock_slack_s  # capture time may run ahead of the server's clock by this much
        self.audit = audit  # mobidem.audit.AuditLog: every outcome recorded and signed before it is returned
        from mobidem.api.analysis import client_name as default_name

        self.client_name = client_name or default_name

    def _check_limits(self, keys: list[str]) -> None:
        for key in keys:
            wait = self.limiter.blocked(key)
            if wait:
                who = key.split(":", 1)
                raise ResourceExhausted(
                    f"{self.limiter.max_failures} failed liveness ceremonies for {who[0]} {who[1]!r} in the last "
                    f"{self.limiter.window_s:g} s (liveness_max_failures / liveness_failure_window_s): "
                    f"retry in {wait:.0f} s")

    async def Ceremony(self, request_iterator, context):
        messages = aiter(request_iterator)
        first = await anext(messages, None)
        if first is None:
            return
        if first.WhichOneof("message") != "options":
            raise InvalidArgument("the first message of a ceremony must be LivenessOptions (set `options`); "
                                  "frames follow the first prompt")
        opts = first.options
        seed = opts.test_seed if opts.HasField("test_seed") else None
        if seed is not None and not self.test_mode:
            log.error("REFUSED a liveness ceremony asking for test_seed=%d from %s: this server is not in test mode "
                      "(liveness_test_mode); a seeded ceremony's challenges are known in advance", seed,
                      self.client_name(context))
            raise FailedPrecondition("test_seed is accepted only by a server started with liveness_test_mode: true; "
                                     "a real ceremony's challenges are drawn by the server")
        point = self.identities.point(opts.operating_point)  # INVALID_ARGUMENT on an unknown name
        transaction_ref = convert.transaction_ref(opts)
        # who the failure limits count (a reconnection is the same client); a web ceremony names the phone
        limit_client = getattr(context, "limit_client", None)
        client = _without_port(limit_client() if limit_client is not None else self.client_name(context))
        keys = [f"client:{client}"]
        which = opts.WhichOneof("reference")
        reference = None
        digests: list[dict] = []  # for the evidence: the reference photo, then every frame decided from
        if which == "identity_id":
            if not opts.identity_id or len(opts.identity_id) > 256:
                raise InvalidArgument("identity_id must be 1-256 characters")
            keys.append(f"identity:{opts.identity_id}")
        elif which == "reference_image":
            digest = hashlib.sha256(opts.reference_image.SerializeToString()).hexdigest()
            keys.append(f"reference image:{digest[:16]}")
            digests.append({"role": "reference_image", "sha256": convert.image_digest(opts.reference_image)})
        self._check_limits(keys)
        if which == "identity_id":
            if self.identities.gallery.get(opts.identity_id) is None:
                raise NotFound(f"identity {opts.identity_id!r} does not exist")
        elif which == "reference_image":
            reference = await self.identities._embed_one(
                convert.image_loader(opts.reference_image, self.limits, "reference_image"), "reference image")

        if not any(p.name == "face_mesh" for p in self.pipeline.plugins.face):
            raise FailedPrecondition("liveness needs the face_mesh plugin: start the server with face_plugins "
                                     "including face_mesh, e.g. face_multitask,face_mesh (docs/LIVENESS.md)")
        ceremony_id = uuid.uuid4().hex[:16]
        stream_id.set(ceremony_id)
        sequence = ch.draw(self.count, seed)
        if seed is not None:
            log.warning("LIVENESS TEST MODE: ceremony %s uses test_seed=%d, challenges %s", ceremony_id, seed,
                        [c.name for c in sequence])
        ceremony = Ceremony(sequence, self.rules)
        log.info("liveness ceremony %s started for %s: %d challenges", ceremony_id, client, len(sequence))
        yield pb.LivenessResponse(prompt=_prompt_pb(ceremony.first_prompt(), ceremony_id))

        tracks = StreamTracks(self.tracking, self.identities, 1, identify=True)
        turn = None
        flat_ref = None  # the first frontal face (parallax.reference) and its pose: turns must show depth against it
        embeddings: list[np.ndarray] = []
        started_wall = None
        t0 = None
        outcome = None
        async for message in messages:
            if message.WhichOneof("message") != "frame":
                raise InvalidArgument("LivenessOptions may only be sent once, as the first message")
            frame = message.frame
            if not (frame.capture_time.seconds or frame.capture_time.nanos):
                raise InvalidArgument("every ceremony frame needs its capture_time (when the camera took it)")
            t = frame.capture_time.ToNanoseconds() / 1e9
            now = time.monotonic()
            if t0 is None:
                t0, started_wall = t, now
            elif seed is None and (t - t0) > (now - started_wall) + self.clock_slack_s:
                outcome = ceremony.fail(f"capture times run {(t - t0) - (now - started_wall):.1f} s ahead of the "
                                        "server's clock: frames must be sent as they are captured")
                break
            digests.append({"role": "frame", "index": sum(d["role"] == "frame" for d in digests),
                            "t": round(t - t0, 3), "sha256": convert.image_digest(frame.image)})
            turn = Turn(turn, 2)
            seen = []  # the decoded frame, for the parallax cue
            load = convert.image_loader(frame.image, self.limits, "frame.image")
            try:
                analysis = await self.pipeline.analyze_tracked(lambda: seen.append(load()) or seen[-1], TASKS, 0,
                                                               tracks, turn, t)
            finally:
                turn.release()
            faces = []
            for face in analysis.faces:
                if MESH not in face.extensions:
                    continue
                mesh = np.asarray(face.extensions[MESH])
                pose = affine_pose(mesh)
                distance = None
                if face.fresh_embedding and face.embedding is not None:
                    # against the nearest of the ceremony's embeddings so far: a turned face is compared
                    # with the views before it, while another person is far from all of them
                    if embeddings:
                        distance = float(min(self.identities.distance(face.embedding, e) for e in embeddings))
                    embeddings.append(face.embedding)
                happy = 0.0
                if face.expression is not None and "happy" in face.expression_labels:
                    happy = float(face.expression[face.expression_labels.index("happy")])
                box = face.box
                asked = ceremony.challenges[ceremony.index] if ceremony.phase == "active" else None
                flat_ref, flatness = await self._flatness(flat_ref, seen[-1], mesh, pose, asked)
                faces.append(FaceSignals(face.track_id, float(min(box[2] - box[0], box[3] - box[1])), face.score,
                                         float(face.extensions.get(PRESENCE, 1.0)), pose.u, pose.v,
                                         float(face.extensions.get(EYE, 0.0)), mouth_open_ratio(mesh), happy,
                                         distance, point.threshold, flatness))
            event = ceremony.feed(Observation(t, tuple(faces)))
            if isinstance(event, Prompt):
                yield pb.LivenessResponse(prompt=_prompt_pb(event, ceremony_id))
            elif isinstance(event, Outcome):
                outcome = event
                break
        if outcome is None:
            outcome = ceremony.stream_ended()
        result = _outcome_pb(outcome, ceremony_id)
        if outcome.passed and which is not None:
            await self._one_to_one(result, opts, reference, embeddings, point)
        if result.decision != pb.LivenessOutcome.DECISION_PASS:
            for key in keys:
                self.limiter.failed(key)
        if self.audit is not None:
            await self._record(result, seed, which, opts.identity_id if which == "identity_id" else "", point,
                               digests, transaction_ref)
        log.info("liveness ceremony %s: %s %s (%d frames, %.1f s)", ceremony_id,
                 pb.LivenessOutcome.Decision.Name(result.decision), list(result.reasons), result.frames,
                 result.duration_s)
        yield pb.LivenessResponse(outcome=result)

    async def _flatness(self, ref, image, mesh: np.ndarray, pose, asked):
        """(the reference, this face's ``parallax.flatness``): the reference is the ceremony's first frontal
        face; flatness is measured (in a worker thread: SIFT and ECC on the face region) only while a turn
        or looking up is asked and the pose moved at least half of it from the reference, elsewhere 1.0 (the
        decision reads it for the asked pose only)."""
        decoded = Decoded.of(image)
        points = mesh[:, :2] / decoded.scale  # the mesh is in original pixels, the decoded image may be smaller
        if ref is None:
            if abs(pose.u) >= self.rules.frontal_u:
                return None, 1.0
            made = await self.pipeline.run(parallax.reference, decoded.pixels, points)
            return ((made, pose) if made is not None else None), 1.0
        made, p0 = ref
        moved = {ch.Challenge.TURN_LEFT: (pose.u - p0.u) / self.rules.turn_du,
                 ch.Challenge.TURN_RIGHT: (p0.u - pose.u) / self.rules.turn_du,
                 ch.Challenge.LOOK_UP: (p0.v - pose.v) / self.rules.up_dv}.get(asked, 0.0)
        if moved < 0.5:
            return ref, 1.0
        return ref, await self.pipeline.run(parallax.flatness, made, decoded.pixels, points)

    async def _record(self, result: pb.LivenessOutcome, seed: int | None, which: str | None, identity_id: str,
                      point, digests: list[dict], transaction_ref: str) -> None:
        """The outcome into the audit log, signed; its evidence and record id into ``result``. A ceremony
        whose outcome cannot be recorded fails with UNAVAILABLE instead of going unrecorded."""
        passed = result.decision == pb.LivenessOutcome.DECISION_PASS
        challenges = [{"challenge": pb.Challenge.Name(t.challenge).removeprefix("CHALLENGE_").lower(),
                       "completed": t.completed, "started_s": round(t.started_s, 3),
                       "completed_s": round(t.completed_s, 3), "window_s": round(t.window_s, 3)}
                      for t in result.challenges]
        claim = liveness_claim(result.ceremony_id, passed, list(result.reasons), result.score, result.frames,
                               result.duration_s, challenges, seed, which or "")
        record = await asyncio.to_thread(
            self.audit.liveness_decision, claim, passed, identity_id, result.match,
            float(result.distance) if result.verified else None, point, self.identities.embedder, digests,
            transaction_ref)
        result.evidence, result.evidence_record_id = record.get("evidence", ""), record.get("record_id", "")

    async def _one_to_one(self, result: pb.LivenessOutcome, opts, reference, embeddings, point) -> None:
        """The live face against the named identity or the reference photo: the mean of its fresh embeddings."""
        if not embeddings:
            result.decision = pb.LivenessOutcome.DECISION_FAIL
            result.reasons.append("no embedding of the live face was made: the 1:1 could not be decided")
            return
        live = np.mean(np.stack(embeddings), 0).astype(np.float32)
        ids = self.identities
        if reference is not None:
            distance = self.identities.distance(live, reference)  # the embedder's metric
        else:
            distance = ids.gallery.distance_to_identity(live, opts.identity_id, ids.model_name, ids.model_version)
            if distance is None:
                raise FailedPrecondition(f"identity {opts.identity_id!r} has no template from {ids.embedder}; re-enrol it")
        result.verified, result.distance, result.threshold = True, distance, point.threshold
        result.operating_point, result.match = point.name, distance <= point.threshold
        if not result.match:
            result.decision = pb.LivenessOutcome.DECISION_FAIL
            result.score = 0.0
            result.reasons.append(f"the live face does not match the {'reference image' if reference is not None else 'identity ' + repr(opts.identity_id)} "
                                  f"(distance {distance:.3f} > {point.threshold:.3f})")


def _without_port(name: str) -> str:
    """An unauthenticated peer ("ipv4:1.2.3.4:5678", "ipv6:[::1]:5678") without its port; key names unchanged."""
    if name.startswith(("ipv4:", "ipv6:")) and name.count(":") >= 2:
        return name.rsplit(":", 1)[0]
    return name


def _prompt_pb(p: Prompt, ceremony_id: str) -> pb.ChallengePrompt:
    return pb.ChallengePrompt(index=p.index, count=p.count, challenge=int(p.challenge), text=p.text,
                              window_s=p.window_s, ceremony_id=ceremony_id)


def _outcome_pb(o: Outcome, ceremony_id: str) -> pb.LivenessOutcome:
    decision = pb.LivenessOutcome.DECISION_PASS if o.passed else pb.LivenessOutcome.DECISION_FAIL
    return pb.LivenessOutcome(
        decision=decision, reasons=o.reasons, score=o.score, ceremony_id=ceremony_id, frames=o.frames,
        duration_s=o.duration_s,
        challenges=[pb.ChallengeTiming(challenge=int(t.challenge), completed=t.completed, started_s=t.started_s,
                                       completed_s=t.completed_s, window_s=t.window_s) for t in o.timings])
