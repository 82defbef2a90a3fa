"""One frame's way through the models: decode -> detect -> align -> face model -> match.

Transport-agnostic: takes a function that yields an RGB image and returns plain dataclasses; the
gRPC layer converts at the edge. Image work (decode, letterbox, warps) runs in a thread pool so
the event loop only schedules; OpenCV releases the GIL, so two cores work in parallel. Every
Triton call is an awaitable, so frames of many streams are in Triton at once and its dynamic
batcher merges them into batches.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Callable, Protocol

import numpy as np

from mobidem.triton_client import TritonClient
from mobidem.vision import blazeface
from mobidem.vision.align import CHIP_SIZE, align_chip

EXPRESSION_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


class Task(IntEnum):  # values match mobidem.v1.Task
    DETECT = 1
    IDENTIFY = 2
    EXPRESSION = 3


ALL_TASKS = frozenset(Task)


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


class Matcher(Protocol):
    def match(self, embedding: np.ndarray, top_k: int) -> Match: ...


@dataclass
class FaceResult:
    box: np.ndarray  # x0, y0, x1, y1 (image pixels)
    landmarks: np.ndarray  # [6, 2]
    score: float
    embedding: np.ndarray | None = None
    expression: np.ndarray | None = None  # probabilities in EXPRESSION_LABELS order
    match: Match | None = None
    extensions: dict = field(default_factory=dict)

    @property
    def size(self) -> float:
        return float(min(self.box[2] - self.box[0], self.box[3] - self.box[1]))


@dataclass
class Analysis:
    width: int
    height: int
    faces: list[FaceResult]
    models: list[tuple[str, str, str]]  # (role, triton model, version)
    timings_ms: dict[str, float]


@dataclass(frozen=True)
class DetectorPass:
    spec: blazeface.DetectorSpec
    score_threshold: float
    margin: float = 0.0  # empty border around the letterboxed image, as a fraction of its longer side
    tile: int = 0  # >0: run on square tiles of this side (one batched call), for images over twice as large


# Chosen by measurement on the shared data (docs/ACCURACY.md, "Detection"): the short-range model
# with a 10 % margin finds near and frame-filling faces; the full-range model finds the small far
# ones, and on 640 px tiles of large frames the faces that letterboxing a 1080p frame shrinks away;
# merged by weighted NMS they miss fewest faces with no false face on noface/.
DETECTOR_PASSES = {
    "blazeface_short": (DetectorPass(blazeface.SHORT_RANGE, 0.6, margin=0.1),),
    "blazeface_full": (DetectorPass(blazeface.FULL_RANGE, 0.3), DetectorPass(blazeface.FULL_RANGE, 0.3, tile=640)),
}


@dataclass(frozen=True)
class PipelineConfig:
    detector: str = "auto"  # "blazeface_short", "blazeface_full", or "auto": both, merged
    face_model: str = "face_multitask"
    min_face_px: int = 16  # smaller detections are noise: too small to embed or to trust
    max_faces: int = 32
    threads: int = 2


class Pipeline:
    def __init__(self, triton: TritonClient, config: PipelineConfig = PipelineConfig(),
                 matcher: Matcher | None = None):
        self.triton = triton
        self.config = config
        self.matcher = matcher
        self.pool = ThreadPoolExecutor(max(1, config.threads), thread_name_prefix="mobidem-image")
        if config.detector == "auto":
            self.detectors = [p for passes in DETECTOR_PASSES.values() for p in passes]
        elif config.detector in DETECTOR_PASSES:
            self.detectors = list(DETECTOR_PASSES[config.detector])
        else:
            raise ValueError(f"unknown detector {config.detector!r}; choose auto, {', '.join(DETECTOR_PASSES)}")

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(d.spec.name for d in self.detectors)) + [self.config.face_model]

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _detect_pass(self, image: np.ndarray, p: DetectorPass) -> list[blazeface.Detection]:
        h, w = image.shape[:2]
        if p.tile and max(h, w) <= 2 * p.tile:
            return []
        tiles = blazeface.tile_grid(w, h, p.tile, p.tile // 5) if p.tile else [(0, 0, w, h)]
        batch, boxes = await self._run(_letterbox_tiles, image, tiles, p.spec.input_size, p.margin)
        out = await self.triton.infer(p.spec.name, {"image": batch}, ["regressors", "scores"])
        found = []
        for i, ((x0, y0, _, _), lb) in enumerate(zip(tiles, boxes)):
            found += [blazeface.shifted(d, x0, y0) if (x0 or y0) else d for d in blazeface.decode(
                out["regressors"][i], out["scores"][i], p.spec, lb, score_threshold=p.score_threshold)]
        return found

    async def detect(self, image: np.ndarray) -> list[blazeface.Detection]:
        """Every face at least ``min_face_px`` wide, highest score first."""
        passes = await asyncio.gather(*(self._detect_pass(image, p) for p in self.detectors))
        found = [d for detections in passes for d in detections]
        if len(passes) > 1 and found:
            merged = blazeface.weighted_nms(np.array([d.box for d in found]), np.array([d.score for d in found]),
                                            np.array([d.keypoints for d in found]), blazeface.SHORT_RANGE.iou_threshold)
            found = [blazeface.Detection(box, score, kps) for box, score, kps in merged]
        return [d for d in found if min(d.width, d.height) >= self.config.min_face_px]

    async def detector_versions(self) -> list[tuple[str, str, str]]:
        names = dict.fromkeys(p.spec.name for p in self.detectors)
        return [("detector", name, await self.triton.model_version(name)) for name in names]

    async def analyze(self, load: Callable[[], np.ndarray], tasks: frozenset[Task] = ALL_TASKS,
                      min_face_size: int = 0, top_k: int = 1) -> Analysis:
        t0 = time.perf_counter()
        image = await self._run(load)
        t1 = time.perf_counter()
        detections = await self.detect(image)
        detections = [d for d in detections if min(d.width, d.height) >= min_face_size][: self.config.max_faces]
        t2 = time.perf_counter()
        faces = [FaceResult(d.box, d.keypoints, float(d.score)) for d in detections]
        models = await self.detector_versions()
        timings = {"decode": t1 - t0, "detect": t2 - t1, "align": 0.0, "embed": 0.0, "match": 0.0}
        if faces and (Task.IDENTIFY in tasks or Task.EXPRESSION in tasks):
            chips = await self._run(_chips, image, detections)
            t3 = time.perf_counter()
            out = await self.triton.infer(self.config.face_model, {"chip": chips}, ["embedding", "expression"])
            t4 = time.perf_counter()
            models.append(("face_model", self.config.face_model, await self.triton.model_version(self.config.face_model)))
            for face, emb, expr in zip(faces, out["embedding"], out["expression"]):
                face.embedding = emb
                if Task.EXPRESSION in tasks:
                    face.expression = expr
            if Task.IDENTIFY in tasks and self.matcher is not None:
                for face in faces:
                    face.match = self.matcher.match(face.embedding, max(1, top_k))
            t5 = time.perf_counter()
            timings.update(align=t3 - t2, embed=t4 - t3, match=t5 - t4)
        timings["total"] = time.perf_counter() - t0
        return Analysis(image.shape[1], image.shape[0], faces, models, {k: v * 1000 for k, v in timings.items()})

    async def embed_faces(self, image: np.ndarray) -> tuple[list[FaceResult], str]:
        """Detect and embed every face of one image, largest first (for enrolment and verification)."""
        detections = await self.detect(image)
        detections.sort(key=lambda d: d.area, reverse=True)
        faces = [FaceResult(d.box, d.keypoints, float(d.score)) for d in detections[: self.config.max_faces]]
        if faces:
            chips = await self._run(_chips, image, detections[: len(faces)])
            out = await self.triton.infer(self.config.face_model, {"chip": chips}, ["embedding", "expression"])
            for face, emb in zip(faces, out["embedding"]):
                face.embedding = emb
        version = await self.triton.model_version(self.config.face_model)
        return faces, f"{self.config.face_model}:{version}"

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _letterbox_tiles(image: np.ndarray, tiles, size: int, margin: float):
    boxed = [blazeface.letterbox(image[y0:y1, x0:x1], size, margin) for x0, y0, x1, y1 in tiles]
    return np.stack([b for b, _ in boxed]), [lb for _, lb in boxed]


def _chips(image: np.ndarray, detections: list[blazeface.Detection]) -> np.ndarray:
    chips = np.empty((len(detections), CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
    for i, d in enumerate(detections):
        chips[i] = align_chip(image, d.keypoints)[0]
    return chips
