"""The gateway's per-frame work without the gateway: the built-in plugin objects (the configured
detector and face plugins, their own pre- and post-processing) driven by a minimal Context whose
``infer`` is either tritonclient gRPC straight to Triton ("direct": the same tensors the gateway
sends) or ONNX Runtime sessions in this process ("single-process ORT pipeline", no Triton at all).

One frame after the other, one thread: ``Context.run`` calls the function inline and the detector's
passes run one after the other (nothing runs concurrently, as in a plain single-process program).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from perf_common import ROOT, percentile

DETECTOR, FACE_PLUGINS = "blazeface", ("face_multitask",)  # the server's defaults (mobidem.config)


class _Context:
    def __init__(self, infer):
        self._infer = infer

    async def infer(self, model, inputs, outputs):
        return self._infer(model, inputs, list(outputs))

    async def run(self, fn, *args):
        return fn(*args)


def triton_infer(url: str):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    client = grpcclient.InferenceServerClient(url)

    def infer(model, inputs, outputs):
        tensors = []
        for name, x in inputs.items():
            t = grpcclient.InferInput(name, list(x.shape), np_to_triton_dtype(x.dtype))
            t.set_data_from_numpy(x)
            tensors.append(t)
        r = client.infer(model, tensors, outputs=[grpcclient.InferRequestedOutput(o) for o in outputs])
        return {o: r.as_numpy(o) for o in outputs}

    return infer, client.close


def ort_infer(models: list[str], threads: int = 1):
    import onnxruntime as ort

    sessions = {}
    for m in models:
        o = ort.SessionOptions()
        o.intra_op_num_threads = threads
        o.inter_op_num_threads = 1
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sessions[m] = ort.InferenceSession(str(ROOT / "model_repository" / m / "1" / "model.onnx"), o,
                                           providers=["CPUExecutionProvider"])

    def infer(model, inputs, outputs):
        return dict(zip(outputs, sessions[model].run(outputs, inputs)))

    return infer, lambda: None


def run(frames: list[np.ndarray], backend: str, triton_url: str = "", keep_boxes: bool = False) -> dict:
    """backend: "triton" or "ort" (1 intra-op thread). Per-frame latency, frames/s, faces."""
    from mobidem.pipeline import PipelineConfig, _chips
    from mobidem.plugins import PluginSet

    plugins = PluginSet.from_config(DETECTOR, list(FACE_PLUGINS))
    infer, close = triton_infer(triton_url) if backend == "triton" else ort_infer(plugins.model_names, 1)
    ctx = _Context(infer)
    cfg = PipelineConfig()

    async def one(image):
        found = await plugins.detector.detect(image, ctx)
        found = [d for d in found if min(d.width, d.height) >= cfg.min_face_px][: cfg.max_faces]
        if found:
            chips = _chips(image, found)
            for p in plugins.face:
                await p.process(image, found, chips, ctx)
        return found

    async def all_frames():
        await one(frames[0])  # warm-up
        per, boxes = [], []
        t0 = time.perf_counter()
        for f in frames:
            t = time.perf_counter()
            found = await one(f)
            per.append((time.perf_counter() - t) * 1000)
            boxes.append([d.box.tolist() for d in found])
        return per, boxes, time.perf_counter() - t0

    per, boxes, wall = asyncio.run(all_frames())
    close()
    faces = sum(len(b) for b in boxes)
    out = {"frames": len(frames), "faces": faces, "fps": len(frames) / wall, "faces_per_s": faces / wall,
           "p50": percentile(per, 50), "p99": percentile(per, 99), "mean": float(np.mean(per))}
    if keep_boxes:
        out["boxes"] = boxes
    return out


def compare_faces(ours: list[list], ref: list[list]) -> dict:
    """Faces found by both: a reference (dlib HOG) box can pair with one of ours when its centre lies inside
    our box and ours is at most 3x / at least 1/3 its width (the two detectors draw different boxes); the
    most pairs per frame, one to one (scipy's linear_sum_assignment, so that a box of ours that two
    reference boxes could pair with does not take the one that had no other partner)."""
    from scipy.optimize import linear_sum_assignment

    both = ref_only = ours_only = 0
    for a, b in zip(ours, ref):
        can = np.zeros((len(b), len(a)))
        for i, (x0, y0, x1, y1) in enumerate(b):
            cx, cy, w = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0
            for j, (u0, v0, u1, v1) in enumerate(a):
                can[i, j] = u0 <= cx <= u1 and v0 <= cy <= v1 and w / 3 <= u1 - u0 <= 3 * w
        rows, cols = linear_sum_assignment(can, maximize=True) if can.size else ([], [])
        pairs = int(sum(can[r, c] for r, c in zip(rows, cols)))
        both += pairs
        ref_only += len(b) - pairs
        ours_only += len(a) - pairs
    return {"both": both, "ref_only": ref_only, "ours_only": ours_only}