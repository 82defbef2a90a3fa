"""One frame's way through the plugins: decode -> detect -> align -> face plugins -> match.

Transport-agnostic: takes a function that yields an RGB image and returns plain dataclasses; the
gRPC layer converts at the edge. Which models run is configuration (a ``PluginSet``): this module
knows the plugin interface, not BlazeFace or dlib. Image work (decode, letterbox, warps) runs in a
thread pool so the event loop only schedules; OpenCV releases the GIL, so two cores work in
parallel. Every Triton call is an awaitable, so frames of many streams are in Triton at once and
its dynamic batcher merges them into batches.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Callable, Protocol, Sequence

import cv2
import numpy as np

from mobidem.errors import FailedPrecondition
from mobidem.imaging import Decoded
from mobidem.plugins import Detection, FacePlugin, PluginSet
from mobidem.tracking.motion import iou_matrix
from mobidem.tracking.quality import face_quality
from mobidem.triton_client import TritonClient
from mobidem.vision.align import BLAZEFACE, CHIP_SIZE, ChipTemplate, align_chip


class Task(IntEnum):  # values match mobidem.v1.Task
    DETECT = 1
    IDENTIFY = 2
    EXPRESSION = 3
    PLUGINS = 4  # face plugins' extension fields


ALL_TASKS = frozenset(Task)
TASK_FIELDS = {Task.IDENTIFY: "embedding", Task.EXPRESSION: "expression"}


@dataclass
class Match:
    """The gallery's answer for one face."""

    known: bool
    identity_id: str = ""
    display_name: str = ""
    distance: float = float("inf")
    threshold: float = 0.0
    operating_point: str = ""
    candidates: list[tuple[str, str, float]] = field(default_factory=list)  # (id, name, distance)
    stale_identities: int = 0
    embedder: str = ""  # "model:version" of the embedder that decided ("": the primary one)


class Matcher(Protocol):
    def match(self, embedding: np.ndarray, top_k: int) -> Match: ...


@dataclass
class FaceResult:
    box: np.ndarray  # x0, y0, x1, y1 (image pixels)
    landmarks: np.ndarray  # [K, 2]
    score: float
    embedding: np.ndarray | None = None
    # every embedder's embedding by Triton model name (embed_faces with several embedders: a migration)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)
    expression: np.ndarray | None = None  # probabilities, in expression_labels order
    expression_labels: tuple[str, ...] = ()
    match: Match | None = None
    extensions: dict[str, Any] = field(default_factory=dict)  # "<plugin>.<field>" -> value
    # tracked streams (mobidem.tracking): 0 and None when not tracked
    track_id: int = 0
    fresh_embedding: bool = False  # this frame's embedding was computed (else the track's identity is reused)
    quality: float | None = None  # mobidem.tracking.quality
    track_embeddings: int = 0  # embeddings the track's identity was decided from
    smoothed_expression: np.ndarray | None = None  # over the track, in expression_labels order


@dataclass
class Analysis:
    width: int
    height: int
    faces: list[FaceResult]
    models: list[tuple[str, str, str]]  # (role, triton model, version)
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class PipelineConfig:
    min_face_px: int = 16  # smaller detections are noise: too small to embed or to trust
    max_faces: int = 32
    threads: int = 2
    # the detector sees an image larger than this shrunk by an integer factor to at most this side,
    # so its cost is bounded whatever the resolution (a 12-MP or 48-MP photo costs what a 2-MP one
    # does); chips are still cut from the full-resolution image (docs/PERFORMANCE.md, "Phone photos")
    detect_max_side: int = 2160  # every photo of the shared data (at most 2160 px) is detected as it is
    # a face the detector scores below this counts only if the second detector (PluginSet.confirmer) also
    # finds it, searching near its box: BlazeFace's false faces score low (docs/ACCURACY.md); 0: off
    confirm_below: float = 0.0
    confirm_min_score: float = 0.3  # the score the second detector's face needs to confirm one


