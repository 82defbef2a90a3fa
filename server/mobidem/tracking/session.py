"""One stream's tracks: when a face is embedded, who a track is, and when a track must split.

The pipeline calls, for every frame of a tracked stream and in the stream's order (ordered
sections, mobidem.streaming.Turn):

0. ``plan_detection`` (before detection): on a key frame (every ``detect_every_frames``-th, and
   whenever no face is tracked) the detector looks at the whole image; in between it only looks
   for each tracked face near where its track expects it (when the detector can), and everywhere
   when half of them or more are not found there; a new face is found within ``detect_every_frames`` frames;
1. ``assign`` (after detection, in the same section): each face gets its track, and a plan says whether it is embedded
   in this frame (fresh) or only gets the cheap per-frame fields (expression);
2. ``conclude`` (after the face models): fresh embeddings join their track, the track's identity is
   decided from its embeddings, and the smoothed expression is updated;
3. ``abandon`` in a ``finally``: a frame that failed or was cancelled between the two lets go of
   the embeddings it had promised, so that its tracks are embedded again by a later frame.

A face is embedded when its track is new, was lost and found again, overlaps another face (a swap
is possible), has no embedding yet, when its quality beats the best embedded one by
``quality_gain``, and at least every ``embed_every_frames`` frames or ``embed_every_s`` seconds.

A track's identity is the gallery match of the quality-weighted mean of its best
``max_embeddings`` embeddings. A fresh embedding farther than the operating point's threshold from
that mean means the person changed (or two people crossed and the boxes were swapped): the track is
split — it gets a new track id and starts its identity again from this embedding — never silently
relabelled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mobidem.tracking.motion import BoxTracker


@dataclass(frozen=True)
class TrackingConfig:
    iou_min: float = 0.3  # overlap with the predicted (or last) box that continues a track
    lost_s: float = 1.0  # a track unseen this long (capture time) ends
    embed_every_frames: int = 15  # a tracked face is embedded again at least this often ...
    embed_every_s: float = 1.0  # ... and at least this often in capture time
    quality_gain: float = 1.25  # ... and when its quality beats the track's best embedded one by this factor
    quality_margin: float = 0.05  # ... plus this much (tiny qualities are noise)
    max_embeddings: int = 8  # the best embeddings (by quality) a track's identity is decided from
    expression_alpha: float = 0.35  # weight of the newest frame in the smoothed expression
    detect_every_frames: int = 5  # whole-image detection on every this many frames (1: on every frame)


class Matcher(Protocol):
    def match(self, embedding: np.ndarray, top_k: int): ...  # -> mobidem.pipeline.Match


class Metrics(Protocol):  # the part of mobidem.metrics.Metrics used here
    tracks_started: object
    track_splits: object
    embeddings_fresh: object
    embeddings_skipped: object


@dataclass
class Track:
    id: int  # the id results carry; a split gives the track a new one
    embeddings: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (quality, embedding)
    best_quality: float = 0.0  # the best quality embedded (or promised) so far
    frames_since_embed: int = 0
    last_embed_t: float = float("-inf")
    pending: int = 0  # fresh embeddings promised by frames not yet concluded
    expression: np.ndarray | None = None  # smoothed probabilities

    def identity_embedding(self) -> np.ndarray | None:
        if not self.embeddings:
            return None
        weights = np.array([max(q, 1e-3) for q, _ in self.embeddings], np.float64)
        stack = np.stack([e for _, e in self.embeddings]).astype(np.float64)
        return (weights[:, None] * stack).sum(0) / weights.sum()


@dataclass
class FacePlan:
    track: Track
    fresh: bool  # embedded in this frame
    quality: float
    new: bool = False
    reason: str = ""  # why it is embedded: new, reacquired, crowded, unembedded, interval, quality
    settled: bool = False


class StreamTracks:
    def __init__(self, config: TrackingConfig = TrackingConfig(), matcher: Matcher | None = None, top_k: int = 1,
                 identify: bool = True, metrics: Metrics | None = None):
        self.config = config
        self.matcher = matcher
        self.top_k = top_k
        self.identify = identify  # embeddings wanted at all (TASK_IDENTIFY)
        self.metrics = metrics
        self.boxes = BoxTracker(config.iou_min, config.lost_s)
        self.tracks: dict[int, Track] = {}  # by motion key
        self._next_id = 1
        self.frames = 0  # frames planned

    def plan_detection(self, t: float) -> np.ndarray | None:
        """None: detect on the whole image; else the boxes [N, 4] to look near (a non-key frame)."""
        self.frames += 1
        if self.config.detect_every_frames <= 1 or (self.frames - 1) % self.config.detect_every_frames == 0:
            return None
        expected = self.boxes.expected(t, self.boxes.reacquire_s)  # the faces seen just before
        return expected if len(expected) else None

    def _new_id(self) -> int:
        self._next_id += 1
        if self.metrics is not None:
            self.metrics.tracks_started.inc()
        return self._next_id - 1

    def assign(self, boxes: np.ndarray, qualities: list[float], t: float) -> list[FacePlan]:
        assignments, ended = self.boxes.update(boxes, t)
        for motion in ended:
            self.tracks.pop(motion.key, None)
        c = self.config
        plans = []
        for a, quality in zip(assignments, qualities):
            track = self.tracks.get(a.track.key)
            if track is None:
                track = self.tracks[a.track.key] = Track(self._new_id())
            reason = "" if not self.identify else (
                "new" if a.new else "reacquired" if a.reacquired else "crowded" if a.crowded
                else "unembedded" if not track.embeddings and not track.pending
                else "interval" if (track.frames_since_embed + 1 >= c.embed_every_frames
                                    or t - track.last_embed_t >= c.embed_every_s)
                else "quality" if quality > track.best_quality * c.quality_gain + c.quality_margin
                else "")
            fresh = bool(reason)
            if fresh:
                track.pending += 1
                track.frames_since_embed = 0
                track.last_embed_t = t
                track.best_quality = max(track.best_quality, quality)
            else:
                track.frames_since_embed += 1
            if self.metrics is not None and self.identify:
                (self.metrics.embeddings_fresh if fresh else self.metrics.embeddings_skipped).inc()
            plans.append(FacePlan(track, fresh, quality, new=a.new, reason=reason))
        return plans

    def conclude(self, plans: list[FacePlan], faces) -> None:
        """Fill ``track_id``, ``fresh_embedding``, ``match`` and ``smoothed_expression`` of ``faces``
        (mobidem.pipeline.FaceResult, one per plan)."""
        for plan, face in zip(plans, faces):
            track = plan.track
            if plan.fresh and not plan.settled:
                plan.settled = True
                track.pending -= 1
                if face.embedding is not None:
                    self._add_embedding(track, plan.quality, face.embedding)
            face.track_id = track.id
            face.fresh_embedding = plan.fresh
            face.quality = plan.quality
            if self.identify and self.matcher is not None:
                mean = track.identity_embedding()
                if mean is not None:
                    face.match = self.matcher.match(mean.astype(np.float32), self.top_k)
                    face.track_embeddings = len(track.embeddings)
            if face.expression is not None:
                a = self.config.expression_alpha
                track.expression = (face.expression if track.expression is None
                                    else a * face.expression + (1 - a) * track.expression)
                face.smoothed_expression = track.expression.astype(np.float32)

    def _add_embedding(self, track: Track, quality: float, embedding: np.ndarray) -> None:
        mean = track.identity_embedding()
        if mean is not None and self.matcher is not None:
            threshold = self.matcher.match(mean.astype(np.float32), 1).threshold
            measure = getattr(self.matcher, "distance", None)  # the embedder's metric (Euclidean without one)
            apart = measure(embedding, mean) if measure is not None else float(np.linalg.norm(embedding - mean))
            if apart > threshold:
                # another person in this track's box: a new track, its identity from this embedding alone
                track.id = self._new_id()
                track.embeddings = []
                track.best_quality = quality
                track.expression = None
                if self.metrics is not None:
                    self.metrics.track_splits.inc()
        track.embeddings.append((quality, np.asarray(embedding, np.float32)))
        track.embeddings.sort(key=lambda qe: qe[0], reverse=True)
        del track.embeddings[self.config.max_embeddings:]

    def abandon(self, plans: list[FacePlan]) -> None:
        for plan in plans:
            if plan.fresh and not plan.settled:
                plan.settled = True
                plan.track.pending -= 1
