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
class PipelineConfig:
    detector: str = "auto"  # "blazeface_short", "blazeface_full", or "auto": short, then full if it finds none
    face_model: str = "face_multitask"
    score_threshold: float = 0.5
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
            self.detectors = [blazeface.SHORT_RANGE, blazeface.FULL_RANGE]
        elif config.detector in blazeface.SPECS:
            self.detectors = [blazeface.SPECS[config.detector]]
        else:
            raise ValueError(f"unknown detector {config.detector!r}; choose auto, {', '.join(blazeface.SPECS)}")

    @property
    def models(self) -> list[str]:
        return [d.name for d in self.detectors] + [self.config.face_model]

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def detect(self, image: np.ndarray) -> tuple[list[blazeface.Detection], str]:
        for spec in self.detectors:
            boxed, lb = await self._run(blazeface.letterbox, image, spec.input_size)
            out = await self.triton.infer(spec.name, {"image": boxed[None]}, ["regressors", "scores"])
            found = blazeface.decode(out["regressors"][0], out["scores"][0], spec, lb,
                                     score_threshold=self.config.score_threshold)
            if found:
                return found, spec.name
        return [], self.detectors[-1].name

    async def analyze(self, load: Callable[[], np.ndarray], tasks: frozenset[Task] = ALL_TASKS,
                      min_face_size: int = 0, top_k: int = 1) -> Analysis:
        t0 = time.perf_counter()
        image = await self._run(load)
        t1 = time.perf_counter()
        detections, detector = await self.detect(image)
        detections = [d for d in detections if min(d.width, d.height) >= min_face_size][: self.config.max_faces]
        t2 = time.perf_counter()
        faces = [FaceResult(d.box, d.keypoints, float(d.score)) for d in detections]
        models = [("detector", detector, await self.triton.model_version(detector))]
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
        detections, _ = await self.detect(image)
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


def _chips(image: np.ndarray, detections: list[blazeface.Detection]) -> np.ndarray:
    chips = np.empty((len(detections), CHIP_SIZE, CHIP_SIZE, 3), np.uint8)
    for i, d in enumerate(detections):
        chips[i] = align_chip(image, d.keypoints)[0]
    return chips