class FrameTracking(Protocol):
    """A tracked stream's part in one frame (mobidem.tracking.StreamTracks with the frame's Turn)."""

    def plan_detection(self, t: float) -> np.ndarray | None: ...
    def assign(self, boxes: np.ndarray, qualities: list[float], t: float) -> list: ...
    def conclude(self, plans: list, faces: list[FaceResult]) -> None: ...
    def abandon(self, plans: list) -> None: ...


class Pipeline:
    """Runs a PluginSet against Triton; also the ``Context`` the plugins get."""

    def __init__(self, triton: TritonClient, plugins: PluginSet, config: PipelineConfig = PipelineConfig(),
                 matcher: Matcher | None = None, metrics=None):
        self.triton = triton
        self.metrics = metrics  # mobidem.metrics.Metrics or None
        self.plugins = plugins
        self.config = config
        self.matcher = matcher
        self.pool = ThreadPoolExecutor(max(1, config.threads), thread_name_prefix="mobidem-image")
        self.embedder: FacePlugin | None = plugins.filling("embedding")
        # tracked streams: the expression of faces that are not embedded in a frame comes from
        # a plugin that does not embed (the configured one if it is separate, else the tracking one)
        filler = plugins.filling("expression")
        self.expression_only: FacePlugin | None = (
            filler if filler is not None and "embedding" not in filler.fields else plugins.track_expression)

    # -- the plugins' Context

    async def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        return await self.triton.infer(model, inputs, list(outputs))

    async def run(self, fn: Callable[..., Any], *args) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # --

    @property
    def models(self) -> list[str]:
        return self.plugins.model_names

    @property
    def embedder_model(self) -> str:
        if self.embedder is None:
            raise FailedPrecondition("no configured face plugin fills `embedding`: identities are unavailable")
        return self.embedder.models[0].name

    async def versions(self, plugins) -> list[tuple[str, str, str]]:
        out = []
        for plugin in plugins:
            role = "detector" if plugin.kind == "detector" else "face_model"
            for m in plugin.models:
                out.append((role, m.name, await self.triton.model_version(m.name)))
        return out

    async def detect(self, image: np.ndarray, min_face_size: int = 0) -> list[Detection]:
        """Faces at least ``min_face_px`` (and ``min_face_size``) wide, best first."""
        factor = detect_factor(image.shape, self.config.detect_max_side)
        if factor > 1:
            small = await self.run(downscale, image, factor)
            found = [scaled(d, factor) for d in await self.plugins.detector.detect(small, self)]
        else:
            found = await self.plugins.detector.detect(image, self)
        smallest = max(self.config.min_face_px, min_face_size)
        found = [d for d in found if min(d.width, d.height) >= smallest][: self.config.max_faces]
        return await self._confirmed(image, found)

    async def _confirmed(self, image: np.ndarray, found: list[Detection]) -> list[Detection]:
        """``found`` without the faces scored below ``confirm_below`` that the second detector does not also
        find near their boxes (its crops around them; a face it finds there overlaps the box)."""
        confirmer, below = self.plugins.confirmer, self.config.confirm_below
        unsure = [i for i, d in enumerate(found) if d.score < below]
        if confirmer is None or not unsure:
            return found
        seen = await confirmer.detect_near(image, np.array([found[i].box for i in unsure], np.float64), self,
                                           min_score=self.config.confirm_min_score)
        dropped = {i for i, other in zip(unsure, seen) if other is None}
        if dropped and self.metrics is not None:
            self.metrics.unconfirmed_faces.inc(len(dropped))
        return [d for i, d in enumerate(found) if i not in dropped]

    async def detect_near(self, image: np.ndarray, boxes: np.ndarray,
                          min_face_size: int = 0) -> list[Detection] | None:
        """The faces found near the expected ``boxes`` (a tracked stream between key frames), one per
        face (two expected boxes that found the same face keep it once); None when the faces not found
        make up half of the expected faces' area or more (the face left or turned away, the scene
        changed): then the caller looks everywhere. Missing small faces of a crowd (background faces
        the detector sees in one frame and not the next) are left to the next key frame: searching the
        whole frame for them every frame would cost what tracking saves."""
        found = await self.plugins.detector.detect_near(image, boxes, self)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
        missing = np.array([d is None for d in found], bool)
        if missing.all() or 2 * area[missing].sum() >= area.sum():
            return None
        smallest = max(self.config.min_face_px, min_face_size)
        found = sorted((d for d in found if d is not None and min(d.width, d.height) >= smallest),
                       key=lambda d: -d.score)
        kept: list[Detection] = []
        for d in found:
            if not kept or iou_matrix([d.box], [k.box for k in kept]).max() <= 0.5:
                kept.append(d)
        return kept[: self.config.max_faces]

    async def _face_fields(self, image: np.ndarray, detections: list[Detection], plugins: list[FacePlugin],
                           faces: list[FaceResult]) -> float:
        """Fill the plugins' fields into ``faces``; returns the seconds spent aligning chips."""
        started = time.perf_counter()
        chips = await self.run(_chips, image, detections, self.plugins.detector.chip_template)
        aligned = time.perf_counter() - started
        every = list(range(len(faces)))
        await asyncio.gather(*(self._fill(image, detections, chips, p, faces, every) for p in plugins))
        return aligned

    def _wanted(self, tasks: frozenset[Task]) -> list[FacePlugin]:
        fields = {TASK_FIELDS[t] for t in tasks if t in TASK_FIELDS}
        return [p for p in self.plugins.face
                if fields & set(p.fields) or (Task.PLUGINS in tasks and set(p.fields) - set(TASK_FIELDS.values()))]

    async def analyze(self, load: Callable[[], np.ndarray], tasks: frozenset[Task] = ALL_TASKS,
                      min_face_size: int = 0, top_k: int = 1) -> Analysis:
        t0 = time.perf_counter()
        decoded = Decoded.of(await self.run(load))
        image, scale = decoded.pixels, decoded.scale
        t1 = time.perf_counter()
        detections = await self.detect(image, -(-min_face_size // scale))
        t2 = time.perf_counter()
        # boxes and points in the original image's pixels (a reduced decode is 1/scale of it)
        faces = [FaceResult(d.box * scale, d.keypoints * scale, float(d.score)) for d in detections]
        wanted = self._wanted(tasks) if faces else []
        timings = {"decode": t1 - t0, "detect": t2 - t1, "align": 0.0, "embed": 0.0, "match": 0.0}
        if wanted:
            align = await self._face_fields(image, detections, wanted, faces)
            t3 = time.perf_counter()
            if Task.IDENTIFY in tasks and self.matcher is not None:
                for face in faces:
                    if face.embedding is not None:
                        face.match = self.matcher.match(face.embedding, max(1, top_k))
            timings.update(align=align, embed=t3 - t2 - align, match=time.perf_counter() - t3)
        if scale > 1:  # plugin points are image pixels too (docs/PLUGINS.md: a [K, 2] array is points)
            for face in faces:
                face.extensions = {k: _scaled_points(v, scale) for k, v in face.extensions.items()}
        timings["total"] = time.perf_counter() - t0
        models = await self.versions([self.plugins.detector, *wanted])
        timings_ms = {k: v * 1000 for k, v in timings.items()}
        if self.metrics is not None:
            self.metrics.faces_detected.inc(len(faces))
            self.metrics.observe_timings(timings_ms)
        return Analysis(decoded.width, decoded.height, faces, models, timings_ms)

    async def analyze_tracked(self, load: Callable[[], np.ndarray], tasks: frozenset[Task], min_face_size: int,
                              tracking: FrameTracking, turn, when: float) -> Analysis:
        """``analyze`` for a frame of a tracked stream, in the ordered sections of the stream's ``turn``:
        (0) the tracker says where to detect (the whole image, or near its faces) and every face gets
        its track; then only the faces the tracker asks for are embedded, every face gets its
        expression, and (1) the track's identity is decided. Decoding and the face models run
        concurrently with other frames. ``when``: capture time, seconds."""
        t0 = time.perf_counter()
        decoded = Decoded.of(await self.run(load))
        image, scale = decoded.pixels, decoded.scale
        t1 = time.perf_counter()
        plans: list = []
        try:
            # section 0, in stream order: where to look (the tracker's state after the previous frame),
            # detection, and each face's track; deterministic for a given sequence of frames
            async with turn.section(0):
                near = tracking.plan_detection(when) if self.plugins.detector.detects_near else None
                detections = None
                if near is not None:  # every tracked face found near where it was expected, or look everywhere
                    detections = await self.detect_near(image, near / scale, -(-min_face_size // scale))
                if detections is None:
                    detections = await self.detect(image, -(-min_face_size // scale))
                t2 = time.perf_counter()
                faces = [FaceResult(d.box * scale, d.keypoints * scale, float(d.score)) for d in detections]
                chips, qualities = await self.run(_chips_and_quality, image, detections, [f.box for f in faces],
                                                  self.plugins.detector.chip_template)
                t3 = time.perf_counter()
                plans = tracking.assign(np.array([f.box for f in faces], np.float32).reshape(-1, 4), qualities, when)
            fresh = [i for i, p in enumerate(plans) if p.fresh]
            rest = [i for i, p in enumerate(plans) if not p.fresh]
            jobs = []  # (plugin, face indices)
            if Task.IDENTIFY in tasks and fresh and self.embedder is not None:
                jobs.append((self.embedder, fresh))
            if Task.EXPRESSION in tasks and faces:
                embedder_expresses = self.embedder is not None and "expression" in self.embedder.fields
                for_expression = rest if embedder_expresses and Task.IDENTIFY in tasks else list(range(len(faces)))
                expresser = self.expression_only or (self.embedder if embedder_expresses else None)
                if for_expression and expresser is not None:
                    jobs.append((expresser, for_expression))
            for plugin in self._wanted(tasks):
                if set(plugin.fields) - set(TASK_FIELDS.values()) and plugin not in (self.embedder, self.expression_only):
                    jobs.append((plugin, list(range(len(faces)))))
            await asyncio.gather(*(self._fill(image, detections, chips, plugin, faces, idx) for plugin, idx in jobs))
            if Task.EXPRESSION not in tasks:
                for face in faces:
                    face.expression = None
            t4 = time.perf_counter()
            async with turn.section(1):
                tracking.conclude(plans, faces)
        finally:
            tracking.abandon(plans)
        t5 = time.perf_counter()
        if scale > 1:
            for face in faces:
                face.extensions = {k: _scaled_points(v, scale) for k, v in face.extensions.items()}
        timings = {"decode": t1 - t0, "detect": t2 - t1, "align": t3 - t2, "embed": t4 - t3, "match": t5 - t4,
                   "total": time.perf_counter() - t0}
        models = await self.versions([self.plugins.detector, *dict.fromkeys(p for p, _ in jobs)])
        timings_ms = {k: v * 1000 for k, v in timings.items()}
        if self.metrics is not None:
            self.metrics.faces_detected.inc(len(faces))
            self.metrics.observe_timings(timings_ms)
        return Analysis(decoded.width, decoded.height, faces, models, timings_ms)

    async def _fill(self, image: np.ndarray, detections: list[Detection], chips: np.ndarray, plugin: FacePlugin,
                    faces: list[FaceResult], idx: list[int]) -> None:
        """One plugin's fields for the faces at ``idx``."""
        values = await plugin.process(image, [detections[i] for i in idx], chips[idx], self)
        for i, fields_ in zip(idx, values):
            face = faces[i]
            for name, value in fields_.items():
                if name == "embedding":
                    face.embedding = np.asarray(value, np.float32)
                elif name == "expression":
                    face.expression, face.expression_labels = np.asarray(value, np.float32), plugin.labels
                else:
                    face.extensions[f"{plugin.name}.{name}"] = value

    async def embed_faces(self, image: np.ndarray | Decoded,
                          embedders: Sequence[FacePlugin] | None = None) -> tuple[list[FaceResult], str]:
        """Detect and embed every face of one image, largest first (for enrolment and verification).

        ``embedders``: the embedder plugins to run on the same detections (default: the configured one);
        each face's ``embeddings`` holds each one's embedding by model name, ``embedding`` the configured
        one's (when it ran). Returns the faces and the configured embedder's "model:version"."""
        image = Decoded.of(image).pixels
        model = self.embedder_model
        embedders = [self.embedder] if embedders is None else list(embedders)
        detections = sorted(await self.detect(image), key=lambda d: d.area, reverse=True)
        faces = [FaceResult(d.box, d.keypoints, float(d.score)) for d in detections]
        if faces:
            chips = await self.run(_chips, image, detections, self.plugins.detector.chip_template)

            async def embed(plugin: FacePlugin) -> None:
                values = await plugin.process(image, detections, chips, self)
                for face, fields_ in zip(faces, values):
                    face.embeddings[plugin.models[0].name] = np.asarray(fields_["embedding"], np.float32)

            await asyncio.gather(*(embed(p) for p in embedders))
            for face in faces:
                face.embedding = face.embeddings.get(model)
        return faces, f"{model}:{await self.triton.model_version(model)}"

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def detect_factor(shape: tuple[int, ...], max_side: int) -> int:
    """The smallest integer factor that brings the image's longer side to at most ``max_side``."""
    longest = max(shape[:2])
    return max(1, -(-longest // max(1, max_side)))


def downscale(image: np.ndarray, factor: int) -> np.ndarray:
    """``image`` ``factor`` times smaller by area averaging (OpenCV's exact integer-factor path; the
    last ``< factor`` rows and columns are dropped, so pixel i covers pixels [i*f, (i+1)*f) of the original)."""
    h, w = image.shape[:2]
    hh, ww = h - h % factor, w - w % factor
    return cv2.resize(image[:hh, :ww], (ww // factor, hh // factor), interpolation=cv2.INTER_AREA)


def scaled(d: Detection, factor: int) -> Detection:
    """A detection on the downscaled image, in the original image's pixels."""
    return Detection(d.box * factor, d.score, d.keypoints * factor)


def _scaled_points(value: Any, scale: int) -> Any:
    """An extension value in reduced-image pixels -> original pixels, when it is points ([K, 2])."""
    if isinstance(value, np.ndarray) and value.ndim == 2 and value.shape[1] == 2 and value.dtype.kind == "f":
        return value * scale
    return value


def _chips_and_quality(image: np.ndarray, detections: list[Detection], boxes: list[np.ndarray],
                       template: ChipTemplate = BLAZEFACE) -> tuple[np.ndarray, list[float]]:
    """Aligned chips and each face's quality (``boxes`` in the original image's pixels, for its size)."""
    chips = _chips(image, detections, template)
    return chips, [face_quality(chip, d.keypoints, box) for chip, d, box in zip(chips, detections, boxes)]


def _chips(image: np.ndarray, detections: list[Detection], template: ChipTemplate = BLAZEFACE) -> np.ndarray:
    """The embedder's chips, aligned with the detector's own ``template`` (DetectorPlugin.chip_template)."""
    chips = np.empty((len(detections), CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
    for i, d in enumerate(detections):
        chips[i] = align_chip(image, d.keypoints[:6], template=template)[0]
    return chips
